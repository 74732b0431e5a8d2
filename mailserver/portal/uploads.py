"""Large files over HTTP: resumable uploads under ``/api/v1/uploads`` and the download page.

Uploads follow the core of the tus protocol 1.0.0 with its ``creation`` and ``termination``
extensions (https://tus.io/protocols/resumable-upload): ``POST`` with ``Upload-Length`` (and
``Upload-Metadata``: ``filename``, ``content_type``) creates one and answers ``201`` with its
``Location``; ``HEAD`` tells the ``Upload-Offset`` the server holds; ``PATCH``
(``application/offset+octet-stream``) at that offset appends; ``DELETE`` drops an unsent upload. They
are authenticated like the rest of ``/api/v1`` (``messages_api._caller``), audited, and answer errors
as problem+json. The file is then named by its id in ``POST /api/v1/messages`` (``{"upload": id}``).

``GET /fichiers/{id}`` is the page the link in a message points to, ``/fichiers/{id}/telecharger``
the file itself: both need a recipient's identity, from the patient portal's session (cookie, or its
bearer token) or a mailbox's credentials (HTTP Basic, Pro Santé Connect bearer token). Anyone else
gets the same 404 as for a file that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from mailserver import large_files, quota
from mailserver.large_file_models import LargeFile
from mailserver.portal import service
from mailserver.portal.api import Unauthenticated, credentials
from mailserver.portal.http import (
    DOWNLOAD_CSP,
    RT,
    Unsatisfiable,
    WholeFile,
    byte_range,
    current_session,
    remote,
)
from mailserver.portal.messages_api import Problem, _caller, audited

TUS = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"


def _tus(resp: web.StreamResponse) -> web.StreamResponse:
    resp.headers["Tus-Resumable"] = TUS
    return resp


def _check_version(request: web.Request) -> None:
    """Every tus request but OPTIONS names the version it speaks (tus 1.0.0 §Tus-Resumable): without
    it, or with another one, 412 with the versions served."""
    given = request.headers.get("Tus-Resumable")
    if given != TUS:
        problem = Problem(412, "Version non prise en charge", f"en-tête Tus-Resumable: {TUS} attendu")
        problem.headers.update({"Tus-Version": TUS})
        raise problem


def _length(value: str | None, name: str) -> int:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 19:
        raise Problem(400, "Requête invalide", f"{name} : un nombre d'octets attendu")
    return int(value)


def _metadata(value: str) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64(value)`` pairs (tus 1.0.0 §Upload-Metadata)."""
    out: dict[str, str] = {}
    for item in value.split(",")[:20]:
        key, _, encoded = item.strip().partition(" ")
        if not key:
            continue
        try:
            out[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise Problem(
                400, "Requête invalide", f"Upload-Metadata : {key[:40]} n'est pas en base64"
            ) from None
    return out


def _state(row: LargeFile) -> dict[str, object]:
    return {
        "id": row.id,
        "filename": row.filename,
        "content_type": row.content_type,
        "size": row.size,
        "offset": row.received,
        "state": row.state,
        "sha256": row.sha256 or None,
        "expires_at": row.expires_at.isoformat(),
    }


async def options(request: web.Request) -> web.StreamResponse:
    """Discovery (tus): version, extensions and the largest upload accepted."""
    resp = web.Response(status=204)
    resp.headers.update(
        {
            "Tus-Version": TUS,
            "Tus-Extension": "creation,termination",
            "Tus-Max-Size": str(request.app[RT].settings.large_files.max_size),
        }
    )
    return _tus(resp)


async def create(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    caller = await _caller(request)
    _check_version(request)
    size = _length(request.headers.get("Upload-Length"), "Upload-Length")
    meta = _metadata(request.headers.get("Upload-Metadata", ""))
    ctype = meta.get("content_type") or meta.get("filetype") or "application/octet-stream"
    try:
        row = await large_files.create(rt, caller.mailbox_id, size, meta.get("filename", ""), ctype)
    except large_files.TooLarge as exc:
        raise Problem(413, "Fichier trop volumineux", str(exc)) from None
    except large_files.TooMany as exc:
        raise Problem(429, "Trop d'envois en cours", str(exc)) from None
    except quota.OverQuota:  # 413, not 507: a client must not retry it as a server error
        raise Problem(413, "Espace de stockage plein", f"{caller.address} : quota dépassé") from None
    location = f"/api/v1/uploads/{row.id}"
    resp = web.json_response(_state(row), status=201)
    resp.headers["Location"] = location
    resp.headers["Upload-Offset"] = "0"
    return _tus(resp)


async def _own(request: web.Request, tus: bool = True) -> tuple[LargeFile, int]:
    """The caller's upload the URL names; ``tus``: a tus request (``Tus-Resumable`` checked)."""
    caller = await _caller(request)
    if tus:
        _check_version(request)
    row = await large_files.owned(request.app[RT], caller.mailbox_id, request.match_info["id"])
    if row is None:
        raise Problem(404, "Introuvable", "aucun envoi de cette boîte sous cet identifiant")
    return row, caller.mailbox_id


def _offsets(resp: web.StreamResponse, row: LargeFile) -> web.StreamResponse:
    resp.headers["Upload-Offset"] = str(row.received)
    resp.headers["Upload-Length"] = str(row.size)
    return _tus(resp)


async def head(request: web.Request) -> web.StreamResponse:
    row, _ = await _own(request)
    return _offsets(web.Response(status=200), row)


async def state(request: web.Request) -> web.StreamResponse:
    """The upload as JSON (not a tus request: no ``Tus-Resumable`` needed)."""
    row, _ = await _own(request, tus=False)
    return _offsets(web.json_response(_state(row)), row)


async def patch(request: web.Request) -> web.StreamResponse:
    row, _ = await _own(request)
    if request.content_type != OFFSET_TYPE:
        raise Problem(415, "Type non pris en charge", f"Content-Type {OFFSET_TYPE} attendu")
    offset = _length(request.headers.get("Upload-Offset"), "Upload-Offset")
    if offset != row.received or row.state != "uploading":
        problem = Problem(409, "Décalage incorrect", f"Upload-Offset attendu : {row.received}")
        problem.headers["Upload-Offset"] = str(row.received)
        raise problem
    if request.content_length is not None and offset + request.content_length > row.size:
        raise Problem(413, "Trop d'octets", f"au plus {row.size - offset} octets restants")
    try:
        await large_files.receive(
            request.app[RT], row, offset, request.content.iter_chunked(large_files.CHUNK)
        )
    except (HttpProcessingError, ConnectionError, ClientPayloadError):
        # The client went away mid-body: what arrived is kept (``receive``), HEAD tells how much.
        raise Problem(
            400, "Envoi interrompu", f"{row.received} octets reçus ; reprenez à cet offset"
        ) from None
    except large_files.TooLarge as exc:
        raise Problem(413, "Trop d'octets", str(exc)) from None
    except large_files.Conflict as exc:
        problem = Problem(409, "Envoi en conflit", str(exc))
        if exc.offset is not None:
            problem.headers["Upload-Offset"] = str(exc.offset)
        raise problem from None
    return _offsets(web.Response(status=204), row)


async def terminate(request: web.Request) -> web.StreamResponse:
    row, _ = await _own(request)
    if row.state == "sent":
        raise Problem(409, "Déjà envoyé", "ce fichier est lié à un message : il expirera seul")
    await large_files.discard(request.app[RT], [row.id])
    return _tus(web.Response(status=204))


# ---------------------------------------------------------------------------------------------- download


async def _reader(request: web.Request) -> tuple[str, service.SessionInfo | None] | None:
    """Who asks: a portal session (cookie or its bearer token) or a mailbox's credentials."""
    info = await current_session(request, allow_bearer=True)
    if info is not None:
        return info.address, info
    try:
        outcome = await credentials(request, "api")
    except Unauthenticated:
        return None
    if outcome is None or outcome.address is None:
        return None
    return outcome.address, None


def _page(request: web.Request, status: int, **context: object) -> web.Response:
    from mailserver.portal.web import render  # the pages' renderer (web imports this module)

    resp = render(request, "fichier.html", status, **context)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Basic realm="Caducee", charset="UTF-8"'
    return resp


async def _allowed(
    request: web.Request,
) -> tuple[str, service.SessionInfo | None, LargeFile, str] | web.Response:
    who = await _reader(request)
    if who is None:
        return _page(request, 401, error="Identifiez-vous pour télécharger ce fichier.")
    found = await large_files.may_download(request.app[RT], request.match_info["id"], who[0])
    if found is None:
        await request.app[RT].audit.record(
            who[0], "large-file-refused", remote(request), f"GET {request.path}"[:500], "404"
        )
        extra = {"session": who[1]} if who[1] is not None else {}
        return _page(request, 404, error="Ce lien de téléchargement est introuvable ou a expiré.", **extra)
    row, message_id, shared = found
    origin = (f"message {message_id}" if message_id else "own file") + (
        f" as member of {shared}" if shared else ""
    )
    return who[0], who[1], row, origin


async def page(request: web.Request) -> web.StreamResponse:
    allowed = await _allowed(request)
    if isinstance(allowed, web.Response):
        return allowed
    _address, info, row, _origin = allowed
    extra = {"session": info} if info is not None else {}
    return _page(request, 200, f=row, **extra)


async def download(request: web.Request) -> web.StreamResponse:
    """The file, streamed from disk (``FileResponse``: Content-Length, Range as ``byte_range`` reads
    it), never rendered."""
    allowed = await _allowed(request)
    if isinstance(allowed, web.Response):
        return allowed
    address, _info, row, origin = allowed
    rt = request.app[RT]
    await rt.audit.record(
        address,
        "large-file-download",
        remote(request),
        f"file {row.id} {row.filename!r} {origin}"[:500],
        request.headers.get("Range", "whole")[:100],
    )
    ascii_name = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in row.filename
    )
    quoted = urllib.parse.quote(row.filename, safe="")
    try:
        whole = byte_range(request, row.size) is None
    except Unsatisfiable as exc:
        return web.Response(
            status=416, text=f"{row.size} octets", headers={"Content-Range": exc.content_range}
        )
    kind = WholeFile if whole else web.FileResponse
    resp = kind(large_files.file_path(rt, row.id), chunk_size=large_files.CHUNK)
    resp.headers["Content-Type"] = row.content_type
    resp.headers["Content-Disposition"] = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"
    resp.headers["Content-Security-Policy"] = DOWNLOAD_CSP
    return resp


def setup(app: web.Application) -> None:
    app.router.add_route("OPTIONS", "/api/v1/uploads", options)
    app.router.add_post("/api/v1/uploads", audited("api-upload")(create))
    one = "/api/v1/uploads/{id}"
    app.router.add_route("HEAD", one, audited("api-upload")(head))
    app.router.add_get(one, audited("api-upload")(state), allow_head=False)
    app.router.add_patch(one, audited("api-upload")(patch))
    app.router.add_delete(one, audited("api-upload")(terminate))
    app.router.add_get("/fichiers/{id}", page)
    app.router.add_get("/fichiers/{id}/telecharger", download)
