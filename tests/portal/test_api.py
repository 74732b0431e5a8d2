"""The JSON API and the pages' security over real HTTP: sessions, CSRF, cookies, lock-out, escaping."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import html
import re

import aiohttp
from openapi_spec_validator import validate
from sqlalchemy import update

from mailserver import conversations
from mailserver.conversation_models import PortalSession
from mailserver.db.models import AuthFailure, utcnow
from mailserver.portal import service
from tests.portal.conftest import PASSWORD, Portal
from tests.portal.helpers import DOCTOR, PATIENT, PATIENT_INS, build, send

HOSTILE = (
    "<script>alert(1)</script><img src=x onerror=alert(2)>"
    '<a href="javascript:alert(3)">clic</a><p>Bonjour <b>Pierre</b></p>'
)


def _client() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's default jar ignores IP hosts)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(http: aiohttp.ClientSession, url: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
    return await http.post(f"{url}/api/login", json={"ins": PATIENT_INS, "password": password})


async def test_openapi_document_is_valid(portal: Portal) -> None:
    async with _client() as http, http.get(f"{portal.url}/api/openapi.json") as r:
        doc = await r.json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert "/api/conversations/{id}/messages" in doc["paths"]


async def test_read_reply_download_and_closed(portal: Portal) -> None:
    first = build(DOCTOR, PATIENT, "Résultats d'analyse", "Tout va bien.", name="Dr Martin")
    first.add_attachment(
        b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="../../résultats.pdf"
    )
    [conv_id] = await send(portal.rt, first)
    async with _client() as http:
        r = await _login(http, portal.url)
        assert r.status == 200
        auth = {"Authorization": f"Bearer {(await r.json())['token']}"}
        listing = await (await http.get(f"{portal.url}/api/conversations", headers=auth)).json()
        [group] = listing["professionals"]
        assert (group["name"], group["profession"], group["unread"]) == (
            "DR Claire MARTIN",
            "Médecin, Médecine générale",
            1,
        )
        conv = await (await http.get(f"{portal.url}/api/conversations/{conv_id}", headers=auth)).json()
        [msg] = conv["messages"]
        assert msg["text"].strip() == "Tout va bien." and msg["author"] == "DR Claire MARTIN"
        [att] = msg["attachments"]
        async with http.get(f"{portal.url}/api/messages/{msg['id']}/attachments/1", headers=auth) as d:
            assert d.status == 200 and await d.read() == b"%PDF-1.4 fake"
            assert d.headers["Content-Type"] == "application/pdf"
            assert d.headers["X-Content-Type-Options"] == "nosniff"
            assert d.headers["Content-Disposition"].startswith("attachment;")
            assert "filename*=UTF-8''r%C3%A9sultats.pdf" in d.headers["Content-Disposition"]
        assert att["filename"] == "résultats.pdf"
        listing = await (await http.get(f"{portal.url}/api/conversations", headers=auth)).json()
        assert listing["unread"] == 0
        body = {
            "text": "Merci docteur",
            "attachments": [{"filename": "photo.png", "data": base64.b64encode(b"png").decode()}],
        }
        r = await http.post(f"{portal.url}/api/conversations/{conv_id}/messages", json=body, headers=auth)
        assert r.status == 201, await r.text()
        inbox = await portal.rt.store.folder((await _doctor_id(portal)), "INBOX")
        _f, msgs = await portal.rt.store.snapshot(inbox.id)
        raw = await portal.rt.store.read_blob(msgs[-1].blob_id)
        assert b"In-Reply-To: " + first["Message-ID"].encode() in raw
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert parsed["Subject"] == "Re: Résultats d'analyse"
        assert parsed["From"].addresses[0].display_name == "PETIT Pierrette (patiente)"
        await send(portal.rt, build(DOCTOR, PATIENT, "[FIN]", in_reply_to=first["Message-ID"]))
        conv = await (await http.get(f"{portal.url}/api/conversations/{conv_id}", headers=auth)).json()
        assert conv["state"] == "closed" and len(conv["messages"]) == 3
        r = await http.post(
            f"{portal.url}/api/conversations/{conv_id}/messages", json={"text": "?"}, headers=auth
        )
        assert r.status == 409
        r = await http.get(f"{portal.url}/api/conversations/nope", headers=auth)
        assert r.status == 404


async def _doctor_id(portal: Portal) -> int:
    [c] = await conversations.list_conversations(portal.rt, mailbox=DOCTOR)
    assert c.professional_mailbox_id is not None
    return c.professional_mailbox_id


async def test_cookie_flags_csrf_and_logout(portal: Portal) -> None:
    [conv_id] = await send(portal.rt, build(DOCTOR, PATIENT, "Bonjour"))
    async with _client() as http:
        r = await _login(http, portal.url)
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        csrf = (await r.json())["csrf_token"]
        url = f"{portal.url}/api/conversations/{conv_id}/messages"
        assert (await http.post(url, json={"text": "sans jeton"})).status == 403
        assert (await http.post(url, json={"text": "mauvais"}, headers={"X-CSRF-Token": "x"})).status == 403
        assert (await http.post(url, json={"text": "ok"}, headers={"X-CSRF-Token": csrf})).status == 201
        page = await (await http.get(f"{portal.url}/conversations/{conv_id}")).text()
        assert (
            await http.post(f"{portal.url}/conversations/{conv_id}/reponse", data={"texte": "x"})
        ).status == 403
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        r = await http.post(f"{portal.url}/deconnexion", data={"csrf": token.group(1)}, allow_redirects=False)
        assert r.status == 303
        assert (await http.get(f"{portal.url}/api/conversations")).status == 401


async def test_secure_cookie_when_configured(portal: Portal) -> None:
    portal.rt.settings.portal.secure_cookies = True
    async with _client() as http:
        r = await _login(http, portal.url)
        assert (
            r.headers["Set-Cookie"].startswith("__Host-caducee_session=")
            and "Secure" in r.headers["Set-Cookie"]
        )


async def test_login_form_needs_its_csrf_token(portal: Portal) -> None:
    async with _client() as http:
        r = await http.post(f"{portal.url}/connexion", data={"ins": PATIENT_INS, "mot_de_passe": PASSWORD})
        assert r.status == 403
        page = await (await http.get(f"{portal.url}/connexion")).text()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        r = await http.post(
            f"{portal.url}/connexion",
            data={"ins": PATIENT_INS, "mot_de_passe": PASSWORD, "csrf": token.group(1)},
            allow_redirects=False,
        )
        assert r.status == 303 and r.headers["Location"] == "/conversations"


async def test_session_expires(portal: Portal) -> None:
    async with _client() as http:
        r = await _login(http, portal.url)
        auth = {"Authorization": f"Bearer {(await r.json())['token']}"}
        assert (await http.get(f"{portal.url}/api/conversations", headers=auth)).status == 200
        async with portal.rt.db.write() as session:
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            await session.execute(update(PortalSession).values(expires_at=past))
        assert (await http.get(f"{portal.url}/api/conversations", headers=auth)).status == 401
        r = await http.get(f"{portal.url}/conversations", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/connexion"


async def test_lockout_after_failures(portal: Portal) -> None:
    async with _client() as http:
        for _ in range(portal.rt.settings.auth.max_failures):
            assert (await _login(http, portal.url, "wrong password")).status == 401
        r = await _login(http, portal.url)
        assert r.status == 429
        assert "verrouillé" in (await r.json())["error"]
    events = await portal.rt.audit.events(None, PATIENT, "login-failure", 100)
    assert len(events) == portal.rt.settings.auth.max_failures + 1


async def test_activation_code_is_single_use(portal: Portal) -> None:
    _addr, code, _exp = await service.invite(portal.rt, PATIENT_INS)
    await service.activate(portal.rt, PATIENT_INS, code, "another password", "127.0.0.1")
    try:
        await service.activate(portal.rt, PATIENT_INS, code, "third password!", "127.0.0.1")
    except service.PortalError as exc:
        assert exc.status == 400
    else:
        raise AssertionError("an activation code worked twice")


async def _activate(http: aiohttp.ClientSession, url: str, code: str, password: str) -> tuple[int, str]:
    """The activation form, as a browser without JavaScript submits it (its pre-session CSRF token)."""
    page = await (await http.get(f"{url}/activation")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None, page
    form = {"csrf": csrf.group(1), "ins": PATIENT_INS, "code": code}
    r = await http.post(f"{url}/activation", data=form | {"mot_de_passe": password, "confirmation": password})
    return r.status, html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", await r.text())))


async def test_wrong_activation_codes_lock_out_like_wrong_passwords(portal: Portal) -> None:
    """Wrong activation codes count in the login's lock-out (``[auth] max_failures``): after that many,
    even the right code is refused, and not spent, until ``[auth] lockout`` has passed; the account's
    password is locked too. Every refusal is audited."""
    rt = portal.rt
    limit = rt.settings.auth.max_failures
    _addr, code, _exp = await service.invite(rt, PATIENT_INS)
    new_password = "un tout nouveau secret"
    async with _client() as http:
        for _ in range(limit):
            status, text = await _activate(http, portal.url, "faux-code-" + code[10:], new_password)
            assert status == 400 and "Code d'activation invalide" in text
        status, text = await _activate(http, portal.url, code, new_password)
        assert status == 429 and "verrouillé" in text
        assert (await _login(http, portal.url)).status == 429, "the password is locked out as well"
    refused = await rt.audit.events(None, PATIENT_INS.lower(), "activation", 100)
    assert len(refused) == limit and {e.response for e in refused} == {"refused"}
    locked = await rt.audit.events(None, PATIENT, "login-failure", 100)
    assert [(e.request, e.response) for e in locked][-2:] == [
        ("portal activation", "locked"),
        ("portal login", "locked"),
    ]
    async with rt.db.write() as session:  # the lock-out has passed
        await session.execute(update(AuthFailure).values(locked_until=utcnow() - dt.timedelta(seconds=1)))
    async with _client() as http:
        status, text = await _activate(http, portal.url, code, new_password)
        assert status == 200 and "Votre compte est activé" in text, text
        assert (await _login(http, portal.url, new_password)).status == 200
    assert (await rt.audit.events(None, PATIENT, "activation", 100))[-1].response == "password set"


async def test_hostile_html_is_text_and_pages_forbid_scripts(portal: Portal) -> None:
    msg = build(DOCTOR, PATIENT, "<b>Objet</b>", "texte")
    msg.set_content(HOSTILE, subtype="html")
    [conv_id] = await send(portal.rt, msg)
    async with _client() as http:
        await _login(http, portal.url)
        r = await http.get(f"{portal.url}/conversations/{conv_id}")
        page = await r.text()
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert "<script" not in page and "onerror" not in page and "javascript:" not in page
        assert "&lt;b&gt;Objet&lt;/b&gt;" in page and "Bonjour Pierre" in page
        conv = await (await http.get(f"{portal.url}/api/conversations/{conv_id}")).json()
        assert "alert" not in conv["messages"][0]["text"]


async def test_reading_a_conversation_or_an_attachment_is_audited(portal: Portal) -> None:
    """API view, portal page and downloads: one "read" event each, naming messages, never content."""
    first = build(DOCTOR, PATIENT, "Compte rendu", "Diagnostic confidentiel.", name="Dr Martin")
    first.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="cr.pdf")
    [conv_id] = await send(portal.rt, first)
    async with _client() as http:
        r = await _login(http, portal.url)
        auth = {"Authorization": f"Bearer {(await r.json())['token']}"}
        conv = await (await http.get(f"{portal.url}/api/conversations/{conv_id}", headers=auth)).json()
        [msg] = conv["messages"]
        async with http.get(f"{portal.url}/api/messages/{msg['id']}/attachments/1", headers=auth) as d:
            assert d.status == 200
        # the pages, with the session cookie the login set
        assert (await http.get(f"{portal.url}/conversations/{conv_id}")).status == 200
        async with http.get(f"{portal.url}/messages/{msg['id']}/pieces-jointes/1") as d:
            assert d.status == 200
    reads = await portal.rt.audit.events(action="read")
    assert [(e.actor, e.request) for e in reads] == [
        (PATIENT, f"api conversation {conv_id} messages {msg['id']}"),
        (PATIENT, f"api download message {msg['id']} attachment 1"),
        (PATIENT, f"portal conversation {conv_id} messages {msg['id']}"),
        (PATIENT, f"portal download message {msg['id']} attachment 1"),
    ]
    assert all(e.remote == "127.0.0.1" and "confidentiel" not in e.request for e in reads)
