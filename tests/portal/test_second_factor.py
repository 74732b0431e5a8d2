"""The portal's second factor and self-service (issue 18), with the whole server running: submission,
the outbound queue, the portal on 127.0.0.1, and the operator's relay as a local SMTP sink
(``tests/smtp/relay_sink.py``, STARTTLS + AUTH) where every mail to the patient's personal address is
read back and parsed with the ``email`` package. Browser tests drive Debian's chromium (Playwright);
the rest use aiohttp as a browser without JavaScript would. Time moves through ``factors.now``, never
by sleeping."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import re
import smtplib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pyotp
import pytest
from click.testing import CliRunner
from playwright.async_api import Browser, Page
from sqlalchemy import select

import cli as caducee_cli
from directory.patients import add_patient, edit_patient, make_record
from mailserver import accounts
from mailserver.conversation_models import PortalCode, PortalFactor
from mailserver.db.models import AuditEvent, utcnow
from mailserver.portal import factors, service, web
from tests.portal import a11y
from tests.portal.helpers import OTHER_INS, add_professional
from tests.smtp.conftest import MARTIN, PASSWORD, RPPS, SMTPEnv, start_env, wait_for
from tests.smtp.relay_sink import RELAY_PASSWORD, RELAY_USER, Sink

PATIENT_INS = "262112B82955335"
PATIENT_DOMAIN = "patient.a.mssante.test"
PATIENT = f"{PATIENT_INS.lower()}@{PATIENT_DOMAIN}"
PERSONAL = "pierrette.petit@perso.test"
PORTAL_URL = "https://portail.a.mssante.test/"
PATIENT_PASSWORD = "correct horse battery"
NEW_PASSWORD = "un tout nouveau secret"
UNKNOWN_INS = "185077512345608"  # key-checked, held by nobody here
LOGIN_SUBJECT = "Votre code de connexion"
RESET_SUBJECT = "Réinitialisation de votre mot de passe"


@dataclass
class Portal2FA:
    env: SMTPEnv
    sink: Sink
    url: str
    config: Path

    @property
    def rt(self) -> Any:
        return self.env.rt

    def mails(self, subject: str) -> list[EmailMessage]:
        return [
            m for _s, rcpts, m in self.sink.messages() if m["Subject"] == subject and rcpts == (PERSONAL,)
        ]

    async def code(self, subject: str = LOGIN_SUBJECT, after: int = 0) -> str:
        """The code of the next mail with ``subject`` at the relay sink (the ``after``-th and later)."""

        async def arrived() -> list[EmailMessage]:
            found = self.mails(subject)
            return found if len(found) > after else []

        mail = (await wait_for(arrived))[after]
        assert mail["To"] == PERSONAL and mail["Auto-Submitted"] == "auto-generated"
        match = re.search(r"Votre code : (\d{6})\s", mail.get_content())
        assert match is not None, mail.get_content()
        return match.group(1)


async def _start(tmp_path: Path, db_url: str, pki: Any, sink: Sink, **portal: Any) -> Portal2FA:
    sink.start()
    secret = tmp_path / "relay-password"
    secret.write_text(RELAY_PASSWORD + "\n")
    relay = {
        "host": "127.0.0.1",
        "port": sink.port,
        "username": RELAY_USER,
        "password_file": str(secret),
        "ca_file": str(pki.peer_ca),
    }
    env = await start_env(
        tmp_path,
        db_url,
        pki,
        relay=relay,
        patients={"portal_url": PORTAL_URL, "alert_interval": "15m"},
        portal={"listen": ["127.0.0.1:0"], "secure_cookies": False, **portal},
        server={"hostname": "mail.a.mssante.test"},
    )
    rt = env.rt
    await add_professional(rt, MARTIN, RPPS, "Martin", "Claire", "Médecine générale", hosted=True)
    await accounts.add_domain(rt, PATIENT_DOMAIN, patients=True)
    await accounts.add_mailbox(rt, PATIENT, "PAT")
    await add_patient(
        rt.db, make_record(PATIENT_INS, "Petit", "Pierrette", "F", "1962-11-23", email=PERSONAL)
    )
    _address, code, _expires = await service.invite(rt, PATIENT_INS)
    await service.activate(rt, PATIENT_INS, code, PATIENT_PASSWORD, "127.0.0.1")
    [listener] = await web.start(rt)
    env.started.append(listener)
    config = tmp_path / "cli.toml"  # the same instance, for `caducee` commands run beside it
    config.write_text(
        f'[server]\nhostname = "mail.a.mssante.test"\n[database]\nurl = "{db_url}"\n'
        f'[storage]\npath = "{rt.settings.storage.path}"\n'
        f'[smime]\nkey_file = "{rt.settings.smime.key_file}"\n'
        f'[patients]\nportal_url = "{PORTAL_URL}"\n[relay]\nhost = "127.0.0.1"\nport = {sink.port}\n'
        f'username = "{RELAY_USER}"\npassword_file = "{secret}"\nca_file = "{pki.peer_ca}"\n',
        encoding="utf-8",
    )
    return Portal2FA(env, sink, f"http://{listener.address}", config)


@pytest.fixture
async def sink(pki: Any) -> AsyncIterator[Sink]:
    s = Sink(pki)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def portal(tmp_path: Path, db_url: str, pki: Any, sink: Sink) -> AsyncIterator[Portal2FA]:
    p = await _start(tmp_path, db_url, pki, sink)
    try:
        yield p
    finally:
        await p.env.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    """Freeze the second factor's clock at a given time (``factors.now``)."""

    def freeze(at: dt.datetime) -> None:
        monkeypatch.setattr(factors, "now", lambda: at)

    return freeze


