"""The patient portal: server-rendered French pages (Jinja2, autoescaped), no JavaScript at all.

Every page answers with a strict Content-Security-Policy (no script, no remote content), every form
carries a CSRF token (the session's, or a pre-session cookie for sign-in and activation), and message
bodies reach the templates only as text. The JSON API (``api.py``) is mounted on the same application.

Sockets go through the connection gate shared by every listener (``mailserver.limits``) before aiohttp
sees them: one beyond ``max_connections`` or ``connections_per_ip`` is answered 503 and closed. Behind a
reverse proxy every socket comes from the proxy's address, so there the per-address ceiling bounds the
proxy's connections. An idle keep-alive connection, or one that sends no request, is closed after
``[limits] portal_idle_timeout``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from config.settings import parse_listen
from mailserver import alerts, handshakes, storage_faults
from mailserver.delivery import EnqueueHook
from mailserver.limits import ConnectionGate, Refused, Slot
from mailserver.portal import api, autoconfig, factors, messages_api, previews, receipts, service, uploads
from mailserver.portal.http import (
    ENQUEUE,
    PRE_COOKIE,
    RT,
    Handler,
    clear_session_cookie,
    csrf_ok,
    current_session,
    download_response,
    preview_response,
    remote,
    row_id,
    security_headers,
    set_session_cookie,
)
from mailserver.runtime import Runtime
from mailserver.store.store import MessageUnavailable

HERE = Path(__file__).parent
JINJA = web.AppKey("jinja", jinja2.Environment)


def _size(value: int | None) -> str:
    if value is None:
        return "illimité"
    for unit, factor in (("Go", 1024**3), ("Mo", 1024**2), ("ko", 1024)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}".replace(".", ",")
    return f"{value} o"


def _date(value: Any) -> str:
    return value.astimezone().strftime("%d/%m/%Y à %H:%M")


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    html = request.app[JINJA].get_template(template).render(**context)
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


def _anonymous_form(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A sign-in or activation page, with a fresh pre-session CSRF token in a cookie and the form."""
    rt = request.app[RT]
    token = secrets.token_urlsafe(24)
    resp = render(request, template, status, csrf=token, **context)
    resp.set_cookie(
        PRE_COOKIE,
        token,
        path="/",
        httponly=True,
        secure=rt.settings.portal.secure_cookies,
        samesite="Strict",
    )
    return resp


def _anonymous_csrf_ok(request: web.Request, form: Any) -> bool:
    return csrf_ok(request.cookies.get(PRE_COOKIE, ""), form.get("csrf"))


async def _session(request: web.Request, enrolling: bool = False) -> service.SessionInfo:
    """The signed-in patient, else a redirect to the sign-in page; under ``second_factor = "totp"``
    a patient without an app is sent to enrol first (``enrolling``: the enrolment pages themselves)."""
    info = await current_session(request)
    if info is None:
        raise web.HTTPSeeOther("/connexion")
    if not enrolling and await service.must_enrol(request.app[RT], info):
        raise web.HTTPSeeOther("/parametres/application")
    return info


def _cookie(rt: Runtime, name: str) -> str:
    """``__Host-`` prefix when cookies are Secure, as the session's."""
    return f"__Host-{name}" if rt.settings.portal.secure_cookies else name


STEP = "caducee_etape"  # the pending second step (login code or reset) of this browser
DEVICE = "caducee_appareil"  # a trusted device


def _set_cookie(resp: web.StreamResponse, rt: Runtime, name: str, value: str, max_age: int) -> None:
    resp.set_cookie(
        _cookie(rt, name),
        value,
        path="/",
        max_age=max_age,
        httponly=True,
        secure=rt.settings.portal.secure_cookies,
        samesite="Strict",
    )


def _del_cookie(resp: web.StreamResponse, rt: Runtime, name: str) -> None:
    resp.del_cookie(_cookie(rt, name), path="/", secure=rt.settings.portal.secure_cookies, samesite="Strict")


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/conversations")


async def favicon(request: web.Request) -> web.StreamResponse:
    """Browsers ask for it on every site; an empty answer keeps their consoles (and our logs) quiet."""
    return web.Response(status=204)


async def login_page(request: web.Request) -> web.StreamResponse:
    return _anonymous_form(request, "login.html")


