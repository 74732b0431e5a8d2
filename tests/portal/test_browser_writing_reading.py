"""Issue 18 in chromium: a first message to a pharmacy (read by the pharmacy with imaplib), a tampered
form refused, new/read marks, and image previews that stay safe."""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page
from sqlalchemy import select

from mailserver import accounts
from mailserver.db.models import AuditEvent
from mailserver.imap import server
from mailserver.portal.http import CSP
from tests.imap.helpers import tls_client
from tests.portal.conftest import Portal, login
from tests.portal.helpers import DOCTOR, NURSE, PATIENT, PHARMACY, build, send, tiny_png

IMAP_PASSWORD = "Pharmacie-Imap-2026"


@pytest.fixture
async def imaps(portal: Portal, pki: Any) -> AsyncIterator[int]:
    """The IMAPS listener of the portal's runtime; the pharmacy can log in."""
    rt = portal.rt
    a = pki.tls["a.mssante.test"]
    rt.settings.tls.cert, rt.settings.tls.key = str(a.chain_path), str(a.key_path)
    rt.settings.tls.peer_ca = str(pki.peer_ca)
    rt.settings.imap.listen, rt.settings.imap.tls_listen = [], ["127.0.0.1:0"]
    await accounts.set_password(rt, PHARMACY, IMAP_PASSWORD)
    listeners = await server.start(rt)
    try:
        yield listeners[0].port
    finally:
        for listener in listeners:
            await listener.close()


def _pharmacy_inbox(port: int, pki: Any) -> list[bytes]:
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_client(pki), timeout=10) as c:
        c.login(PHARMACY, IMAP_PASSWORD)
        c.select("INBOX", readonly=True)
        _typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        return [part[1] for part in data if isinstance(part, tuple)]


async def _audit(portal: Portal, action: str) -> list[tuple[str, str, str]]:
    async with portal.rt.db.read() as session:
        rows = await session.execute(
            select(AuditEvent.actor, AuditEvent.request, AuditEvent.response)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        )
        return [(a, r, s) for a, r, s in rows]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_patient_writes_first_to_a_pharmacy(
    portal: Portal, browser: Browser, pki: Any, imaps: int
) -> None:
    page = await browser.new_page(viewport={"width": 360, "height": 780})
    await login(page, portal.url)
    await page.get_by_role("link", name="Nouveau message").first.click()
    await page.wait_for_url(f"{portal.url}/nouveau-message")
    options = await page.get_by_label("Destinataire", exact=True).locator("option").all_inner_texts()
    assert options == ["Pharmacie du Port"]  # not the doctor, not the ORG without the flag
    await page.get_by_label("Destinataire", exact=True).select_option(label="Pharmacie du Port")
    await page.get_by_label("Objet").fill("Renouvellement d'ordonnance")
    await page.get_by_label("Votre message").fill("Bonjour,\nvoici mon ordonnance. Merci !")
    await page.get_by_label("Pièces jointes").set_input_files(
        [{"name": "ordonnance.png", "mimeType": "image/png", "buffer": tiny_png()}]
    )
    await page.get_by_role("button", name="Envoyer").click()
    await page.wait_for_url(re.compile(r".*/conversations/[0-9a-f]{24}\?envoye=1#dernier$"))
    assert await page.get_by_role("status").filter(has_text="Votre message a été envoyé.").is_visible()
    assert await page.get_by_role("heading", name="Renouvellement d'ordonnance").is_visible()
    assert await page.get_by_text("voici mon ordonnance. Merci !").is_visible()
    [raw] = await asyncio.to_thread(_pharmacy_inbox, imaps, pki)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Renouvellement d'ordonnance"
    assert PATIENT in msg["From"] and PHARMACY in msg["To"]
    assert "voici mon ordonnance. Merci !" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    [png] = list(msg.iter_attachments())
    assert (png.get_filename(), png.get_content()) == ("ordonnance.png", tiny_png())
    [(actor, request, response)] = await _audit(portal, "send")
    assert actor == PATIENT and request.startswith(f"portal first message to <{PHARMACY}> in conversation ")
    assert response == "delivered"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("to", [NURSE, DOCTOR])
async def test_tampered_recipient_is_refused(portal: Portal, browser: Browser, to: str) -> None:
    page = await browser.new_page()
    await login(page, portal.url)
    await page.goto(f"{portal.url}/nouveau-message")
    await page.get_by_label("Destinataire", exact=True).evaluate(
        "(s, to) => { s.options[0].value = to; }", to
    )
    await page.get_by_label("Objet").fill("Bonjour")
    await page.get_by_label("Votre message").fill("Je voudrais un rendez-vous.")
    async with page.expect_response(f"{portal.url}/nouveau-message") as answer:
        await page.get_by_role("button", name="Envoyer").click()
    assert (await answer.value).status == 403
    alert = page.get_by_role("alert")
    assert "seul un professionnel peut commencer une conversation" in await alert.inner_text()
    assert await page.get_by_label("Objet").input_value() == "Bonjour"  # what was typed is kept
    [(actor, request, response)] = await _audit(portal, "portal-refused")
    assert (actor, request) == (PATIENT, f"portal first message to <{to}>")
    assert response.startswith(f"550 5.7.1 <{to}>: no open conversation")
    assert await _audit(portal, "send") == []