class Client:
    """A browser without JavaScript: cookies kept, each form's CSRF token read from its page."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.http.close()

    async def csrf(self, path: str) -> str:
        page = await (await self.http.get(self.url + path)).text()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None, page
        return token.group(1)

    async def submit(self, path: str, **fields: str) -> tuple[int, str, str]:
        """GET the form at ``path``, POST it with ``fields``; (status, page, final URL path)."""
        data = {"csrf": await self.csrf(path), **fields}
        r = await self.http.post(self.url + path, data=data)
        return r.status, await r.text(), r.url.path

    async def password(
        self, password: str = PATIENT_PASSWORD, ins: str = PATIENT_INS
    ) -> tuple[int, str, str]:
        return await self.submit("/connexion", ins=ins, mot_de_passe=password)


@pytest.fixture
async def client(portal: Portal2FA) -> AsyncIterator[Client]:
    c = Client(portal.url)
    try:
        yield c
    finally:
        await c.close()


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


async def _events(portal: Portal2FA, action: str) -> list[tuple[str, str, str]]:
    async with portal.rt.db.read() as session:
        rows = await session.execute(
            select(AuditEvent.actor, AuditEvent.request, AuditEvent.response)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def _submit(env: SMTPEnv, subject: str, body: str) -> None:
    msg = EmailMessage()
    msg["From"] = MARTIN
    msg["To"] = PATIENT
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="a.mssante.test")
    msg["Date"] = email.utils.formatdate()
    msg.set_content(body)
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=env.ports["submission"], start_tls=True, tls_context=env.user()
    )
    await smtp.connect()
    await smtp.login(MARTIN, PASSWORD)
    await smtp.send_message(msg)
    await smtp.quit()


async def _password_step(page: Page, url: str, password: str = PATIENT_PASSWORD) -> None:
    await page.goto(f"{url}/connexion")
    await page.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
    await page.get_by_label("Mot de passe").fill(password)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_load_state()


async def _fits(page: Page, width: int = 320) -> None:
    """Usable at 320 px: nothing wider than the screen, the page in French."""
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    assert await page.evaluate("document.documentElement.lang") == "fr"


# ---------------------------------------------------------------------------------------------- e-mail


async def test_alert_then_login_with_the_emailed_code_read_and_reply(
    portal: Portal2FA, browser: Browser
) -> None:
    """The issue's path: alert at the relay → password → code e-mailed to the relay → read → reply."""
    await _submit(portal.env, "Résultats d'analyse", "Bonjour,\nvos résultats sont normaux.")
    [alert] = await wait_for(lambda: asyncio.sleep(0, [m for _s, _r, m in portal.sink.messages()]))
    assert "Vous avez un nouveau message de Dr MARTIN" in alert.get_content()

    page = await browser.new_page(viewport={"width": 320, "height": 700})
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    await _password_step(page, portal.url)
    assert page.url == f"{portal.url}/connexion/code"
    assert await page.get_by_role("heading", name="Code de connexion").is_visible()
    assert await page.get_by_text(factors.mask(PERSONAL)).is_visible()
    assert PERSONAL not in await page.content()
    await _fits(page)
    assert await a11y.check(page, "code par courriel") == []
    code = await portal.code()
    await page.get_by_label("Code à 6 chiffres").fill(code)
    await page.get_by_role("button", name="Valider").click()
    await page.wait_for_url(f"{portal.url}/conversations")
    await page.get_by_role("link", name="Résultats d'analyse").click()
    assert await page.get_by_text("vos résultats sont normaux.").is_visible()
    await page.get_by_label("Votre message").fill("Merci docteur.")
    await page.get_by_role("button", name="Envoyer").click()
    await page.wait_for_load_state()
    assert await page.get_by_text("Merci docteur.").is_visible()
    assert console == []

    async def answered() -> list[bytes]:
        return [m for m in await portal.env.inbox(MARTIN) if b"Merci docteur." in m]

    await wait_for(answered)
    [(actor, request, _response)] = [e for e in await _events(portal, "second-factor") if e[2] == "ok"]
    assert actor == PATIENT and "email code" in request
    [(_a, _r, sent)] = [e for e in await _events(portal, "second-factor") if "by e-mail" in e[1]]
    assert sent.startswith("queue entry ") and PERSONAL not in sent
    async with portal.rt.db.read() as session:
        stored = list((await session.execute(select(PortalCode.code_hash))).scalars())
    assert code not in " ".join(s or "" for s in stored), "the code is never stored in clear"