async def login_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    form = await request.post()
    if not _anonymous_csrf_ok(request, form):
        return _anonymous_form(request, "login.html", 403, error="Formulaire expiré : veuillez réessayer.")
    ins = str(form.get("ins", ""))
    device = request.cookies.get(_cookie(rt, DEVICE), "")
    try:
        result = await service.login(rt, ins, str(form.get("mot_de_passe", "")), remote(request), device)
    except service.PortalError as exc:
        return _anonymous_form(request, "login.html", exc.status, error=exc.message, ins=ins)
    if isinstance(result, factors.Challenge):
        resp = web.HTTPSeeOther("/connexion/code")
        _set_cookie(resp, rt, STEP, result.token, int(rt.settings.portal.code_lifetime))
        raise resp
    raise _signed_in(rt, result)


def _signed_in(rt: Runtime, info: service.SessionInfo) -> web.HTTPSeeOther:
    resp = web.HTTPSeeOther("/conversations")
    set_session_cookie(resp, rt, info)
    resp.del_cookie(PRE_COOKIE, path="/")
    return resp


def _code_page(
    request: web.Request, pending: factors.Challenge, status: int = 200, **extra: Any
) -> web.Response:
    rt = request.app[RT]
    return _anonymous_form(
        request,
        "code.html",
        status,
        step=pending,
        trust_days=rt.settings.portal.trust_device,
        fallback=rt.settings.portal.second_factor == "email_or_totp",
        **extra,
    )


