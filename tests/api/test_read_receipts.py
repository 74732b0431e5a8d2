"""MDN read receipts (RFC 8098, issue 17): the portal asks the patient before sending one, sends a
``displayed`` MDN once on yes and never asks again on no; the API shows the receipts per recipient,
whether they come from this portal or from a peer over SMTP. Headless chromium for the patient,
imaplib for the professional's mailbox, Python's ``email`` to parse the reports."""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from playwright.async_api import Browser, Page
from sqlalchemy import select

from directory.patients import add_patient, make_record
from mailserver import accounts, mdn
from mailserver.api_models import APIMessage
from mailserver.headers import HeaderView
from mailserver.portal import service, web
from tests.api.conftest import API, DPI
from tests.imap.conftest import MARTIN, PASSWORD
from tests.imap.helpers import tls_client
from tests.portal.helpers import build, send
from tests.smtp.conftest import SMTPEnv, start_env, wait_for

PATIENT_INS = "262112B82955335"
PATIENT = f"{PATIENT_INS.lower()}@patient.a.mssante.test"
PATIENT_PASSWORD = "correct horse battery"


@pytest.fixture
async def portal(api: API) -> AsyncIterator[API]:
    """The API's environment with an activated patient and DPI's application password for IMAP."""
    await accounts.add_mailbox(api.rt, PATIENT, "PAT", display_name="PETIT Pierre")
    await add_patient(api.rt.db, make_record(PATIENT_INS, "Petit", "Pierrette", "F", "1962-11-23"))
    _address, code, _expires = await service.invite(api.rt, PATIENT_INS)
    await service.activate(api.rt, PATIENT_INS, code, PATIENT_PASSWORD, "127.0.0.1")
    yield api


def inbox(api: API, user: str, password: str) -> list[EmailMessage]:
    """``user``'s INBOX read with imaplib over implicit TLS."""
    conn = imaplib.IMAP4_SSL("127.0.0.1", api.imap.tls_port, ssl_context=tls_client(api.imap.pki), timeout=10)
    try:
        conn.login(user, password)
        conn.select("INBOX", readonly=True)
        _typ, [ids] = conn.search(None, "ALL")
        out = []
        for n in ids.split():
            _typ, data = conn.fetch(n, "(RFC822)")
            raw = data[0][1]
            assert isinstance(raw, bytes)
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            out.append(parsed)
        return out
    finally:
        conn.logout()