async def test_an_expired_code_is_refused(portal: Portal2FA, client: Client, clock: Any) -> None:
    status, page, path = await client.password()
    assert status == 200 and path == "/connexion/code"
    code = await portal.code()
    clock(utcnow() + dt.timedelta(minutes=10, seconds=1))
    status, page, path = await client.submit("/connexion/code", code=code)
    assert status == 400 and "Ce code a expiré" in _text(page)
    assert (await client.http.get(f"{portal.url}/conversations")).url.path == "/connexion"
    assert ("portal second factor (email code)", "code expired") in [
        (r, s) for _a, r, s in await _events(portal, "login-failure")
    ]
    # the same code, within its 10 minutes, would have been fine: a new login, a new code, in time
    clock(utcnow() + dt.timedelta(minutes=9))
    await client.password()
    fresh = await portal.code(after=1)
    status, _page, path = await client.submit("/connexion/code", code=fresh)
    assert status == 200 and path == "/conversations"


async def test_five_wrong_codes_void_the_code_and_lock_the_account(portal: Portal2FA, client: Client) -> None:
    portal.rt.settings.portal.code_interval = 0  # each login e-mails its own code
    await client.password()
    code = await portal.code()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for left in (4, 3):
        status, page, _path = await client.submit("/connexion/code", code=wrong)
        assert status == 401 and f"Il vous reste {left} essais" in _text(page)
    # a new login does not give new tries: they count across the account's codes
    await client.password()
    code = await portal.code(after=1)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for left in (2, 1):
        status, page, _path = await client.submit("/connexion/code", code=wrong)
        assert status == 401 and f"Il vous reste {left} essai" in _text(page)
    status, page, path = await client.submit("/connexion/code", code=wrong)
    assert status == 429 and "verrouillé" in _text(page) and path == "/connexion/code"
    # the code is void, and the password itself is refused while the account is locked
    assert (await client.submit("/connexion/code", code=code))[0] != 200
    status, page, _path = await client.password()
    assert status == 429 and "verrouillé" in _text(page)
    assert len(portal.mails(LOGIN_SUBJECT)) == 2, "no code is sent to a locked account"
    failures = await _events(portal, "login-failure")
    assert sum("wrong code" in s for _a, _r, s in failures) == 5
    assert any("5 wrong codes" in r and s == "locked" for _a, r, s in failures)
    assert await portal.rt.auth.is_locked(PATIENT)


