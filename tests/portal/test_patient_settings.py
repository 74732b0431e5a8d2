"""The patient turns new-message alerts off and on in the portal (``/parametres``), CSRF-protected and
audited, and deliveries then queue an alert (flagged for the relay) or none: with aiohttp and in a
headless chromium."""

from __future__ import annotations

import re

import aiohttp
import pytest
from playwright.async_api import Browser
from sqlalchemy import select

from directory.models import Patient
from directory.patients import edit_patient
from mailserver.db.models import AuditEvent
from mailserver.delivery import Delivery
from mailserver.policy import local_recipient
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
        assert r.status == 200 and await r.json() == {"alerts_enabled": True, "alert_email": PERSONAL}
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
