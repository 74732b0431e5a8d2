"""The portal's JSON API (for the phone app), described by the OpenAPI 3.1 document at ``/api/openapi.json``.

Same functions as the pages (``service``). Authentication: ``POST /api/login`` returns a bearer token
(also set as the session cookie). Requests with ``Authorization: Bearer`` need no CSRF token; requests
authenticated by the cookie alone must send the session's ``X-CSRF-Token`` on every POST.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

import directory.search
from mailserver import alerts
from mailserver.auth import AuthOutcome
from mailserver.portal import client_certs, factors, service, uploads_openapi
from mailserver.portal.http import (
    ENQUEUE,
    RT,
    clear_session_cookie,
    csrf_ok,
    current_session,
    download_response,
    remote,
    row_id,
    set_session_cookie,
)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text='{"error": "application/json attendu"}', content_type="application/json"
        )
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "objet JSON attendu"}', content_type="application/json")
    return body


async def _session(request: web.Request, post: bool = False) -> service.SessionInfo:
    info = await current_session(request, allow_bearer=True)
    if info is None:
        raise web.HTTPUnauthorized(text='{"error": "non authentifié"}', content_type="application/json")
    bearer = request.headers.get("Authorization", "").lower().startswith("bearer ")
    if post and not bearer and not csrf_ok(info.csrf, request.headers.get("X-CSRF-Token")):
        raise web.HTTPForbidden(text='{"error": "jeton CSRF invalide"}', content_type="application/json")
    if await service.must_enrol(request.app[RT], info):
        raise web.HTTPForbidden(
            text='{"error": "enregistrez d\'abord une application d\'authentification dans le portail"}',
            content_type="application/json",
        )
    return info


def _session_json(rt: Any, info: service.SessionInfo) -> web.Response:
    resp = web.json_response(
        {
            "token": info.token,
            "csrf_token": info.csrf,
            "expires_at": info.expires_at.isoformat(),
            "address": info.address,
        }
    )
    set_session_cookie(resp, rt, info)
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    """INS + password: the session (200), or 202 with the second step to finish at ``/api/login/code``."""
    rt = request.app[RT]
    body = await _json_body(request)
    try:
        result = await service.login(
            rt, str(body.get("ins", "")), str(body.get("password", "")), remote(request)
        )
    except service.PortalError as exc:
        return _error(exc.status, exc.message)
    if isinstance(result, factors.Challenge):
        return web.json_response(
            {"second_factor": result.method, "challenge": result.token, "sent_to": result.hint}, status=202
        )
    return _session_json(rt, result)


async def login_code(request: web.Request) -> web.StreamResponse:
    """The second factor of a login: the challenge ``/api/login`` gave and the code."""
    rt = request.app[RT]
    body = await _json_body(request)
    try:
        info = await service.second_step(
            rt, str(body.get("challenge", "")), str(body.get("code", "")), remote(request)
        )
    except service.PortalError as exc:
        return _error(exc.status, exc.message)
    return _session_json(rt, info)


async def logout(request: web.Request) -> web.StreamResponse:
    info = await _session(request, post=True)
    await service.logout(request.app[RT], info.token)
    resp = web.json_response({"ok": True})
    clear_session_cookie(resp, request.app[RT])
    return resp


def _settings(pref: alerts.AlertPreference) -> dict[str, Any]:
    return {"alerts_enabled": pref.enabled, "alert_email": pref.email, "phone": pref.phone}


async def get_settings(request: web.Request) -> web.StreamResponse:
    info = await _session(request)
    pref = await alerts.preference(request.app[RT], info.address)
    if pref is None:
        return _error(404, "aucun dossier patient pour ce compte")
    return web.json_response(_settings(pref))


async def post_settings(request: web.Request) -> web.StreamResponse:
    """The alert switch of the settings page (``alerts.set_enabled``) and the patient's contact details
    (``service.change_contact``: ``alert_email``, ``phone``, with ``current_password``); each field
    is optional, those absent are kept."""
    rt = request.app[RT]
    info = await _session(request, post=True)
    body = await _json_body(request)
    enabled = body.get("alerts_enabled")
    if "alerts_enabled" in body and not isinstance(enabled, bool):
        return _error(400, "alerts_enabled doit valoir true ou false")
    contact: dict[str, str | None] = {}
    for field, name in (("alert_email", "email"), ("phone", "phone")):
        if field in body:
            if body[field] is not None and not isinstance(body[field], str):
                return _error(400, f"{field} doit être une chaîne ou null")
            contact[name] = body[field]
    if enabled is None and not contact:
        return _error(400, "alerts_enabled, alert_email ou phone attendu")
    password = body.get("current_password", "")
    if not isinstance(password, str):
        return _error(400, "current_password doit être une chaîne")
    found = True
    try:
        if contact:
            found = await service.change_contact(rt, info, password, contact, remote(request), "api")
    except service.PortalError as exc:
        return _error(exc.status, exc.message)
    if found and isinstance(enabled, bool):
        found = await alerts.set_enabled(rt, info.address, enabled, remote(request), "api")
    if not found:
        return _error(404, "aucun dossier patient pour ce compte")
    pref = await alerts.preference(rt, info.address)
    assert pref is not None
    return web.json_response(_settings(pref))


async def conversations(request: web.Request) -> web.StreamResponse:
    info = await _session(request)
    ov = await service.overview(request.app[RT], info.mailbox_id)
    return web.json_response(
        {
            "unread": ov.unread,
            "quota": ov.quota.as_dict(),
            "professionals": [
                {
                    "address": g.professional.address,
                    "name": g.professional.name,
                    "profession": g.professional.profession,
                    "unread": g.unread,
                    "conversations": [c.as_dict() for c in g.conversations],
                }
                for g in ov.groups
            ],
        }
    )


async def conversation(request: web.Request) -> web.StreamResponse:
    info = await _session(request)
    try:
        reader = (info.address, remote(request), "api")
        d = await service.read_conversation(
            request.app[RT], info.mailbox_id, request.match_info["id"], reader=reader
        )
    except service.PortalError as exc:
        return _error(exc.status, exc.message)
    return web.json_response(
        {
            **d.summary.as_dict(),
            "professional": {
                "address": d.professional.address,
                "name": d.professional.name,
                "profession": d.professional.profession,
            },
            "messages": [m.as_dict() for m in d.messages],
        }
    )


def _uploads(body: dict[str, Any]) -> list[service.Upload]:
    items = body.get("attachments") or []
    if not isinstance(items, list):
        raise service.PortalError(400, "attachments doit être une liste.")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("data"), str):
            raise service.PortalError(400, "Pièce jointe invalide.")
        try:
            data = base64.b64decode(item["data"], validate=True)
        except (binascii.Error, ValueError):
            raise service.PortalError(400, "Pièce jointe invalide (base64 attendu).") from None
        out.append(
            service.Upload(
                str(item.get("filename", "")),
                str(item.get("content_type") or "application/octet-stream"),
                data,
            )
        )
    return out


async def post_message(request: web.Request) -> web.StreamResponse:
    info = await _session(request, post=True)
    try:
        body = await _json_body(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "Message trop volumineux.")
    text = body.get("text", "")
    try:
        if not isinstance(text, str):
            raise service.PortalError(400, "text doit être une chaîne.")
        message_id = await service.reply(
            request.app[RT],
            info.mailbox_id,
            request.match_info["id"],
            text,
            _uploads(body),
            remote(request),
            request.app[ENQUEUE],
        )
    except service.PortalError as exc:
        return _error(exc.status, exc.message)
    return web.json_response({"id": message_id}, status=201)


async def first_contacts(request: web.Request) -> web.StreamResponse:
    """Whom the patient may write first (``service.first_contacts``: bounded, searchable with ``q``)."""
    await _session(request)
    contacts, more = await service.first_contacts(request.app[RT], request.query.get("q", ""))
    return web.json_response({"contacts": [c.as_dict() for c in contacts], "more": more})


async def post_conversation(request: web.Request) -> web.StreamResponse:
    """A first message (``service.write_first``, the SMTP rule): 201 once delivered and committed."""
    info = await _session(request, post=True)
    try:
        body = await _json_body(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "Message trop volumineux.")
    fields = {k: body.get(k, "") for k in ("to", "subject", "text")}
    try:
        if not all(isinstance(v, str) for v in fields.values()):
            raise service.PortalError(400, "to, subject et text doivent être des chaînes.")
        public_id = await service.write_first(
            request.app[RT],
            info.mailbox_id,
            fields["to"],
            fields["subject"],
            fields["text"],
            _uploads(body),
            remote(request),
            request.app[ENQUEUE],
        )
    except service.PortalError as exc:
        return _error(exc.status, exc.message)
    return web.json_response({"id": public_id}, status=201)


async def attachment(request: web.Request) -> web.StreamResponse:
    info = await _session(request)
    try:
        mid, n = row_id(request.match_info["mid"]), row_id(request.match_info["n"])
        reader = (info.address, remote(request), "api download")
        return download_response(await service.attachment(request.app[RT], info.mailbox_id, mid, n, reader))
    except ValueError:
        return _error(404, "Cette pièce jointe n'existe pas.")
    except service.PortalError as exc:
        return _error(exc.status, exc.message)


def _is_jwt(token: str) -> bool:
    """A compact JWS (three dot-separated parts), as the identity provider issues; the portal's own
    session tokens are URL-safe base64 without dots."""
    return token.count(".") == 2


class Unauthenticated(Exception):
    """Credentials were given and refused (``status`` 401, or 503 when the identity provider is away)."""

    def __init__(self, status: int, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.challenge = challenge


async def credentials(request: web.Request, service: str) -> AuthOutcome | None:
    """The mailbox the request's ``Authorization`` names: a Pro Santé Connect bearer token (RFC 6750,
    when ``[oauth]`` is configured) or HTTP Basic with the mailbox's (application) password; without
    either, the connection's client certificate (``client_certs``); None without any. Raises
    Unauthenticated when they are refused (audited by ``rt.auth``)."""
    auth = request.headers.get("Authorization", "")
    rt = request.app[RT]
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if token and _is_jwt(token) and rt.auth.tokens_enabled:
        outcome = await rt.auth.authenticate_token(token, None, remote(request), service, "Bearer")
        if outcome.reason == "unavailable":
            raise Unauthenticated(503, "fournisseur d'identité injoignable")
        if not outcome.ok or outcome.address is None:
            raise Unauthenticated(401, "jeton refusé", 'Bearer realm="Caducee", error="invalid_token"')
        return outcome
    if auth.lower().startswith("basic "):
        try:
            user, _, password = (
                base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        outcome = await rt.auth.authenticate(user, password, remote(request), service)
        if not outcome.ok or outcome.address is None:
            raise Unauthenticated(401, "identifiants refusés", 'Basic realm="Caducee", charset="UTF-8"')
        return outcome
    cert = await client_certs.certificate_login(request, service)  # [api] listen_tls only
    if cert is not None and not cert.ok:
        raise Unauthenticated(403, "certificat client refusé")
    return cert


async def _directory_user(request: web.Request) -> str:
    """Who asks: a professional by bearer token or HTTP Basic (``credentials``), or a portal session."""
    try:
        outcome = await credentials(request, "directory-api")
    except Unauthenticated as exc:
        headers = {"WWW-Authenticate": exc.challenge} if exc.challenge else None
        raise _http_error(exc.status, exc.message, headers) from None
    if outcome is not None:
        assert outcome.address is not None
        return outcome.address
    return (await _session(request)).address


def _http_error(status: int, message: str, headers: dict[str, str] | None) -> web.HTTPException:
    cls = {503: web.HTTPServiceUnavailable, 403: web.HTTPForbidden}.get(status, web.HTTPUnauthorized)
    return cls(
        text=json.dumps({"error": message}, ensure_ascii=False),
        content_type="application/json",
        headers=headers,
    )


async def directory_search(request: web.Request) -> web.StreamResponse:
    """Search the national directory (liste-rouge entries never returned), for address books."""
    rt = request.app[RT]
    await _directory_user(request)
    q = request.query.get("q", "").strip()
    if not q:
        return _error(400, "paramètre q attendu")
    try:
        limit = min(max(int(request.query.get("limit", "20")), 1), 200)
    except ValueError:
        return _error(400, "limit doit être un entier")
    async with rt.db.read() as session:
        entries = await directory.search.search(
            session,
            q,
            profession=request.query.get("profession") or None,
            city=request.query.get("city") or None,
            type=request.query.get("type") or None,
            limit=limit,
        )
    return web.json_response([e.as_dict() for e in entries])


async def openapi_document(request: web.Request) -> web.StreamResponse:
    return web.json_response(OPENAPI)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _json(_ref("Error"), "Non authentifié"),
    "404": _json(_ref("Error"), "Introuvable"),
}
_SECURED = [{"bearer": []}, {"cookie": []}]

_API_SECURED = [{"basic": []}, {"proSanteConnect": []}]


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


_SEND_PROBLEMS = {
    "400": "Requête invalide",
    "401": "Non authentifié",
    "403": "Expéditeur non autorisé",
    "413": "Message trop volumineux",
    "415": "Type de contenu non pris en charge",
    "422": "Destinataire refusé",
    "429": "Trop de messages pour cette boîte",
    "503": "Refus temporaire",
    "507": "Boîte du destinataire pleine",
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Caducée — portail patient",
        "version": "1.0.0",
        "description": "Conversations sécurisées entre un patient et ses professionnels de santé (MSSanté).",
    },
    "servers": [{"url": "/"}],
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic"},
            "proSanteConnect": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "Jeton d'accès Pro Santé Connect (professionnels), si [oauth] est configuré",
            },
            "cookie": {"type": "apiKey", "in": "cookie", "name": "caducee_session"},
        },
        "schemas": {
            "Settings": {
                "type": "object",
                "required": ["alerts_enabled", "alert_email", "phone"],
                "properties": {
                    "alerts_enabled": {"type": "boolean"},
                    "alert_email": {
                        "type": ["string", "null"],
                        "description": "Adresse personnelle des alertes et des codes de connexion envoyés "
                        "par courriel (aucune : pas d'alerte)",
                    },
                    "phone": {
                        "type": ["string", "null"],
                        "description": "Téléphone, au format international (+33612345678)",
                    },
                },
            },
            "SettingsChange": {
                "type": "object",
                "minProperties": 1,
                "description": "Chaque champ est facultatif ; ceux qui manquent restent inchangés. Changer "
                "alert_email ou phone demande current_password (vérifié comme à la connexion : les erreurs "
                "comptent pour le verrouillage du compte) ; la valeur actuelle renvoyée telle quelle ne "
                "change rien. L'ancienne adresse est prévenue d'un changement.",
                "properties": {
                    "alerts_enabled": {"type": "boolean"},
                    "alert_email": {
                        "type": ["string", "null"],
                        "description": 'Nouvelle adresse personnelle (partie locale ASCII) ; null ou "" : '
                        "la retirer",
                    },
                    "phone": {
                        "type": ["string", "null"],
                        "description": '0612345678 ou +33612345678 ; null ou "" : le retirer',
                    },
                    "current_password": {
                        "type": "string",
                        "description": "Mot de passe actuel, pour changer alert_email ou phone",
                    },
                },
            },
            "Problem": {
                "type": "object",
                "description": "RFC 9457 (application/problem+json)",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "recipient": {"type": "string", "description": "Le destinataire refusé"},
                    "smtp": {"type": "string", "description": "La réponse SMTP équivalente"},
                },
            },
            "OutgoingMessage": {
                "type": "object",
                "required": ["from"],
                "properties": {
                    "from": {"type": "string", "format": "email"},
                    "to": {"type": "array", "items": {"type": "string", "format": "email"}},
                    "cc": {"type": "array", "items": {"type": "string", "format": "email"}},
                    "subject": {"type": "string"},
                    "text": {"type": "string"},
                    "html": {"type": "string"},
                    "attachments": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "description": "data (base64), ou upload : l'identifiant d'un envoi "
                            "/api/v1/uploads terminé, transmis par lien",
                            "properties": {
                                "filename": {"type": "string"},
                                "content_type": {"type": "string"},
                                "data": {"type": "string", "contentEncoding": "base64"},
                                "upload": {"type": "string"},
                            },
                        },
                    },
                    "software": {
                        "type": "string",
                        "maxLength": 200,
                        "description": "Référence du logiciel émetteur (en-tête X-MSS-NIL)",
                    },
                    "read_receipt": {
                        "type": "boolean",
                        "description": "Demande un accusé de lecture (Disposition-Notification-To, RFC 8098)",
                    },
                    "documents": {
                        "type": "array",
                        "maxItems": 20,
                        "description": "Documents CDA R2 envoyés dans une archive IHE_XDM.zip "
                        "(en-têtes X-MSS-CODECDA et X-MSS-INS)",
                        "items": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string", "description": "Le document CDA (XML)"},
                                "data": {
                                    "type": "string",
                                    "contentEncoding": "base64",
                                    "description": "Le document CDA en base64, à défaut de text",
                                },
                                "title": {"type": "string", "description": "Titre, à défaut du sien"},
                            },
                        },
                    },
                },
            },
            "XDMArchive": {
                "type": "object",
                "description": "Une archive IHE_XDM.zip reçue, vérifiée (valid false: refusée, voir error)",
                "required": ["filename", "valid", "error", "documents"],
                "properties": {
                    "filename": {"type": "string"},
                    "valid": {"type": "boolean"},
                    "error": {"type": ["string", "null"]},
                    "documents": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "uri": {"type": "string"},
                                "title": {"type": "string"},
                                "mime_type": {"type": "string"},
                                "type_code": {"type": "string"},
                                "type_code_system": {"type": "string"},
                                "patient_id": {"type": "string"},
                                "unique_id": {"type": "string"},
                                "hash": {"type": "string"},
                                "size": {"type": ["integer", "null"]},
                                "hash_ok": {"type": ["boolean", "null"]},
                            },
                        },
                    },
                },
            },
            "OutgoingMultipart": {
                "type": "object",
                "required": ["from"],
                "properties": {
                    "from": {"type": "string"},
                    "to": {"type": "array", "items": {"type": "string"}},
                    "cc": {"type": "array", "items": {"type": "string"}},
                    "subject": {"type": "string"},
                    "text": {"type": "string"},
                    "html": {"type": "string"},
                    "software": {"type": "string"},
                    "read_receipt": {"type": "boolean"},
                    "attachments": {
                        "type": "array",
                        "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                    },
                    "upload": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Identifiants d'envois /api/v1/uploads terminés, transmis par lien",
                    },
                },
            },
            "MessageState": {
                "type": "object",
                "required": ["id", "from", "created_at", "recipients"],
                "properties": {
                    "id": {"type": "string"},
                    "from": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "recipients": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["address", "state", "detail"],
                            "properties": {
                                "address": {"type": "string"},
                                "state": {
                                    "type": "string",
                                    "enum": ["delivered", "queued", "sent", "relayed", "bounced"],
                                },
                                "detail": {
                                    "type": "string",
                                    "description": "Dernière réponse (texte du DSN)",
                                },
                                "attempts": {"type": "integer"},
                                "next_attempt": {"type": "string", "format": "date-time"},
                                "delayed": {
                                    "type": "boolean",
                                    "description": "En file après [delivery] delay_warning (DSN DELAY)",
                                },
                                "delay_notified_at": {"type": "string", "format": "date-time"},
                                "receipts": {
                                    "type": "array",
                                    "description": "Accusés de lecture reçus (MDN, RFC 8098)",
                                    "items": {
                                        "type": "object",
                                        "required": ["disposition", "mode", "received_at"],
                                        "properties": {
                                            "disposition": {"type": "string"},
                                            "mode": {"type": "string"},
                                            "received_at": {"type": "string", "format": "date-time"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "DirectoryEntry": {
                "type": "object",
                "required": ["address", "type", "display_name"],
                "properties": {
                    **{
                        k: {"type": "string"}
                        for k in (
                            "address",
                            "type",
                            "display_name",
                            "civility",
                            "last_name",
                            "first_name",
                            "rpps",
                            "profession",
                            "skill",
                            "service",
                            "organisation",
                            "street",
                            "postal_code",
                            "city",
                        )
                    },
                    "hosted": {"type": "boolean"},
                },
            },
            "Login": {
                "type": "object",
                "required": ["ins", "password"],
                "properties": {
                    "ins": {"type": "string", "minLength": 15, "maxLength": 15},
                    "password": {"type": "string"},
                },
            },
            "SecondFactor": {
                "type": "object",
                "required": ["second_factor", "challenge"],
                "properties": {
                    "second_factor": {"type": "string", "enum": ["email", "totp"]},
                    "challenge": {"type": "string"},
                    "sent_to": {"type": "string", "description": "Adresse masquée où le code est parti"},
                },
            },
            "SecondFactorCode": {
                "type": "object",
                "required": ["challenge", "code"],
                "properties": {"challenge": {"type": "string"}, "code": {"type": "string"}},
            },
            "Session": {
                "type": "object",
                "required": ["token", "csrf_token", "expires_at", "address"],
                "properties": {
                    "token": {"type": "string"},
                    "csrf_token": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time"},
                    "address": {"type": "string"},
                },
            },
            "Quota": {
                "type": "object",
                "properties": {
                    "used_bytes": {"type": "integer"},
                    "limit_bytes": {"type": ["integer", "null"]},
                    "percent": {"type": ["integer", "null"]},
                },
            },
            "ConversationSummary": {
                "type": "object",
                "required": ["id", "subject", "state", "opened_at", "last_at", "messages", "unread"],
                "properties": {
                    "id": {"type": "string"},
                    "subject": {"type": "string"},
                    "state": {"type": "string", "enum": ["open", "closed"]},
                    "opened_at": {"type": "string", "format": "date-time"},
                    "closed_at": {"type": ["string", "null"], "format": "date-time"},
                    "last_at": {"type": "string", "format": "date-time"},
                    "messages": {"type": "integer"},
                    "unread": {"type": "integer"},
                },
            },
            "Professional": {
                "type": "object",
                "required": ["address", "name", "profession"],
                "properties": {
                    "address": {"type": "string"},
                    "name": {"type": "string"},
                    "profession": {"type": "string"},
                },
            },
            "ProfessionalGroup": {
                "allOf": [
                    _ref("Professional"),
                    {
                        "type": "object",
                        "properties": {
                            "unread": {"type": "integer"},
                            "conversations": {"type": "array", "items": _ref("ConversationSummary")},
                        },
                    },
                ]
            },
            "Overview": {
                "type": "object",
                "properties": {
                    "unread": {"type": "integer"},
                    "quota": _ref("Quota"),
                    "professionals": {"type": "array", "items": _ref("ProfessionalGroup")},
                },
            },
            "Attachment": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer"},
                    "filename": {"type": "string"},
                    "content_type": {"type": "string"},
                    "size": {"type": "integer"},
                },
            },
            "Message": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "direction": {"type": "string", "enum": ["in", "out"]},
                    "kind": {"type": "string", "enum": ["message", "notice"]},
                    "author": {"type": "string"},
                    "at": {"type": "string", "format": "date-time"},
                    "subject": {"type": "string"},
                    "text": {"type": "string", "description": "Texte brut, à échapper avant affichage."},
                    "unread": {"type": "boolean"},
                    "attachments": {"type": "array", "items": _ref("Attachment")},
                },
            },
            "Conversation": {
                "allOf": [
                    _ref("ConversationSummary"),
                    {
                        "type": "object",
                        "properties": {
                            "professional": _ref("Professional"),
                            "messages": {"type": "array", "items": _ref("Message")},
                        },
                    },
                ]
            },
            "FirstContact": {
                "type": "object",
                "properties": {
                    "address": {"type": "string"},
                    "name": {"type": "string"},
                    "detail": {"type": "string", "description": "Service, ville"},
                },
            },
            "FirstMessage": {
                "type": "object",
                "required": ["to", "subject"],
                "properties": {
                    "to": {
                        "type": "string",
                        "description": "Adresse d'un destinataire de /api/first-contacts",
                    },
                    "subject": {"type": "string", "maxLength": 200},
                    "text": {"type": "string"},
                    "attachments": {"$ref": "#/components/schemas/NewMessage/properties/attachments"},
                },
            },
            "NewMessage": {
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "attachments": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["filename", "data"],
                            "properties": {
                                "filename": {"type": "string"},
                                "content_type": {"type": "string"},
                                "data": {"type": "string", "contentEncoding": "base64"},
                            },
                        },
                    },
                },
            },
        },
    },
    "paths": {
        "/api/login": {
            "post": {
                "summary": "Connexion par INS et mot de passe",
                "operationId": "login",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Login")}}},
                "responses": {
                    "200": _json(_ref("Session"), "Session ouverte"),
                    "202": _json(_ref("SecondFactor"), "Second facteur attendu : POST /api/login/code"),
                    "401": _json(_ref("Error"), "Identifiants incorrects"),
                    "403": _json(_ref("Error"), "Aucun second facteur possible : contacter l'établissement"),
                    "429": _json(_ref("Error"), "Compte temporairement verrouillé"),
                },
            }
        },
        "/api/login/code": {
            "post": {
                "summary": "Second facteur : code reçu par courriel ou de l'application d'authentification",
                "operationId": "loginCode",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SecondFactorCode")}},
                },
                "responses": {
                    "200": _json(_ref("Session"), "Session ouverte"),
                    "400": _json(_ref("Error"), "Étape expirée ou inconnue"),
                    "401": _json(_ref("Error"), "Code incorrect"),
                    "429": _json(_ref("Error"), "Trop de codes faux : compte verrouillé"),
                },
            }
        },
        "/api/settings": {
            "get": {
                "summary": "Paramètres du patient : alertes de nouveau message",
                "operationId": "getSettings",
                "security": _SECURED,
                "responses": {"200": _json(_ref("Settings"), "Paramètres"), **_ERRORS},
            },
            "post": {
                "summary": "Alertes de nouveau message ; adresse personnelle et téléphone du patient",
                "operationId": "setSettings",
                "security": _SECURED,
                "parameters": [
                    {"name": "X-CSRF-Token", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SettingsChange")}},
                },
                "responses": {
                    "200": _json(_ref("Settings"), "Paramètres enregistrés"),
                    "400": _json(_ref("Error"), "Valeur invalide"),
                    **_ERRORS,
                    "403": _json(_ref("Error"), "Refusé (CSRF, ou mot de passe actuel incorrect)"),
                    "429": _json(_ref("Error"), "Compte temporairement verrouillé"),
                },
            },
        },
        "/api/logout": {
            "post": {
                "summary": "Déconnexion",
                "operationId": "logout",
                "security": _SECURED,
                "responses": {"200": {"description": "Session fermée"}, "401": _ERRORS["401"]},
            }
        },
        "/api/directory": {
            "get": {
                "summary": "Rechercher dans l'annuaire national (carnet d'adresses)",
                "operationId": "searchDirectory",
                "security": [{"proSanteConnect": []}, {"basic": []}, *_SECURED],
                "parameters": [
                    {"name": n, "in": "query", "required": n == "q", "schema": {"type": "string"}}
                    for n in ("q", "profession", "city", "type")
                ]
                + [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    }
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("DirectoryEntry")}, "Entrées trouvées"),
                    "400": _json(_ref("Error"), "Requête invalide"),
                    "401": _ERRORS["401"],
                },
            }
        },
        "/api/v1/messages": {
            "post": {
                "summary": "Envoyer un message (logiciel métier, boîte applicative)",
                "operationId": "sendMessage",
                "security": _API_SECURED,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("OutgoingMessage")},
                        "multipart/form-data": {"schema": _ref("OutgoingMultipart")},
                    },
                },
                "responses": {
                    "202": _json(_ref("MessageState"), "Message accepté, durable"),
                    **{code: _problem(text) for code, text in _SEND_PROBLEMS.items()},
                },
            }
        },
        "/api/v1/messages/{id}": {
            "get": {
                "summary": "État d'un message envoyé, par destinataire",
                "operationId": "getMessageState",
                "security": _API_SECURED,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": _json(_ref("MessageState"), "État"),
                    "401": _problem("Non authentifié"),
                    "404": _problem("Introuvable"),
                },
            }
        },
        "/api/v1/mailboxes/{address}/messages": {
            "get": {
                "summary": "Messages arrivés dans la boîte (INBOX) après le curseur",
                "operationId": "listArrivals",
                "security": _API_SECURED,
                "parameters": [
                    {"name": "address", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["messages", "cursor"],
                            "properties": {
                                "cursor": {"type": "string"},
                                "messages": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "uid": {"type": "integer"},
                                            "received_at": {"type": "string", "format": "date-time"},
                                            "size": {"type": "integer"},
                                            "from": {"type": "string"},
                                            "subject": {"type": "string"},
                                            "message_id": {"type": "string"},
                                            "attachments": {"type": "array", "items": _ref("Attachment")},
                                            "xdm": {"type": "array", "items": _ref("XDMArchive")},
                                        },
                                    },
                                },
                            },
                        },
                        "Arrivées, 100 au plus, la plus ancienne d'abord",
                    ),
                    "400": _problem("Curseur invalide"),
                    "401": _problem("Non authentifié"),
                    "403": _problem("Boîte d'un autre"),
                },
            }
        },
        "/api/v1/mailboxes/{address}/messages/{uid}/raw": {
            "get": {
                "summary": "Le message brut (RFC 5322)",
                "operationId": "getRawArrival",
                "security": _API_SECURED,
                "parameters": [
                    {"name": "address", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "uid", "in": "path", "required": True, "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": {
                        "description": "Le message",
                        "content": {"message/rfc822": {"schema": {"type": "string"}}},
                    },
                    "206": {"description": "La plage d'octets demandée (Range)"},
                    "401": _problem("Non authentifié"),
                    "403": _problem("Boîte d'un autre"),
                    "404": _problem("Introuvable"),
                    "416": _problem("Plage non satisfaisable (Content-Range: bytes */taille)"),
                },
            }
        },
        "/api/v1/mailboxes/{address}/messages/{uid}/attachments/{n}": {
            "get": {
                "summary": "Une pièce jointe d'un message arrivé",
                "operationId": "getArrivalAttachment",
                "security": _API_SECURED,
                "parameters": [
                    {"name": "address", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "uid", "in": "path", "required": True, "schema": {"type": "integer"}},
                    {"name": "n", "in": "path", "required": True, "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": {"description": "Le contenu", "content": {"*/*": {"schema": {"type": "string"}}}},
                    "206": {"description": "La plage d'octets demandée (Range)"},
                    "401": _problem("Non authentifié"),
                    "403": _problem("Boîte d'un autre"),
                    "404": _problem("Introuvable"),
                    "416": _problem("Plage non satisfaisable (Content-Range: bytes */taille)"),
                },
            }
        },
        "/api/conversations": {
            "get": {
                "summary": "Conversations regroupées par professionnel",
                "operationId": "listConversations",
                "security": _SECURED,
                "responses": {"200": _json(_ref("Overview"), "Conversations"), "401": _ERRORS["401"]},
            },
            "post": {
                "summary": "Écrire en premier à une pharmacie : ouvre une conversation",
                "operationId": "writeFirst",
                "security": _SECURED,
                "parameters": [
                    {"name": "X-CSRF-Token", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("FirstMessage")}},
                },
                "responses": {
                    "201": _json(
                        {"type": "object", "properties": {"id": {"type": "string"}}},
                        "Message envoyé (remis et enregistré) ; id de la conversation",
                    ),
                    "400": _json(_ref("Error"), "Message invalide"),
                    "401": _ERRORS["401"],
                    "403": _json(
                        _ref("Error"), "Refusé (CSRF, ou ce destinataire n'accepte pas de premier message)"
                    ),
                    "413": _json(_ref("Error"), "Message trop volumineux"),
                    "507": _json(_ref("Error"), "Espace de stockage plein"),
                },
            },
        },
        "/api/first-contacts": {
            "get": {
                "summary": "Les destinataires à qui le patient peut écrire en premier (pharmacies)",
                "operationId": "listFirstContacts",
                "security": _SECURED,
                "parameters": [
                    {"name": "q", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "contacts": {"type": "array", "items": _ref("FirstContact")},
                                "more": {
                                    "type": "boolean",
                                    "description": "Plus de [portal] first_contacts_max : préciser q",
                                },
                            },
                        },
                        "Destinataires",
                    ),
                    "401": _ERRORS["401"],
                },
            }
        },
        "/api/conversations/{id}": {
            "get": {
                "summary": "Une conversation et ses messages (les marque comme lus)",
                "operationId": "getConversation",
                "security": _SECURED,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("Conversation"), "Conversation"), **_ERRORS},
            }
        },
        "/api/conversations/{id}/messages": {
            "post": {
                "summary": "Répondre dans une conversation ouverte",
                "operationId": "reply",
                "security": _SECURED,
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "X-CSRF-Token", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewMessage")}},
                },
                "responses": {
                    "201": _json(
                        {"type": "object", "properties": {"id": {"type": "integer"}}}, "Message envoyé"
                    ),
                    "400": _json(_ref("Error"), "Message invalide"),
                    **_ERRORS,
                    "403": _json(_ref("Error"), "Refusé (CSRF ou règles de conversation)"),
                    "409": _json(_ref("Error"), "Conversation close"),
                    "413": _json(_ref("Error"), "Message trop volumineux"),
                    "507": _json(_ref("Error"), "Espace de stockage plein"),
                },
            }
        },
        "/api/messages/{id}/attachments/{n}": {
            "get": {
                "summary": "Télécharger une pièce jointe",
                "operationId": "getAttachment",
                "security": _SECURED,
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}},
                    {
                        "name": "n",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Le contenu, en pièce jointe",
                        "content": {
                            "*/*": {
                                "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                            }
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "Ce document",
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "Description OpenAPI 3.1")},
            }
        },
    },
}


OPENAPI["paths"].update(uploads_openapi.PATHS)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/login/code", login_code)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/settings", get_settings)
    app.router.add_post("/api/settings", post_settings)
    app.router.add_get("/api/conversations", conversations)
    app.router.add_get("/api/conversations/{id}", conversation)
    app.router.add_post("/api/conversations/{id}/messages", post_message)
    app.router.add_post("/api/conversations", post_conversation)
    app.router.add_get("/api/first-contacts", first_contacts)
    app.router.add_get("/api/messages/{mid}/attachments/{n}", attachment)
    app.router.add_get("/api/openapi.json", openapi_document)
    app.router.add_get("/api/directory", directory_search)