async def test_no_email_and_no_app_is_refused_with_whom_to_contact(portal: Portal2FA, client: Client) -> None:
    await edit_patient(portal.rt.db, PATIENT_INS, {"email": ""})
    status, page, path = await client.password()
    assert status == 403 and path == "/connexion"
    assert "Contactez votre établissement de santé" in _text(page)
    assert (PATIENT, "refused") in [(a, s) for a, _r, s in await _events(portal, "login-failure")]
    assert portal.sink.messages() == []


async def test_the_json_api_asks_for_the_second_factor_too(portal: Portal2FA) -> None:
    async with aiohttp.ClientSession() as http:
        r = await http.post(
            f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PATIENT_PASSWORD}
        )
        body = await r.json()
        assert r.status == 202 and body["second_factor"] == "email" and "token" not in body
        wrong = await http.post(
            f"{portal.url}/api/login/code", json={"challenge": body["challenge"], "code": "x"}
        )
        assert wrong.status == 401
        code = await portal.code()
        r = await http.post(
            f"{portal.url}/api/login/code", json={"challenge": body["challenge"], "code": code}
        )
        session = await r.json()
        assert r.status == 200 and session["address"] == PATIENT
        headers = {"Authorization": f"Bearer {session['token']}"}
        assert (await http.get(f"{portal.url}/api/conversations", headers=headers)).status == 200
        doc = await (await http.get(f"{portal.url}/api/openapi.json")).json()
        assert "/api/login/code" in doc["paths"] and "202" in doc["paths"]["/api/login"]["post"]["responses"]


# ---------------------------------------------------------------------------------------------- TOTP


