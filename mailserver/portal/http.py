"""HTTP plumbing shared by the pages and the API: security headers, sessions, CSRF, downloads."""

from __future__ import annotations

import re
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from mailserver.delivery import EnqueueHook
from mailserver.portal import previews, service
from mailserver.runtime import Runtime

CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"
DOWNLOAD_CSP = "default-src 'none'; sandbox"
PRE_COOKIE = "caducee_formulaire"

RT = web.AppKey("rt", Runtime)
ENQUEUE = web.AppKey("enqueue", EnqueueHook | None)  # type: ignore[arg-type]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _harden(resp: web.StreamResponse) -> None:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    resp.headers["Cache-Control"] = "no-store"


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer, error pages included, forbids scripts, framing, sniffing and caching."""
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        _harden(exc)
        raise
    _harden(resp)
    return resp


def cookie_name(rt: Runtime) -> str:
    """``__Host-`` prefix when cookies are Secure: bound to this host, path ``/``, HTTPS only."""
    return "__Host-caducee_session" if rt.settings.portal.secure_cookies else "caducee_session"


def set_session_cookie(resp: web.StreamResponse, rt: Runtime, info: service.SessionInfo) -> None:
    resp.set_cookie(
        cookie_name(rt),
        info.token,
        path="/",
        httponly=True,
        secure=rt.settings.portal.secure_cookies,
        samesite="Strict",
    )


def clear_session_cookie(resp: web.StreamResponse, rt: Runtime) -> None:
    resp.del_cookie(cookie_name(rt), path="/", secure=rt.settings.portal.secure_cookies, samesite="Strict")


def remote(request: web.Request) -> str:
    return request.remote or ""


async def current_session(request: web.Request, allow_bearer: bool = False) -> service.SessionInfo | None:
    rt = request.app[RT]
    token = request.cookies.get(cookie_name(rt), "")
    auth = request.headers.get("Authorization", "")
    if allow_bearer and auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    return await service.resume(rt, token)


def csrf_ok(expected: str, given: object) -> bool:
    return isinstance(given, str) and bool(given) and secrets.compare_digest(expected, given)


def _disposition(kind: str, filename: str) -> str:
    """RFC 6266: an ASCII fallback name and the exact UTF-8 one."""
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename)
    quoted = urllib.parse.quote(filename, safe="")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"


def download_response(d: service.Download) -> web.Response:
    """An attachment that is only ever downloaded: RFC 6266 file name, never rendered nor sniffed."""
    resp = web.Response(body=d.data)
    resp.headers["Content-Type"] = d.content_type
    resp.headers["Content-Disposition"] = _disposition("attachment", d.filename)
    resp.headers["Content-Security-Policy"] = DOWNLOAD_CSP
    return resp


_RANGE = re.compile(r"bytes=[ \t]*(\d{0,30})-(\d{0,30})[ \t]*", re.ASCII | re.IGNORECASE)


class Unsatisfiable(Exception):
    """A Range none of whose bytes exist (RFC 9110 §15.5.17): 416 with ``Content-Range: bytes */size``."""

    def __init__(self, size: int) -> None:
        super().__init__(f"bytes */{size}")
        self.content_range = f"bytes */{size}"


def byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """The one byte range to send, as (first, end exclusive), or None for the whole body.

    RFC 9110 §14: a Range that does not parse, of another unit than bytes, with several ranges or a
    last byte before the first is ignored (200), as is any Range under an ``If-Range`` (no validator is
    sent, so none can match); ``bytes=-0`` or a first byte past the end raise Unsatisfiable. aiohttp's
    own parsing answers 416 to what should be ignored and the whole file to ``bytes=-0``."""
    header = request.headers.get(hdrs.RANGE)
    if header is None or hdrs.IF_RANGE in request.headers or size == 0:
        return None
    match = _RANGE.fullmatch(header)
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:  # suffix: the last N bytes
        if int(match[2]) == 0:
            raise Unsatisfiable(size)
        return max(0, size - int(match[2])), size
    first = int(match[1])
    if match[2] and int(match[2]) < first:
        return None
    if first >= size:
        raise Unsatisfiable(size)
    return first, min(int(match[2]) if match[2] else size, size - 1) + 1


def ranged(request: web.Request, resp: web.Response, data: bytes) -> web.Response:
    """``resp`` (an in-memory download) with ``data``, or the part of it ``byte_range`` asks (206)."""
    resp.headers["Accept-Ranges"] = "bytes"
    wanted = byte_range(request, len(data))
    if wanted is None:
        resp.body = data
        return resp
    first, end = wanted
    resp.set_status(206)
    resp.headers["Content-Range"] = f"bytes {first}-{end - 1}/{len(data)}"
    resp.body = data[first:end]
    return resp


class WholeFile(web.FileResponse):
    """A file sent whole whatever Range the request carries: one ``byte_range`` ignores."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if hdrs.RANGE in request.headers:
            headers = request.headers.copy()
            del headers[hdrs.RANGE]
            request = request.clone(headers=headers)
        return await super().prepare(request)


def preview_response(d: service.Download) -> web.Response:
    """An image attachment for an ``<img>`` of the conversation page: inline only when its declared type
    is one of ``previews.INLINE_TYPES`` and its bytes carry that type's signature; anything else (SVG,
    a mislabelled file) is a download as ``application/octet-stream``. Never sniffed (the middleware's
    ``nosniff``), sandboxed, and no script can run from it whatever it holds."""
    if not previews.previewable(d.content_type, d.data):
        return download_response(service.Download(d.filename, "application/octet-stream", d.data))
    resp = web.Response(body=d.data)
    resp.headers["Content-Type"] = d.content_type.lower()
    resp.headers["Content-Disposition"] = _disposition("inline", d.filename)
    resp.headers["Content-Security-Policy"] = DOWNLOAD_CSP
    resp.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    return resp


def row_id(text: str) -> int:
    """A number from a URL (a message id, an attachment's rank) within the database's integers
    (64 bits): ``ValueError`` otherwise, which the pages answer 404, never an overflow inside a query."""
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError(f"not a row id: {text[:30]!r}")
    return int(text)
