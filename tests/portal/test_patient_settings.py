"""The patient turns new-message alerts off and on in the portal (``/parametres``), CSRF-protected and
audited, and deliveries then queue an alert (flagged for the relay) or none: with aiohttp and in a
headless chromium."""

from __future__ import annotations

import email
import email.policy
import re

import aiohttp
import jsonschema
import pytest
from playwright.async_api import Browser
from sqlalchemy import select

from directory.models import Patient
from directory.patients import edit_patient
from mailserver.db.models import AuditEvent
from mailserver.delivery import Delivery
from mailserver.policy import local_recipient
from mailserver.portal.api import OPENAPI
from mailserver.queue.models import QueueMessage, QueueRecipient
from tests.portal.conftest import PASSWORD, Portal
from tests.portal.helpers import DOCTOR, PATIENT, PATIENT_INS, build, send

PERSONAL = "pierrette.petit@perso.test"


@pytest.fixture
async def alerting(portal: Portal) -> Portal:
    """The portal's patient with a personal address and a relay configured (no queue worker runs)."""
    portal.rt.settings.relay.host = "127.0.0.1"
    portal.rt.settings.patients.alert_interval = 0
    await edit_patient(portal.rt.db, PATIENT_INS, {"email": PERSONAL})
    return portal


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _enabled(portal: Portal) -> bool:
    async with portal.rt.db.read() as session:
        patient = await session.get(Patient, PATIENT_INS)
    assert patient is not None
    return patient.alerts_enabled


async def _alerts_queued(portal: Portal) -> list[tuple[bool, str]]:
    async with portal.rt.db.read() as session:
        rows = await session.execute(
            select(QueueMessage.relay, QueueRecipient.address).join(
                QueueRecipient, QueueRecipient.message_id == QueueMessage.id
            )
        )
        return [(bool(relay), address) for relay, address in rows]


async def test_settings_page_turns_alerts_off_and_on(alerting: Portal) -> None:
    portal = alerting
    async with _client() as http:
        r = await http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD})
        assert r.status == 200
        listing = await (await http.get(f"{portal.url}/conversations")).text()
        assert 'href="/parametres"' in listing
        page = await (await http.get(f"{portal.url}/parametres")).text()
        assert PERSONAL in page and re.search(r'id="alertes"[^>]*checked', page)
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None

        refused = await http.post(f"{portal.url}/parametres", data={})
        assert refused.status == 403 and await _enabled(portal)

        r = await http.post(f"{portal.url}/parametres", data={"csrf": token.group(1)})
        assert r.status == 200 and "Les alertes sont désactivées." in await r.text()
        assert not await _enabled(portal)
        await send(portal.rt, build(DOCTOR, PATIENT, "Résultats"))
        assert await _alerts_queued(portal) == []

        r = await http.post(f"{portal.url}/parametres", data={"csrf": token.group(1), "alertes": "oui"})
        assert r.status == 200 and "Les alertes sont activées." in await r.text()
        assert await _enabled(portal)
        await send(portal.rt, build(DOCTOR, PATIENT, "Suite"))
        assert await _alerts_queued(portal) == [(True, PERSONAL)]
    async with portal.rt.db.read() as session:
        actions = list(
            (
                await session.execute(
                    select(AuditEvent.action, AuditEvent.request)
                    .where(AuditEvent.action.like("patient-alert%"))
                    .order_by(AuditEvent.id)
                )
            ).all()
        )
    assert [a for a, _ in actions] == ["patient-alert-settings", "patient-alert-settings", "patient-alert"]
    assert "alerts off" in actions[0][1] and "alerts on" in actions[1][1]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_browser_turns_alerts_off(alerting: Portal, browser: Browser) -> None:
    portal = alerting
    page = await browser.new_page(viewport={"width": 420, "height": 780})
    await page.goto(f"{portal.url}/connexion")
    await page.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{portal.url}/conversations")
    await page.get_by_role("link", name="Paramètres").click()
    await page.wait_for_url(f"{portal.url}/parametres")
    box = page.get_by_label("Me prévenir par courriel de chaque nouveau message")
    assert await box.is_checked()
    await box.uncheck()
    await page.get_by_role("button", name="Enregistrer").click()
    await page.wait_for_load_state()
    assert await page.get_by_text("Les alertes sont désactivées.").is_visible()
    assert not await page.get_by_label("Me prévenir par courriel de chaque nouveau message").is_checked()
    assert not await _enabled(portal)