def disposition(report: EmailMessage) -> dict[str, str]:
    """The fields of the report's message/disposition-notification part (RFC 8098 §3)."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "disposition-notification"
    text, notification, headers = report.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert notification.get_content_type() == "message/disposition-notification"
    assert headers.get_content_type() == "text/rfc822-headers"
    [fields] = notification.get_payload()
    return {k: " ".join(str(v).split()) for k, v in fields.items()}


async def login(page: Page, url: str) -> None:
    await page.goto(f"{url}/connexion")
    await page.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
    await page.get_by_label("Mot de passe").fill(PATIENT_PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{url}/conversations")


async def api_state(api: API, public_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{api.url}/api/v1/messages/{public_id}", headers=api.auth()) as r,
    ):
        assert r.status == 200
        return {x["address"]: x for x in (await r.json())["recipients"]}


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_patient_accepts_and_the_mdn_reaches_the_api_sender(portal: API, browser: Browser) -> None:
    api = portal
    body = {
        "from": DPI,
        "to": [PATIENT],
        "subject": "Résultats d'analyse",
        "text": "Bonjour,\nvos résultats sont normaux.",
        "read_receipt": True,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r,
    ):
        assert r.status == 202, await r.text()
        public_id = (await r.json())["id"]
    async with api.rt.db.read() as session:
        sent_id = (await session.execute(select(APIMessage.message_id))).scalar_one()
    _id, dpi_secret = await accounts.add_app_password(api.rt, DPI, "imap")

    page = await browser.new_page(viewport={"width": 420, "height": 780})
    await login(page, api.url)
    await page.get_by_role("link", name="Résultats d'analyse").click()
    assert await page.get_by_text("vos résultats sont normaux.").is_visible()
    question = page.get_by_text("L'expéditeur demande un accusé de lecture")
    assert await question.is_visible()
    assert await asyncio.to_thread(inbox, api, DPI, dpi_secret) == []  # nothing before the answer
    form = page.locator("form.accuse-lecture")
    csrf = await form.locator("input[name=csrf]").get_attribute("value")
    action = await form.get_attribute("action")
    await page.get_by_role("button", name="Envoyer l'accusé de lecture").click()
    await page.wait_for_load_state()
    assert await page.get_by_text("Accusé de lecture envoyé.").is_visible()
    assert await question.count() == 0

    [report] = await asyncio.to_thread(inbox, api, DPI, dpi_secret)
    assert (str(report["From"]), str(report["To"])) == (PATIENT, DPI)
    assert report["Subject"] == "Accusé de lecture : Résultats d'analyse"
    fields = disposition(report)
    assert fields["Disposition"] == "manual-action/MDN-sent-manually; displayed"
    assert fields["Original-Message-ID"] == sent_id
    assert fields["Final-Recipient"] == f"rfc822; {PATIENT}"
    assert fields["Reporting-UA"].startswith("mx.a.mssante.test;")

    state = await api_state(api, public_id)
    [receipt] = state[PATIENT]["receipts"]
    assert receipt["disposition"] == "displayed"
    assert receipt["mode"] == "manual-action/MDN-sent-manually"
    sent = await api.rt.audit.events(action="mdn-sent")
    assert [e.actor for e in sent] == [PATIENT]

    # the same answer again (another tab, a replayed form): still one receipt
    replay = await page.request.post(f"{api.url}{action}", form={"csrf": csrf or "", "accuse": "oui"})
    assert replay.ok
    await page.reload()
    assert await question.count() == 0
    assert len(await asyncio.to_thread(inbox, api, DPI, dpi_secret)) == 1
    assert len((await api_state(api, public_id))[PATIENT]["receipts"]) == 1
    await page.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_patient_declines_and_is_never_asked_again(portal: API, browser: Browser) -> None:
    api = portal
    msg = build(MARTIN, PATIENT, "Rendez-vous", "Votre rendez-vous est confirmé.")
    msg["disposition-notification-to"] = MARTIN  # any header case
    await send(api.rt, msg)
    page = await browser.new_page()
    await login(page, api.url)
    await page.get_by_role("link", name="Rendez-vous").click()
    question = page.get_by_text("L'expéditeur demande un accusé de lecture")
    assert await question.is_visible()
    await page.get_by_role("button", name="Ne pas l'envoyer").click()
    await page.wait_for_load_state()
    assert await question.count() == 0
    await page.goto(f"{api.url}/conversations")
    await page.get_by_role("link", name="Rendez-vous").click()
    assert await page.get_by_text("Votre rendez-vous est confirmé.").is_visible()
    assert await question.count() == 0
    assert await page.get_by_text("Accusé de lecture envoyé.").count() == 0
    await page.close()
    assert await asyncio.to_thread(inbox, api, MARTIN, PASSWORD) == []
    assert [e.actor for e in await api.rt.audit.events(action="mdn-declined")] == [PATIENT]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_no_question_for_a_receipt_to_a_third_party(portal: API, browser: Browser) -> None:
    api = portal
    msg = build(MARTIN, PATIENT, "Ordonnance", "Voici votre ordonnance.")
    msg["Disposition-Notification-To"] = "espion@a.mssante.test"
    await send(api.rt, msg)
    page = await browser.new_page()
    await login(page, api.url)
    await page.get_by_role("link", name="Ordonnance").click()
    assert await page.get_by_text("Voici votre ordonnance.").is_visible()
    assert await page.get_by_text("L'expéditeur demande un accusé de lecture").count() == 0
    await page.close()


def test_requested_reads_any_header_case_and_only_the_author() -> None:
    raw = (
        b"From: Dr Martin <dr.martin@a.mssante.test>\r\n"
        b"DISPOSITION-NOTIFICATION-TO: <Dr.Martin@a.mssante.test>\r\nMessage-ID: <1@a>\r\n\r\nx"
    )
    assert mdn.requested(HeaderView.parse(raw)) == mdn.Request("dr.martin@a.mssante.test", "<1@a>")
    several = raw.replace(b"<Dr.Martin@a.mssante.test>", b"a@x.test, dr.martin@a.mssante.test")
    assert mdn.requested(HeaderView.parse(several)) is None
    assert mdn.requested(HeaderView.parse(b"From: a@x.test\r\n\r\nx")) is None


# ---------------------------------------------------------------- an MDN from a peer over SMTP

PEER = "dr.durand@b.mssante.test"


async def test_an_mdn_from_a_peer_over_smtp_reaches_the_api_state(tmp_path: Path, pki: Any) -> None:
    env: SMTPEnv = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/caducee.db",
        pki,
        portal={"listen": ["127.0.0.1:0"], "secure_cookies": False},
    )
    try:
        await accounts.add_mailbox(env.rt, DPI, "APP")
        _id, secret = await accounts.add_app_password(env.rt, DPI, "dpi")
        [listener] = await web.start(env.rt)
        env.started.append(listener)
        api = API(None, f"http://{listener.address}", secret)  # type: ignore[arg-type]
        body = {"from": DPI, "to": [PEER], "subject": "Compte rendu", "text": "T.", "read_receipt": True}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r,
        ):
            assert r.status == 202, await r.text()
            public_id = (await r.json())["id"]
        async with env.rt.db.read() as session:
            sent_id = (await session.execute(select(APIMessage.message_id))).scalar_one()
        original = (
            f"From: {DPI}\r\nTo: {PEER}\r\nSubject: Compte rendu\r\nMessage-ID: {sent_id}\r\n"
            f"Disposition-Notification-To: {DPI}\r\n\r\nT.\r\n"
        ).encode()

        async def peer_sends(final_recipient: str, disposition: str = "displayed", author: str = "") -> None:
            request = mdn.Request(DPI, sent_id)
            data = mdn.build("mx.b.mssante.test", final_recipient, request, original, disposition=disposition)
            if author:  # someone else answering for the recipient
                data = data.replace(f"From: <{final_recipient}>".encode(), f"From: <{author}>".encode(), 1)
            c = aiosmtplib.SMTP(hostname="127.0.0.1", port=env.ports["smtp"], start_tls=False)
            await c.connect()
            await c.starttls(tls_context=env.peer())
            errors, reply = await c.sendmail("", [DPI], data)
            assert not errors and reply.startswith("2.0.0"), reply
            await c.quit()

        await peer_sends("intrus@b.mssante.test")  # not a recipient of that message: ignored
        await peer_sends(PEER, "deleted", author="intrus@b.mssante.test")  # forged: not the reader's
        await peer_sends(PEER)
        await peer_sends(PEER)  # the same receipt twice: one row
        await peer_sends(PEER, "deleted")
        state = await wait_for(lambda: api_state(api, public_id))
        receipts = state[PEER]["receipts"]
        assert [r["disposition"] for r in receipts] == ["displayed", "deleted"]
        assert len(await env.inbox(DPI)) == 5  # every report is delivered, only matching ones count
        assert "intrus@b.mssante.test" not in state
    finally:
        await env.close()