async def _login_by_email(page: Page, portal: Portal2FA, after: int = 0, trust: bool = False) -> None:
    await _password_step(page, portal.url)
    await page.get_by_label("Code à 6 chiffres").fill(await portal.code(after=after))
    if trust:
        await page.get_by_label("Faire confiance à cet appareil").check()
    await page.get_by_role("button", name="Valider").click()
    await page.wait_for_url(f"{portal.url}/conversations")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_app_enrolment_then_login_with_its_code_never_twice(
    portal: Portal2FA, browser: Browser, clock: Any
) -> None:
    at = utcnow()
    clock(at)
    page = await browser.new_page(viewport={"width": 320, "height": 700})
    await _login_by_email(page, portal)
    await page.get_by_role("link", name="Paramètres").click()
    await page.get_by_role("link", name="Configurer une application d'authentification").click()
    await page.wait_for_url(f"{portal.url}/parametres/application")
    assert await page.get_by_role("img", name="Code QR à scanner avec votre application").is_visible()
    await _fits(page)
    assert await a11y.check(page, "application d'authentification") == []
    secret = (await page.locator("#cle").inner_text()).replace(" ", "")
    totp = pyotp.TOTP(secret)
    await page.get_by_label("Code à 6 chiffres affiché par l'application").fill(
        f"{(int(totp.at(at)) + 1) % 10**6:06d}"
    )
    await page.get_by_role("button", name="Enregistrer l'application").click()
    assert await page.get_by_text("Code incorrect").is_visible()
    assert (await page.locator("#cle").inner_text()).replace(" ", "") == secret, "the same pending secret"
    await page.get_by_label("Code à 6 chiffres affiché par l'application").fill(totp.at(at))
    await page.get_by_role("button", name="Enregistrer l'application").click()
    assert await page.get_by_text("Votre application d'authentification est enregistrée.").is_visible()
    assert await a11y.check(page, "paramètres, connexion en deux étapes") == []
    async with portal.rt.db.read() as session:
        factor = await session.get(PortalFactor, (await accounts.get_mailbox(portal.rt, PATIENT)).id)
    assert factor is not None and factor.totp_secret is not None
    assert secret.encode() not in factor.totp_secret, "the secret is sealed"
    await page.get_by_role("button", name="Se déconnecter").click()

    # the next login asks the app's code, not an e-mail; the code just used for enrolment is refused
    mails = len(portal.sink.messages())
    await _password_step(page, portal.url)
    assert await page.get_by_text("Ouvrez votre application d'authentification").is_visible()
    assert await a11y.check(page, "code de l'application") == []
    await page.get_by_label("Code à 6 chiffres").fill(totp.at(at))
    await page.get_by_role("button", name="Valider").click()
    assert await page.get_by_text("Code incorrect. Il vous reste 4 essais.").is_visible()
    later = at + dt.timedelta(seconds=30)
    clock(later)
    await page.get_by_label("Code à 6 chiffres").fill(totp.at(later))
    await page.get_by_role("button", name="Valider").click()
    await page.wait_for_url(f"{portal.url}/conversations")
    assert len(portal.sink.messages()) == mails, "no code e-mail when the app is enrolled"

    # replay: the same code once more, in another login at the same instant
    async with aiohttp.ClientSession() as http:
        r = await http.post(
            f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PATIENT_PASSWORD}
        )
        challenge = (await r.json())["challenge"]
        again = {"challenge": challenge, "code": totp.at(later)}
        assert (await http.post(f"{portal.url}/api/login/code", json=again)).status == 401
        fresh = {"challenge": challenge, "code": totp.at(later + dt.timedelta(seconds=30))}
        clock(later + dt.timedelta(seconds=30))
        assert (await http.post(f"{portal.url}/api/login/code", json=fresh)).status == 200
    assert any(s == "enrolled" for _a, _r, s in await _events(portal, "second-factor"))

    # the phone is not at hand: the app step becomes an e-mailed code
    await page.get_by_role("button", name="Se déconnecter").click()
    await _password_step(page, portal.url)
    await page.get_by_role("button", name="Recevoir plutôt un code par courriel").click()
    await page.wait_for_url(f"{portal.url}/connexion/code")
    assert await page.get_by_text(factors.mask(PERSONAL)).is_visible()
    await page.get_by_label("Code à 6 chiffres").fill(await portal.code(after=1))
    await page.get_by_role("button", name="Valider").click()
    await page.wait_for_url(f"{portal.url}/conversations")


async def test_totp_mode_makes_a_patient_enrol_first(tmp_path: Path, pki: Any, sink: Sink) -> None:
    portal = await _start(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path}/caducee.db", pki, sink, second_factor="totp"
    )
    client = Client(portal.url)
    try:
        await client.password()
        _status, page, path = await client.submit("/connexion/code", code=await portal.code())
        assert path == "/parametres/application" and "Votre établissement exige" in _text(page)
        assert (await client.http.get(f"{portal.url}/conversations")).url.path == "/parametres/application"
        session_csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert session_csrf is not None
        async with aiohttp.ClientSession() as api:  # the API holds the same line
            r = await api.post(
                f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PATIENT_PASSWORD}
            )
            challenge = (await r.json())["challenge"]
            r = await api.post(
                f"{portal.url}/api/login/code",
                json={"challenge": challenge, "code": await portal.code(after=1)},
            )
            bearer = {"Authorization": f"Bearer {(await r.json())['token']}"}
            assert (await api.get(f"{portal.url}/api/conversations", headers=bearer)).status == 403
        out = await client.http.post(f"{portal.url}/deconnexion", data={"csrf": session_csrf.group(1)})
        assert out.url.path == "/connexion", "one may sign out before enrolling"
        await client.password()
        page = await (await client.http.get(f"{portal.url}/connexion/code")).text()
        code_page_text = _text(page)
        assert "Un code à 6 chiffres vient d'être envoyé" in code_page_text
        _status, page, path = await client.submit("/connexion/code", code=await portal.code(after=2))
        assert path == "/parametres/application"
        secret = re.search(r'id="cle">([A-Z2-7 ]+)<', page)
        assert secret is not None
        csrf = await client.csrf("/parametres/application")
        code = pyotp.TOTP(secret.group(1).replace(" ", "")).now()
        r = await client.http.post(f"{portal.url}/parametres/application", data={"csrf": csrf, "code": code})
        assert r.status == 200
        assert (await client.http.get(f"{portal.url}/conversations")).url.path == "/conversations"
    finally:
        await client.close()
        await portal.env.close()