async def _badges(page: Page) -> list[str]:
    return await page.locator("main .badge, main .lu").all_inner_texts()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_new_and_read_marks(portal: Portal, browser: Browser) -> None:
    first = build(DOCTOR, PATIENT, "Suivi", "Premier message.", name="Dr Martin")
    await send(portal.rt, first)
    await send(
        portal.rt, build(DOCTOR, PATIENT, "Re: Suivi", "Deuxième message.", in_reply_to=first["Message-ID"])
    )
    page = await browser.new_page()
    await login(page, portal.url)
    assert await page.get_by_role("status").inner_text() == "2 messages non lus."
    assert await _badges(page) == ["2 non lus", "2 non lus"]  # the professional's group, the conversation
    assert await page.locator("li.nouveau").count() == 1
    await page.get_by_role("link", name="Suivi").click()
    assert await _badges(page) == ["Nouveau", "Nouveau"]  # shown as new the first time they are opened
    await page.reload()
    assert await _badges(page) == ["Lu", "Lu"]  # opening marked them read
    await page.goto(f"{portal.url}/conversations")
    assert await _badges(page) == ["Tout lu"]
    assert await page.locator("li.nouveau").count() == 0
    await send(portal.rt, build(DOCTOR, PATIENT, "Re: Suivi", "Troisième.", in_reply_to=first["Message-ID"]))
    await page.reload()
    assert await _badges(page) == ["1 non lu", "1 non lu"]
    await page.get_by_role("link", name="Suivi").click()
    assert await _badges(page) == ["Lu", "Lu", "Nouveau"]


SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
HTML_AS_PNG = b"<html><script>alert(2)</script></html>"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_image_previews_are_inline_and_safe(portal: Portal, browser: Browser) -> None:
    msg = build(DOCTOR, PATIENT, "Photos", "Voici les images.", name="Dr Martin")
    msg.add_attachment(tiny_png(), maintype="image", subtype="png", filename="plaie.png")
    msg.add_attachment(SVG, maintype="image", subtype="svg+xml", filename="schema.svg")
    msg.add_attachment(HTML_AS_PNG, maintype="image", subtype="png", filename="faux.png")
    msg.add_attachment(b"%PDF-1.4\n", maintype="application", subtype="pdf", filename="compte-rendu.pdf")
    await send(portal.rt, msg)
    page = await browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await login(page, portal.url)
    async with page.expect_response(re.compile(r".*/conversations/[0-9a-f]+$")) as answer:
        await page.get_by_role("link", name="Photos").click()
    headers = (await answer.value).headers
    assert headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in CSP and "img-src 'self'" in CSP
    items = await page.locator("ul.pj li").all_inner_texts()
    assert [" ".join(i.split()) for i in items] == [
        "plaie.png (Image PNG, 69 o)",
        "schema.svg (Image SVG, 71 o)",
        "faux.png (Image PNG, 38 o)",
        "compte-rendu.pdf (Document PDF, 9 o)",
    ]
    [img] = await page.locator("main img").all()  # only the true PNG previews
    assert await img.get_attribute("alt") == "Aperçu de l'image plaie.png"
    assert await img.evaluate("i => i.complete && i.naturalWidth") == 1  # loaded under the strict CSP
    src = await img.get_attribute("src")
    assert src is not None and re.fullmatch(r"/messages/\d+/apercus/1", src)
    base = portal.url + src.rsplit("/", 1)[0]

    async def fetch(n: int, kind: str = "apercus") -> tuple[dict[str, str], bytes]:
        resp = await page.request.get(f"{base.replace('apercus', kind)}/{n}")
        assert resp.status == 200
        return resp.headers, await resp.body()

    h, body = await fetch(1)
    assert (h["content-type"], body) == ("image/png", tiny_png())
    assert h["content-disposition"].startswith('inline; filename="plaie.png"')
    assert h["x-content-type-options"] == "nosniff"
    assert h["content-security-policy"] == "default-src 'none'; sandbox"
    for n in (2, 3, 4):  # SVG, HTML labelled PNG, PDF: never inline, even at the preview address
        h, _body = await fetch(n)
        assert h["content-disposition"].startswith("attachment;"), n
        assert h["content-type"] == "application/octet-stream" and h["x-content-type-options"] == "nosniff"
    h, body = await fetch(2, "pieces-jointes")
    assert h["content-disposition"].startswith('attachment; filename="schema.svg"') and body == SVG
    await page.wait_for_timeout(200)
    assert dialogs == []
