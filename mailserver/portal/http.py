"""HTTP plumbing shared by the pages and the API: security headers, sessions, CSRF, downloads."""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Awaitable, Callable

from aiohttp import web

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