# ---------------------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_trusted_device_skips_the_code_until_the_password_is_reset(
    portal: Portal2FA, browser: Browser
) -> None:
    context = await browser.new_context(viewport={"width": 320, "height": 700})
    page = await context.new_page()
    await _login_by_email(page, portal, trust=True)
    [cookie] = [c for c in await context.cookies() if c["name"] == "caducee_appareil"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    await page.get_by_role("button", name="Se déconnecter").click()
    await _password_step(page, portal.url)
    assert page.url == f"{portal.url}/conversations", "the trusted device needs no code"
    assert len(portal.mails(LOGIN_SUBJECT)) == 1
    assert any(s == "trusted device" for _a, _r, s in await _events(portal, "second-factor"))

    # another browser, signed in: the reset ends its session too
    other = await browser.new_page()
    await _login_by_email(other, portal, after=1)

    # forgotten password, from the sign-in page
    reset = await browser.new_page(viewport={"width": 320, "height": 700})
    await reset.goto(f"{portal.url}/connexion")
    await reset.get_by_role("link", name="Mot de passe oublié ?").click()
    await _fits(reset)
    await reset.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
    await reset.get_by_role("button", name="Recevoir un code").click()
    await reset.wait_for_url(f"{portal.url}/mot-de-passe-oublie/code")
    await _fits(reset)
    assert await a11y.check(reset, "nouveau mot de passe") == []
    code = await portal.code(RESET_SUBJECT)
    await reset.get_by_label("Code reçu par courriel").fill(code)
    await reset.get_by_label("Nouveau mot de passe").fill("court")
    await reset.get_by_label("Confirmez le mot de passe").fill("court")
    await reset.locator("input[minlength]").evaluate_all(
        "els => els.forEach(e => e.removeAttribute('minlength'))"
    )
    await reset.get_by_role("button", name="Changer le mot de passe").click()
    assert await reset.get_by_text("au moins 10 caractères").is_visible()
    assert await a11y.check(reset, "nouveau mot de passe, erreur") == []
    await reset.get_by_label("Code reçu par courriel").fill(code)
    await reset.get_by_label("Nouveau mot de passe").fill(NEW_PASSWORD)
    await reset.get_by_label("Confirmez le mot de passe").fill(NEW_PASSWORD)
    await reset.get_by_role("button", name="Changer le mot de passe").click()
    assert await reset.get_by_text("Votre mot de passe est changé").is_visible()

    await other.reload()
    assert other.url == f"{portal.url}/connexion", "sessions end with the reset"
    await page.reload()
    assert page.url == f"{portal.url}/connexion"
    await _password_step(page, portal.url, PATIENT_PASSWORD)
    assert await page.get_by_text("Identifiant ou mot de passe incorrect.").is_visible()
    await _password_step(page, portal.url, NEW_PASSWORD)
    assert page.url == f"{portal.url}/connexion/code", "the trusted device is forgotten"
    assert [s for _a, r, s in await _events(portal, "password-reset") if r == "portal reset"] == [
        "password set, sessions ended"
    ]


async def test_a_reset_never_tells_whether_the_ins_exists(portal: Portal2FA, client: Client) -> None:
    def normal(page: str) -> str:
        return re.sub(r'value="[^"]*"', "", page)

    await accounts.add_mailbox(portal.rt, f"{OTHER_INS.lower()}@{PATIENT_DOMAIN}", "PAT")  # no record
    answers = []
    for ins in (PATIENT_INS, UNKNOWN_INS, OTHER_INS):
        c = Client(portal.url)
        try:
            status, page, path = await c.submit("/mot-de-passe-oublie", ins=ins)
            answers.append((status, path, normal(page)))
            status, page, _path = await c.submit(
                "/mot-de-passe-oublie/code",
                code="000000",
                mot_de_passe=NEW_PASSWORD,
                confirmation=NEW_PASSWORD,
            )
            answers.append((status, "", normal(page)))
        finally:
            await c.close()
    assert answers[0] == answers[2] == answers[4] and answers[0][1] == "/mot-de-passe-oublie/code"
    assert answers[1] == answers[3] == answers[5] and answers[1][0] == 401
    await wait_for(lambda: asyncio.sleep(0, portal.mails(RESET_SUBJECT)))
    assert len(portal.mails(RESET_SUBJECT)) == 1, "only the known patient with an address gets a code"
    outcomes = [s for _a, _r, s in await _events(portal, "password-reset")]
    assert outcomes[0].startswith("queue entry ")
    assert outcomes[1:] == ["unknown INS: nothing sent", "no personal e-mail or no relay: nothing sent"]
    # an unknown INS locks out the same way after 5 wrong codes
    status, page, _path = await client.submit("/mot-de-passe-oublie", ins=UNKNOWN_INS)
    for _ in range(4):
        status, page, _path = await client.submit(
            "/mot-de-passe-oublie/code", code="123456", mot_de_passe=NEW_PASSWORD, confirmation=NEW_PASSWORD
        )
    assert status == 429 and "verrouillé" in _text(page)


# ---------------------------------------------------------------------------------------------- invite --send


async def test_invite_send_mails_the_activation_link(portal: Portal2FA, logging_kept: None) -> None:
    def run(*args: str) -> Any:
        return CliRunner().invoke(caducee_cli.main, ["--config", str(portal.config), *args])

    other = f"{OTHER_INS.lower()}@{PATIENT_DOMAIN}"
    await accounts.add_mailbox(portal.rt, other, "PAT")
    await add_patient(portal.rt.db, make_record(OTHER_INS, "Girard", "Emilie", "F", "1935-03-14"))
    refused = await asyncio.to_thread(run, "patient", "invite", OTHER_INS, "--send")
    assert refused.exit_code == 1 and "no personal e-mail on record" in refused.output
    assert portal.sink.messages() == []

    result = await asyncio.to_thread(run, "patient", "invite", PATIENT_INS, "--send")
    assert result.exit_code == 0, result.output
    assert "e-mailed to the patient's personal address" in result.output
    [mail] = await wait_for(lambda: asyncio.sleep(0, portal.mails("Activez votre messagerie de santé")))
    link = re.search(r"https://portail\.a\.mssante\.test/activation\?code=([a-z-]+)", mail.get_content())
    assert link is not None and link.group(1) not in result.output, "the code is sent, not shown"
    assert mail["From"] == "no-reply@mail.a.mssante.test"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        page = await (await http.get(f"{portal.url}/activation?code={link.group(1)}")).text()
        assert f'value="{link.group(1)}"' in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        form = {
            "csrf": csrf.group(1),
            "ins": PATIENT_INS,
            "code": link.group(1),
            "mot_de_passe": NEW_PASSWORD,
            "confirmation": NEW_PASSWORD,
        }
        r = await http.post(f"{portal.url}/activation", data=form)
        assert r.status == 200 and "Votre compte est activé" in await r.text()
    assert any("link e-mailed (queue entry" in s for _a, _r, s in await _events(portal, "admin"))


async def test_the_trusted_device_cookie_is_secure_behind_tls(portal: Portal2FA, clock: Any) -> None:
    """With ``secure_cookies`` (the portal behind HTTPS) the cookie is ``__Host-``, Secure, HttpOnly,
    SameSite=Strict, for ``trust_device`` days; it opens nothing for another mailbox or once expired."""
    from aiohttp import web as aioweb

    rt = portal.rt
    rt.settings.portal.secure_cookies = True
    mailbox_id = (await accounts.get_mailbox(rt, PATIENT)).id
    value = await factors.device_cookie(rt, mailbox_id)
    resp = aioweb.Response()
    web._set_cookie(resp, rt, web.DEVICE, value, rt.settings.portal.trust_device * 86400)
    header = resp.cookies.output()
    assert header.startswith("Set-Cookie: __Host-caducee_appareil=") and "Path=/" in header
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", f"Max-Age={30 * 86400}"):
        assert attribute in header
    assert await factors.trusted(rt, mailbox_id, value)
    assert not await factors.trusted(rt, mailbox_id + 1, value)
    assert not await factors.trusted(rt, mailbox_id, value[:-2] + "xx")
    clock(utcnow() + dt.timedelta(days=31))
    assert not await factors.trusted(rt, mailbox_id, value)


async def test_a_patients_password_alone_opens_only_the_portal(portal: Portal2FA) -> None:
    """Found by a new user: with the second factor on, the patient's password opened submission and
    the API (their whole mailbox) with no code. It now opens only the portal, where the code follows;
    elsewhere it is refused like a wrong password, and audited with the reason."""

    def submit_login() -> int:
        with smtplib.SMTP("127.0.0.1", portal.env.ports["submission"], timeout=10) as c:
            c.starttls(context=portal.env.user())
            try:
                return c.login(PATIENT, PATIENT_PASSWORD)[0]
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code

    assert await asyncio.to_thread(submit_login) == 535
    basic = base64.b64encode(f"{PATIENT}:{PATIENT_PASSWORD}".encode()).decode()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{portal.url}/api/v1/mailboxes/{PATIENT}/messages", headers={"Authorization": f"Basic {basic}"}
        ) as r,
    ):
        assert r.status == 401
    async with portal.rt.db.read() as session:
        reasons = (
            await session.execute(select(AuditEvent.response).where(AuditEvent.action == "login-failure"))
        ).scalars()
        # smtplib tries PLAIN then LOGIN: each attempt is refused and audited, then the API's
        assert list(reasons).count("patients sign in through the portal (second factor)") >= 2
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PATIENT_PASSWORD}) as r,
    ):
        assert r.status == 202  # the portal takes the password, then asks the code