async def test_a_report_with_an_empty_sender_gives_no_alert(alerting: Portal) -> None:
    """A delivery report (null reverse-path) to the patient is the server's own, not someone writing."""
    rt = alerting.rt
    delivery = Delivery(rt, "", source="dsn")
    async with rt.db.read() as session:
        target = await local_recipient(session, PATIENT)
    assert target is not None
    delivery.add_local(target)
    await delivery.body(bytes(build("mailer-daemon@a.mssante.test", PATIENT, "Delivery Status Notification")))
    assert PATIENT in (await delivery.commit()).delivered
    assert await _alerts_queued(alerting) == []
    await send(rt, build(DOCTOR, PATIENT, "Résultats"))
    assert await _alerts_queued(alerting) == [(True, PERSONAL)]


async def test_json_api_reads_and_sets_the_switch(alerting: Portal) -> None:
    portal = alerting
    async with _client() as http:
        r = await http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD})
        csrf = {"X-CSRF-Token": (await r.json())["csrf_token"]}
        r = await http.get(f"{portal.url}/api/settings")
        assert r.status == 200
        assert await r.json() == {"alerts_enabled": True, "alert_email": PERSONAL, "phone": None}
        url = f"{portal.url}/api/settings"
        assert (await http.post(url, json={"alerts_enabled": False})).status == 403
        assert (await http.post(url, json={"alerts_enabled": "non"}, headers=csrf)).status == 400
        assert await _enabled(portal)
        r = await http.post(url, json={"alerts_enabled": False}, headers=csrf)
        assert r.status == 200 and (await r.json())["alerts_enabled"] is False
        assert not await _enabled(portal)
        doc = await (await http.get(f"{portal.url}/api/openapi.json")).json()
        assert set(doc["paths"]["/api/settings"]) == {"get", "post"}
    async with _client() as anonymous:
        assert (await anonymous.get(f"{portal.url}/api/settings")).status == 401


NEW_PERSONAL = "pierrette.nouvelle@perso.test"


async def _contact(portal: Portal) -> tuple[str | None, str | None]:
    async with portal.rt.db.read() as session:
        patient = await session.get(Patient, PATIENT_INS)
    assert patient is not None
    return patient.email, patient.phone


async def _audit(portal: Portal, action: str) -> list[tuple[str, str]]:
    async with portal.rt.db.read() as session:
        rows = await session.execute(
            select(AuditEvent.request, AuditEvent.response)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        )
        return [(r, s) for r, s in rows]


def _valid(value: object, schema: str) -> None:
    """``value`` conforms to the portal's OpenAPI schema ``schema`` (JSON Schema 2020-12)."""
    jsonschema.Draft202012Validator(OPENAPI["components"]["schemas"][schema]).validate(value)


