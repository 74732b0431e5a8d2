"""The OpenAPI 3.1 description of the resumable uploads (``uploads.py``), merged into the portal's
document (``api.OPENAPI``)."""

from __future__ import annotations

from typing import Any

_SECURED = [{"basic": []}, {"proSanteConnect": []}]
_TUS = {
    "name": "Tus-Resumable",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "enum": ["1.0.0"]},
}
_TUS_OPTIONAL = {**_TUS, "required": False}  # OPTIONS and the JSON state are not tus requests
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _problems(*codes: str) -> dict[str, Any]:
    text = {
        "400": "Requête invalide",
        "401": "Non authentifié",
        "404": "Introuvable",
        "409": "Décalage incorrect, envoi en cours ou déjà envoyé",
        "412": "Version tus non prise en charge",
        "413": "Fichier trop volumineux, ou quota de l'expéditeur dépassé",
        "415": "Type de contenu non pris en charge",
        "429": "Trop d'envois non envoyés pour cette boîte ([large_files] max_uploads)",
        "503": "Refus temporaire",
    }
    return {c: _problem(text[c]) for c in codes}


UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "filename", "content_type", "size", "offset", "state", "expires_at"],
    "properties": {
        "id": {"type": "string"},
        "filename": {"type": "string"},
        "content_type": {"type": "string"},
        "size": {"type": "integer"},
        "offset": {"type": "integer", "description": "Octets reçus (Upload-Offset)"},
        "state": {"type": "string", "enum": ["uploading", "ready", "sent"]},
        "sha256": {"type": ["string", "null"]},
        "expires_at": {"type": "string", "format": "date-time"},
    },
}

_OFFSETS = {
    "Upload-Offset": {"schema": {"type": "integer"}},
    "Upload-Length": {"schema": {"type": "integer"}},
    "Tus-Resumable": {"schema": {"type": "string"}},
}

PATHS: dict[str, Any] = {
    "/api/v1/uploads": {
        "options": {
            "summary": "Capacités du protocole tus (version, extensions, taille maximale)",
            "operationId": "uploadOptions",
            "parameters": [_TUS_OPTIONAL],
            "responses": {"204": {"description": "Tus-Version, Tus-Extension, Tus-Max-Size"}},
        },
        "post": {
            "summary": "Créer un envoi de fichier volumineux reprenable (tus 1.0.0, extension creation)",
            "operationId": "createUpload",
            "security": _SECURED,
            "parameters": [
                {
                    "name": "Upload-Length",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "Taille totale du fichier, au plus [large_files] max_size",
                },
                {
                    "name": "Upload-Metadata",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Paires « clé base64(valeur) » séparées par des virgules :"
                    " filename, content_type",
                },
                _TUS,
            ],
            "responses": {
                "201": {
                    "description": "Envoi créé ; Location donne son adresse",
                    "headers": {"Location": {"schema": {"type": "string"}}, **_OFFSETS},
                    "content": {"application/json": {"schema": UPLOAD_SCHEMA}},
                },
                **_problems("400", "401", "412", "413", "429", "503"),
            },
        },
    },
    "/api/v1/uploads/{id}": {
        "head": {
            "summary": "Octets déjà reçus (Upload-Offset), pour reprendre l'envoi",
            "operationId": "uploadOffset",
            "security": _SECURED,
            "parameters": [_ID, _TUS],
            "responses": {
                "200": {"description": "Upload-Offset et Upload-Length", "headers": _OFFSETS},
                **_problems("401", "404", "412", "503"),
            },
        },
        "get": {
            "summary": "État d'un envoi",
            "operationId": "getUpload",
            "security": _SECURED,
            "parameters": [_ID, _TUS_OPTIONAL],
            "responses": {
                "200": {"description": "État", "content": {"application/json": {"schema": UPLOAD_SCHEMA}}},
                **_problems("401", "404", "503"),
            },
        },
        "patch": {
            "summary": "Ajouter des octets à l'offset courant (écrits et synchronisés avant la réponse)",
            "operationId": "appendUpload",
            "security": _SECURED,
            "parameters": [
                _ID,
                {"name": "Upload-Offset", "in": "header", "required": True, "schema": {"type": "integer"}},
                _TUS,
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
            "responses": {
                "204": {
                    "description": "Octets reçus ; Upload-Offset est le nouvel offset",
                    "headers": _OFFSETS,
                },
                **_problems("400", "401", "404", "409", "412", "413", "415", "503"),
            },
        },
        "delete": {
            "summary": "Abandonner un envoi pas encore lié à un message (tus, extension termination)",
            "operationId": "deleteUpload",
            "security": _SECURED,
            "parameters": [_ID, _TUS],
            "responses": {
                "204": {"description": "Supprimé, quota libéré"},
                **_problems("401", "404", "409", "412", "503"),
            },
        },
    },
}