# ---------------------------------------------------------------------------------------------- in chromium


async def _code_step(page: Page, code: str) -> None:
    await page.get_by_label("Code à 6 chiffres").fill(code)
    await page.get_by_role("button", name="Valider").click()
    await page.wait_for_load_state()


async def test_in_chromium_an_expired_code_is_refused_and_a_new_login_sends_another(
    portal: Portal2FA, browser: Browser, clock: Any
) -> None:
    """What the patient sees when the code is too old: a message on the code page itself (read out,
    at 320 px), no session; signing in again e-mails a fresh code that opens the portal."""
    page = await browser.new_page(viewport={"width": 320, "height": 700})
    await _password_step(page, portal.url)
    code = await portal.code()
    clock(utcnow() + dt.timedelta(minutes=10, seconds=1))
    await _code_step(page, code)
    assert await page.get_by_text("Ce code a expiré").is_visible()
    await _fits(page)
    assert await a11y.check(page, "code expiré") == []
    await page.goto(f"{portal.url}/conversations")
    assert page.url == f"{portal.url}/connexion"
    portal.rt.settings.portal.code_interval = 0
    await _password_step(page, portal.url)
    await _code_step(page, await portal.code(after=1))
    assert page.url == f"{portal.url}/conversations"


async def test_in_chromium_five_wrong_codes_lock_the_account(portal: Portal2FA, browser: Browser) -> None:
    """Each wrong code says how many tries are left; the fifth locks the account, which the password
    page then says too, and the right code no longer opens anything."""
    page = await browser.new_page(viewport={"width": 320, "height": 700})
    await _password_step(page, portal.url)
    code = await portal.code()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for left in ("4 essais", "3 essais", "2 essais", "1 essai"):
        await _code_step(page, wrong)
        assert await page.get_by_text(f"Il vous reste {left}").is_visible()
    await _code_step(page, wrong)
    assert await page.get_by_text("verrouillé").first.is_visible()
    await _fits(page)
    assert await a11y.check(page, "compte verrouillé") == []
    await _password_step(page, portal.url)
    assert await page.get_by_text("verrouillé").first.is_visible()
    await page.goto(f"{portal.url}/conversations")
    assert page.url == f"{portal.url}/connexion"
    assert await portal.rt.auth.is_locked(PATIENT)