async def test_json_api_changes_the_alert_address_with_the_current_password(alerting: Portal) -> None:
    """The patient's own API sets the personal e-mail (alerts and e-mailed login codes) and phone: only
    with the current password, checked as a login and counted; normalised as ``patient edit`` does;
    audited without the values; the former address is told; the next alert goes to the new one."""
    portal = alerting
    url = f"{portal.url}/api/settings"
    async with _client() as http:
        r = await http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD})
        login = await r.json()
        csrf = {"X-CSRF-Token": login["csrf_token"]}
        change = {"alert_email": "Pierrette.Nouvelle@Perso.test", "phone": "06 12 34 56 78"}
        _valid(change | {"current_password": PASSWORD}, "SettingsChange")

        assert (await http.post(url, json=change | {"current_password": PASSWORD})).status == 403, "CSRF"
        r = await http.post(url, json=change, headers=csrf)
        assert r.status == 400 and "mot de passe actuel" in (await r.json())["error"]
        r = await http.post(url, json=change | {"current_password": "pas le bon"}, headers=csrf)
        assert r.status == 403 and (await r.json())["error"] == "Mot de passe actuel incorrect."
        bad = {"alert_email": "pas une adresse", "current_password": PASSWORD}
        assert (await http.post(url, json=bad, headers=csrf)).status == 400
        bad = {"phone": "12", "current_password": PASSWORD}
        assert (await http.post(url, json=bad, headers=csrf)).status == 400
        assert (await http.post(url, json={"alert_email": 3}, headers=csrf)).status == 400
        assert (await http.post(url, json={}, headers=csrf)).status == 400
        assert await _contact(portal) == (PERSONAL, None)

        r = await http.post(url, json=change | {"current_password": PASSWORD}, headers=csrf)
        body = await r.json()
        assert r.status == 200, body
        assert body == {"alerts_enabled": True, "alert_email": NEW_PERSONAL, "phone": "+33612345678"}
        _valid(body, "Settings")
        assert await _contact(portal) == (NEW_PERSONAL, "+33612345678")
        # the same details sent back (a client saving the whole object) need no password
        r = await http.post(url, json=body | {"alerts_enabled": False}, headers=csrf)
        assert r.status == 200 and (await r.json())["alerts_enabled"] is False
        bearer = {"Authorization": f"Bearer {login['token']}"}  # a phone app: no CSRF token needed
        r = await http.post(url, json={"alerts_enabled": True}, headers=bearer)
        assert r.status == 200
        _valid(await (await http.get(url)).json(), "Settings")

    [changed] = await _audit(portal, "patient-contact")
    assert changed[0] == "api alert e-mail changed, phone changed"
    assert changed[1].startswith("ok, former address told (queue entry ")
    assert not {PERSONAL, NEW_PERSONAL, "+33612345678"} & set(" ".join(changed).split())
    failures = await _audit(portal, "login-failure")
    assert [r for r, _s in failures] == ["portal-confirm login (password)"], "the wrong one was counted"
    async with portal.rt.db.read() as session:
        [(blob_id, relay)] = (
            await session.execute(
                select(QueueMessage.blob_id, QueueMessage.relay)
                .join(QueueRecipient, QueueRecipient.message_id == QueueMessage.id)
                .where(QueueRecipient.address == PERSONAL)
            )
        ).all()
    notice = email.message_from_bytes(await portal.rt.store.read_blob(blob_id), policy=email.policy.default)
    assert (
        relay and notice["To"] == PERSONAL and notice["Subject"] == "Votre adresse de contact a été modifiée"
    )
    assert NEW_PERSONAL not in notice.as_string() and "contactez" in notice.get_content()

    await send(portal.rt, build(DOCTOR, PATIENT, "Résultats"))
    assert (True, NEW_PERSONAL) in await _alerts_queued(portal), "alerts now go to the new address"

    async with _client() as http:  # removing the address, then the phone
        r = await http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD})
        csrf = {"X-CSRF-Token": (await r.json())["csrf_token"]}
        r = await http.post(url, json={"alert_email": None, "current_password": PASSWORD}, headers=csrf)
        assert r.status == 200 and (await r.json())["alert_email"] is None
        r = await http.post(url, json={"phone": "", "current_password": PASSWORD}, headers=csrf)
        assert r.status == 200 and (await r.json())["phone"] is None
    assert await _contact(portal) == (None, None)
    assert [r for r, _s in await _audit(portal, "patient-contact")][1:] == [
        "api alert e-mail removed",
        "api phone removed",
    ]


async def test_wrong_current_passwords_lock_the_account(alerting: Portal) -> None:
    """The password asked for a change of address is guessed no more than the login's: after
    ``[auth] max_failures`` wrong ones, even the right one is refused (429), and so is a new login."""
    portal = alerting
    limit = portal.rt.settings.auth.max_failures
    async with _client() as http:
        r = await http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD})
        csrf = {"X-CSRF-Token": (await r.json())["csrf_token"]}
        url = f"{portal.url}/api/settings"
        for _ in range(limit):
            wrong = {"alert_email": NEW_PERSONAL, "current_password": "devine"}
            assert (await http.post(url, json=wrong, headers=csrf)).status == 403
        right = {"alert_email": NEW_PERSONAL, "current_password": PASSWORD}
        r = await http.post(url, json=right, headers=csrf)
        assert r.status == 429 and "verrouillé" in (await r.json())["error"]
        r = await http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD})
        assert r.status == 429
    assert await _contact(portal) == (PERSONAL, None)
    assert await _audit(portal, "patient-contact") == []
    assert await portal.rt.auth.is_locked(PATIENT)
