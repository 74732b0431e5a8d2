"""The portal in a real browser (Debian's chromium, headless): login, read, reply, closed, hostile HTML.

A normal run writes nothing into the tree. The README's screenshot (``docs/portal-conversation.png``) is
refreshed with ``CADUCEE_SCREENSHOTS=docs .venv/bin/pytest tests/portal/test_browser.py``: when
``CADUCEE_SCREENSHOTS`` names a directory, ``portal-conversation.png`` is written there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page

from tests.portal.conftest import PASSWORD, Portal
from tests.portal.helpers import DOCTOR, PATIENT, PATIENT_INS, build, send


async def _login(page: Page, url: str) -> None:
    await page.goto(f"{url}/connexion")
    await page.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{url}/conversations")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_login_read_reply_and_closed(portal: Portal, browser: Browser) -> None:
    first = build(
        DOCTOR, PATIENT, "Résultats d'analyse", "Bonjour,\nvos résultats sont normaux.", name="Dr Martin"
    )
    await send(portal.rt, first)
    page = await browser.new_page(viewport={"width": 420, "height": 780})
    await _login(page, portal.url)
    assert await page.get_by_role("heading", name="DR Claire MARTIN").is_visible()
    assert await page.get_by_text("Médecin, Médecine générale").is_visible()
    assert await page.get_by_text("1 non lu").first.is_visible()
    await page.get_by_role("link", name="Résultats d'analyse").click()
    assert await page.get_by_text("vos résultats sont normaux.").is_visible()
    await page.get_by_label("Votre message").fill("Merci docteur, bonne journée.")
    await page.get_by_role("button", name="Envoyer").click()
    await page.wait_for_load_state()
    assert await page.get_by_text("Merci docteur, bonne journée.").is_visible()
    shots = os.environ.get("CADUCEE_SCREENSHOTS")
    if shots:
        await page.screenshot(path=str(Path(shots) / "portal-conversation.png"), full_page=True)
    await send(portal.rt, build(DOCTOR, PATIENT, "[FIN]", "Au revoir.", in_reply_to=first["Message-ID"]))
    await page.reload()
    assert await page.get_by_text("Conversation close.").is_visible()
    assert await page.get_by_label("Votre message").count() == 0
    await page.goto(f"{portal.url}/conversations")
    assert await page.get_by_text("Close", exact=True).is_visible()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_hostile_html_never_runs(portal: Portal, browser: Browser) -> None:
    msg = build(DOCTOR, PATIENT, '<img src=x onerror="alert(1)">', "x")
    msg.set_content(
        '<script>alert("script")</script><img src="x" onerror="alert(2)">'
        '<a href="javascript:alert(3)">Cliquez ici</a><p>Texte visible</p>',
        subtype="html",
    )
    await send(portal.rt, msg)
    page = await browser.new_page()
    dialogs: list[str] = []
    console: list[str] = []
    requests: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    await _login(page, portal.url)
    await page.get_by_role("link", name='<img src=x onerror="alert(1)">').click()
    assert await page.get_by_text("Texte visible").is_visible()
    assert await page.get_by_role("link", name="Cliquez ici").count() == 0
    assert await page.locator("script").count() == 0
    assert await page.locator("main img").count() == 0
    assert await page.get_by_role("heading", name='<img src=x onerror="alert(1)">').is_visible()
    await page.wait_for_timeout(300)
    assert dialogs == [] and console == []
    assert all(u.startswith(portal.url) for u in requests)