async def code_page(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    pending = await factors.pending(rt, request.cookies.get(_cookie(rt, STEP), ""))
    if pending is None:
        raise web.HTTPSeeOther("/connexion")
    return _code_page(request, pending)


async def code_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    form = await request.post()
    token = request.cookies.get(_cookie(rt, STEP), "")
    pending = await factors.pending(rt, token)
    if pending is None:
        return _anonymous_form(request, "login.html", 400, error=factors.EXPIRED)
    if not _anonymous_csrf_ok(request, form):
        return _code_page(request, pending, 403, error="Formulaire expiré : veuillez réessayer.")
    try:
        info = await service.second_step(rt, token, str(form.get("code", "")), remote(request))
    except service.PortalError as exc:
        if exc.status == 401:
            return _code_page(request, pending, 401, error=exc.message)
        resp = _anonymous_form(request, "login.html", exc.status, error=exc.message)
        _del_cookie(resp, rt, STEP)
        return resp
    resp = _signed_in(rt, info)
    _del_cookie(resp, rt, STEP)
    if form.get("appareil") == "oui" and rt.settings.portal.trust_device > 0:
        value = await factors.device_cookie(rt, info.mailbox_id)
        _set_cookie(resp, rt, DEVICE, value, rt.settings.portal.trust_device * 86400)
        await rt.audit.record(info.address, "second-factor", remote(request), "portal device trusted", "ok")
    raise resp


async def code_email_post(request: web.Request) -> web.StreamResponse:
    """ "Recevoir plutôt un code par courriel": the app step of this browser becomes an e-mailed code."""
    rt = request.app[RT]
    form = await request.post()
    token = request.cookies.get(_cookie(rt, STEP), "")
    pending = await factors.pending(rt, token)
    if pending is None:
        return _anonymous_form(request, "login.html", 400, error=factors.EXPIRED)
    if not _anonymous_csrf_ok(request, form):
        return _code_page(request, pending, 403, error="Formulaire expiré : veuillez réessayer.")
    try:
        switched = await factors.switch_to_email(rt, token, remote(request))
    except service.PortalError as exc:
        return _code_page(request, pending, exc.status, error=exc.message)
    resp = web.HTTPSeeOther("/connexion/code")
    _set_cookie(resp, rt, STEP, switched.token, int(rt.settings.portal.code_lifetime))
    raise resp


async def forgotten_page(request: web.Request) -> web.StreamResponse:
    return _anonymous_form(request, "oubli.html")


async def forgotten_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    form = await request.post()
    if not _anonymous_csrf_ok(request, form):
        return _anonymous_form(request, "oubli.html", 403, error="Formulaire expiré : veuillez réessayer.")
    ins = str(form.get("ins", ""))
    try:
        pending = await service.request_reset(rt, ins, remote(request))
    except service.PortalError as exc:
        return _anonymous_form(request, "oubli.html", exc.status, error=exc.message, ins=ins)
    resp = web.HTTPSeeOther("/mot-de-passe-oublie/code")
    _set_cookie(resp, rt, STEP, pending.token, int(rt.settings.portal.code_lifetime))
    raise resp


async def reset_page(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    if await factors.pending(rt, request.cookies.get(_cookie(rt, STEP), "")) is None:
        raise web.HTTPSeeOther("/mot-de-passe-oublie")
    return _anonymous_form(request, "nouveau_mot_de_passe.html")


async def reset_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    form = await request.post()
    token = request.cookies.get(_cookie(rt, STEP), "")
    page = "nouveau_mot_de_passe.html"
    if not _anonymous_csrf_ok(request, form):
        return _anonymous_form(request, page, 403, error="Formulaire expiré : veuillez réessayer.")
    password = str(form.get("mot_de_passe", ""))
    if password != str(form.get("confirmation", "")):
        return _anonymous_form(request, page, 400, error="Les deux mots de passe ne sont pas identiques.")
    try:
        ins = await service.reset_password(rt, token, str(form.get("code", "")), password, remote(request))
    except service.PortalError as exc:
        if exc.status in (400, 401) and await factors.pending(rt, token) is not None:
            return _anonymous_form(request, page, exc.status, error=exc.message)
        resp = _anonymous_form(request, "oubli.html", exc.status, error=exc.message)
        _del_cookie(resp, rt, STEP)
        return resp
    notice = "Votre mot de passe est changé : connectez-vous avec le nouveau."
    resp = _anonymous_form(request, "login.html", notice=notice, ins=ins)
    _del_cookie(resp, rt, STEP)
    _del_cookie(resp, rt, DEVICE)
    return resp


async def logout_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    info = await _session(request, enrolling=True)  # one may leave before enrolling
    form = await request.post()
    if not csrf_ok(info.csrf, form.get("csrf")):
        raise web.HTTPForbidden(text="Jeton CSRF invalide.")
    await service.logout(rt, info.token)
    resp = web.HTTPSeeOther("/connexion")
    clear_session_cookie(resp, rt)
    raise resp


async def activation_page(request: web.Request) -> web.StreamResponse:
    """The link ``caducee patient invite --send`` e-mails carries the code (``?code=``)."""
    return _anonymous_form(request, "activation.html", code=request.query.get("code", "")[:40])


async def activation_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    form = await request.post()
    if not _anonymous_csrf_ok(request, form):
        return _anonymous_form(
            request, "activation.html", 403, error="Formulaire expiré : veuillez réessayer."
        )
    ins = str(form.get("ins", ""))
    password = str(form.get("mot_de_passe", ""))
    if password != str(form.get("confirmation", "")):
        return _anonymous_form(
            request, "activation.html", 400, error="Les deux mots de passe ne sont pas identiques.", ins=ins
        )
    try:
        await service.activate(rt, ins, str(form.get("code", "")), password, remote(request))
    except service.PortalError as exc:
        return _anonymous_form(request, "activation.html", exc.status, error=exc.message, ins=ins)
    return _anonymous_form(
        request,
        "login.html",
        notice="Votre compte est activé : connectez-vous avec votre mot de passe.",
        ins=ins,
    )


async def conversations_page(request: web.Request) -> web.StreamResponse:
    info = await _session(request)
    ov = await service.overview(request.app[RT], info.mailbox_id)
    return render(request, "conversations.html", session=info, overview=ov, quota=ov.quota)


async def _conversation_page(
    request: web.Request, info: service.SessionInfo, public_id: str, status: int = 200, **extra: Any
) -> web.Response:
    rt = request.app[RT]
    reader = (info.address, remote(request), "portal")
    detail = await service.read_conversation(rt, info.mailbox_id, public_id, reader=reader)
    quota = await service.overview(rt, info.mailbox_id)
    return render(
        request,
        "conversation.html",
        status,
        session=info,
        c=detail,
        quota=quota.quota,
        max_size=_size(rt.settings.limits.message_size),
        receipts=await receipts.states(rt, info.mailbox_id, detail.messages),
        **extra,
    )


async def conversation_page(request: web.Request) -> web.StreamResponse:
    info = await _session(request)
    extra = {"notice": "Votre message a été envoyé."} if request.query.get("envoye") == "1" else {}
    try:
        return await _conversation_page(request, info, request.match_info["id"], **extra)
    except service.PortalError as exc:
        return render(request, "error.html", exc.status, session=info, error=exc.message)


def _uploads(form: Any) -> list[service.Upload]:
    return [
        service.Upload(f.filename or "", f.content_type or "application/octet-stream", f.file.read())
        for f in form.getall("pieces_jointes", [])
        if isinstance(f, web.FileField) and f.filename
    ]


async def reply_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    info = await _session(request)
    public_id = request.match_info["id"]
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        return await _conversation_page(
            request, info, public_id, 413, error="Message trop volumineux.", text=""
        )
    if not csrf_ok(info.csrf, form.get("csrf")):
        raise web.HTTPForbidden(text="Jeton CSRF invalide.")
    text = str(form.get("texte", ""))
    files = _uploads(form)
    try:
        await service.reply(
            rt, info.mailbox_id, public_id, text, files, remote(request), request.app[ENQUEUE]
        )
    except service.PortalError as exc:
        if exc.status == 404:
            return render(request, "error.html", 404, session=info, error=exc.message)
        return await _conversation_page(request, info, public_id, exc.status, error=exc.message, text=text)
    raise web.HTTPSeeOther(f"/conversations/{public_id}#dernier")


async def _settings(
    request: web.Request, info: service.SessionInfo, status: int = 200, **extra: Any
) -> web.Response:
    rt = request.app[RT]
    pref = await alerts.preference(rt, info.address)
    return render(
        request,
        "parametres.html",
        status,
        session=info,
        pref=pref,
        mode=rt.settings.portal.second_factor,
        app=await factors.enrolled(rt, info.mailbox_id),
        trust_days=rt.settings.portal.trust_device,
        **extra,
    )


async def _new_message_page(
    request: web.Request, info: service.SessionInfo, status: int = 200, **form: Any
) -> web.Response:
    rt = request.app[RT]
    query = request.query.get("recherche", "")[: service.MAX_QUERY]
    contacts, more = await service.first_contacts(rt, query)
    quota = await service.overview(rt, info.mailbox_id)
    return render(
        request,
        "nouveau_message.html",
        status,
        session=info,
        quota=quota.quota,
        contacts=contacts,
        more=more,
        query=query,
        max_size=_size(rt.settings.limits.message_size),
        max_subject=service.MAX_SUBJECT,
        form={"destinataire": "", "objet": "", "texte": "", **form.pop("form", {})},
        **form,
    )


async def new_message_page(request: web.Request) -> web.StreamResponse:
    """The "Nouveau message" page: the mailboxes that take a patient's first message (a pharmacy)."""
    return await _new_message_page(request, await _session(request))


async def new_message_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    info = await _session(request)
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        return await _new_message_page(request, info, 413, error="Message trop volumineux.")
    if not csrf_ok(info.csrf, form.get("csrf")):
        raise web.HTTPForbidden(text="Jeton CSRF invalide.")
    fields = {k: str(form.get(k, "")) for k in ("destinataire", "objet", "texte")}
    try:
        public_id = await service.write_first(
            rt,
            info.mailbox_id,
            fields["destinataire"],
            fields["objet"],
            fields["texte"],
            _uploads(form),
            remote(request),
            request.app[ENQUEUE],
        )
    except service.PortalError as exc:
        return await _new_message_page(request, info, exc.status, error=exc.message, form=fields)
    # Delivered and committed (durable) before the page says so.
    raise web.HTTPSeeOther(f"/conversations/{public_id}?envoye=1#dernier")


async def settings_page(request: web.Request) -> web.StreamResponse:
    return await _settings(request, await _session(request))


async def settings_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    info = await _session(request)
    form = await request.post()
    if not csrf_ok(info.csrf, form.get("csrf")):
        raise web.HTTPForbidden(text="Jeton CSRF invalide.")
    enabled = form.get("alertes") == "oui"
    if not await alerts.set_enabled(rt, info.address, enabled, remote(request), "portal"):
        return render(request, "error.html", 404, session=info, error="Aucun dossier patient pour ce compte.")
    notice = "Les alertes sont activées." if enabled else "Les alertes sont désactivées."
    return await _settings(request, info, notice=notice)


async def _posted(request: web.Request, enrolling: bool = False) -> tuple[service.SessionInfo, Any]:
    info = await _session(request, enrolling)
    form = await request.post()
    if not csrf_ok(info.csrf, form.get("csrf")):
        raise web.HTTPForbidden(text="Jeton CSRF invalide.")
    return info, form


async def app_page(request: web.Request) -> web.StreamResponse:
    """Enrolment of an authenticator app: QR code and secret in text, confirmed by a first code."""
    rt = request.app[RT]
    info = await _session(request, enrolling=True)
    if rt.settings.portal.second_factor in ("off", "email"):
        raise web.HTTPSeeOther("/parametres")
    required = await service.must_enrol(rt, info)
    enrolment = await factors.enrolment(rt, info.mailbox_id)
    return render(request, "application.html", session=info, e=enrolment, required=required)


async def app_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    info, form = await _posted(request, enrolling=True)
    if rt.settings.portal.second_factor in ("off", "email"):
        raise web.HTTPSeeOther("/parametres")
    if await factors.confirm_enrolment(
        rt, info.mailbox_id, info.address, str(form.get("code", "")), remote(request)
    ):
        return await _settings(request, info, notice="Votre application d'authentification est enregistrée.")
    enrolment = await factors.enrolment(rt, info.mailbox_id)
    required = await service.must_enrol(rt, info)
    error = "Code incorrect : vérifiez l'heure de votre téléphone et saisissez le code affiché."
    return render(request, "application.html", 400, session=info, e=enrolment, required=required, error=error)


async def app_remove_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    info, _form = await _posted(request)
    if rt.settings.portal.second_factor == "totp":
        return await _settings(
            request, info, 403, error="Votre établissement exige une application d'authentification."
        )
    await factors.remove_app(rt, info.mailbox_id, info.address, remote(request))
    notice = "L'application d'authentification est retirée : les codes vous seront envoyés par courriel."
    return await _settings(request, info, notice=notice)


async def devices_post(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    info, _form = await _posted(request)
    await factors.forget_devices(rt, info.mailbox_id, info.address, remote(request))
    resp = await _settings(request, info, notice="Les appareils de confiance sont oubliés.")
    _del_cookie(resp, rt, DEVICE)
    return resp


async def _attachment(
    request: web.Request, purpose: str, respond: Callable[[service.Download], web.StreamResponse]
) -> web.StreamResponse:
    """One attachment of one of the patient's messages, read (and audited) for ``purpose``."""
    info = await _session(request)
    try:
        mid, n = row_id(request.match_info["mid"]), row_id(request.match_info["n"])
        reader = (info.address, remote(request), purpose)
        return respond(await service.attachment(request.app[RT], info.mailbox_id, mid, n, reader))
    except ValueError:
        raise web.HTTPNotFound() from None
    except service.PortalError as exc:
        return render(request, "error.html", exc.status, session=info, error=exc.message)


async def attachment_get(request: web.Request) -> web.StreamResponse:
    return await _attachment(request, "portal download", download_response)


async def preview_get(request: web.Request) -> web.StreamResponse:
    """An image attachment for the conversation page's ``<img>``: inline only when it truly is one."""
    return await _attachment(request, "portal preview", preview_response)


UNAVAILABLE = (
    "Ce message est momentanément indisponible. Réessayez dans quelques minutes ; "
    "si cela dure, signalez-le à votre professionnel de santé."
)


@web.middleware
async def storage_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A message whose file cannot be read (``MessageUnavailable``), on any page or API route:
    503 with ``Retry-After``, the error page or the API's ``{"error": ...}``, never a 500 traceback;
    logged and audited once (``mailserver.storage_faults``). The session stays valid."""
    try:
        return await handler(request)
    except MessageUnavailable as exc:
        rt = request.app[RT]
        info = await current_session(request, allow_bearer=True)
        await storage_faults.report(
            rt,
            [exc],
            service="portal",
            actor=info.address if info is not None else "",
            remote=remote(request),
            request=f"{request.method} {request.path}",
        )
        if request.path.startswith("/api/"):
            resp = web.json_response({"error": UNAVAILABLE}, status=503)
        elif info is not None:
            resp = render(request, "error.html", 503, session=info, error=UNAVAILABLE)
        else:
            resp = render(request, "error.html", 503, error=UNAVAILABLE)
        resp.headers["Retry-After"] = "60"
        return resp


@web.middleware
async def page_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unknown address outside the API gets the portal's own French error page (with its title,
    language and way back), not aiohttp's bare text; the API keeps its own answers."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if request.path.startswith("/api/"):
            raise
        info = await current_session(request)
        context: dict[str, Any] = {"session": info} if info is not None else {}
        return render(request, "error.html", 404, error="Cette page n'existe pas.", **context)


def make_app(rt: Runtime, enqueue: EnqueueHook | None = None) -> web.Application:
    """The portal application; ``enqueue`` is the outbound queue's hook for professionals at peers."""
    app = web.Application(
        middlewares=[security_headers, storage_unavailable, page_not_found],
        client_max_size=rt.settings.limits.message_size * 4 // 3 + 1024 * 1024,
    )
    app[RT] = rt
    app[ENQUEUE] = enqueue
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["taille"] = _size
    env.filters["date"] = _date
    env.filters["type_fichier"] = previews.type_label
    app[JINJA] = env
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/connexion", login_page)
    app.router.add_post("/connexion", login_post)
    app.router.add_post("/deconnexion", logout_post)
    app.router.add_get("/connexion/code", code_page)
    app.router.add_post("/connexion/code", code_post)
    app.router.add_post("/connexion/code/courriel", code_email_post)
    app.router.add_get("/mot-de-passe-oublie", forgotten_page)
    app.router.add_post("/mot-de-passe-oublie", forgotten_post)
    app.router.add_get("/mot-de-passe-oublie/code", reset_page)
    app.router.add_post("/mot-de-passe-oublie/code", reset_post)
    app.router.add_get("/activation", activation_page)
    app.router.add_post("/activation", activation_post)
    app.router.add_get("/conversations", conversations_page)
    app.router.add_get("/conversations/{id}", conversation_page)
    app.router.add_post("/conversations/{id}/reponse", reply_post)
    app.router.add_get("/messages/{mid}/pieces-jointes/{n}", attachment_get)
    app.router.add_get("/messages/{mid}/apercus/{n}", preview_get)
    app.router.add_get("/nouveau-message", new_message_page)
    app.router.add_post("/nouveau-message", new_message_post)
    app.router.add_get("/parametres", settings_page)
    app.router.add_post("/parametres", settings_post)
    app.router.add_get("/parametres/application", app_page)
    app.router.add_post("/parametres/application", app_post)
    app.router.add_post("/parametres/application/retrait", app_remove_post)
    app.router.add_post("/parametres/appareils", devices_post)
    app.router.add_static("/static", HERE / "static")
    api.setup(app)
    messages_api.setup(app)
    receipts.setup(app)
    uploads.setup(app)
    autoconfig.setup(app)
    return app


class Admission(asyncio.Protocol):
    """One portal socket: admitted by the gate, then handed to aiohttp's protocol (every event passed
    on), or answered 503 and closed before any request is read."""

    def __init__(self, gate: ConnectionGate, make: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.make = make
        self.slot: Slot | None = None
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        slot = self.gate.connect(str(peer[0]) if peer else "")
        if isinstance(slot, Refused):  # audited by the gate
            body = f"{slot.text}\n".encode()
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\nRetry-After: 60\r\n"
                "Connection: close\r\n\r\n"
            )
            transport.write(head.encode() + body)  # type: ignore[attr-defined]
            transport.close()
            return
        self.slot = slot
        self.inner = self.make()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot is not None:
            self.gate.release(self.slot)
        if self.inner is not None:
            self.inner.connection_lost(exc)


class PortalListener:
    service = "portal"

    def __init__(
        self, runner: web.AppRunner, server: asyncio.Server, gate: ConnectionGate, address: str
    ) -> None:
        self.runner = runner
        self.server = server
        self.gate = gate
        self.address = address

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()  # ends aiohttp's connections
        await self.gate.drain()


async def start(rt: Runtime) -> list[PortalListener]:
    """One plain-HTTP listener per ``[portal] listen`` address (TLS is terminated in front), all behind
    one connection gate; replies to professionals at peer operators go through the shared outbound queue."""
    listeners = []
    gate = ConnectionGate("portal", rt.settings.limits, rt.audit, rt.metrics)
    for address in rt.settings.portal.listen:
        host, port = parse_listen(address)
        runner = web.AppRunner(
            make_app(rt, rt.queue.enqueue_hook()),
            access_log=None,
            shutdown_timeout=5,
            keepalive_timeout=rt.settings.limits.portal_idle_timeout,
        )
        await runner.setup()
        handlers = runner.server
        assert handlers is not None
        server = await handshakes.create_server(
            rt,
            "portal",
            lambda handlers=handlers: Admission(gate, handlers),
            host,
            port,
            None,
            reuse_address=True,
        )
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        listeners.append(PortalListener(runner, server, gate, f"{bound_host}:{bound_port}"))
    return listeners
