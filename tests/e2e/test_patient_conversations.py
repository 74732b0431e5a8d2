"""Patient conversations end to end: two ``caducee serve`` processes, nothing but sockets between them.

dr.durand at B writes to a patient hosted at A (submission at B, B's queue, A's MTA over mutual TLS);
the patient reads and answers in A's portal (JSON API, or chromium); the answer goes back through A's
queue to B. Each way of closing is exercised where it acts: ``[FIN]`` and ``X-MSS-MES: FIN`` from the
remote professional, ``$MSSClosed`` by a professional local to A over IMAPS, ``caducee conversation close``
next to the running server. What the rules refuse a patient is checked over SMTP submission, where a
patient with a password could try it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from playwright.async_api import Browser

from mailserver import conversations
from mailserver.queue.queue import Queue
from tests.e2e.conftest import (
    DURAND,
    DURAND_NAME,
    MARTIN,
    PATIENT,
    PATIENT_INS,
    PATIENT_NAME,
    PATIENT_PASSWORD,
    Deployment,
)
from tests.smtp.conftest import wait_for
from tests.smtp.operators import CADUCEE

SUBJECT = "Résultats d'échographie"
FIRST_TEXT = "Bonjour,\nvos résultats sont normaux."


async def _closed_by(d: Deployment, public_id: str) -> str | None:
    """How A recorded the close (``subject``, ``header``, ``keyword``, ``cli``): not in the patient's API."""
    assert d.a.rt is not None
    listed = await conversations.list_conversations(d.a.rt, patient=PATIENT_INS)
    return next(c.closed_by for c in listed if c.public_id == public_id)


def _parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


async def _durand_opens_and_patient_answers(d: Deployment) -> tuple[str, EmailMessage]:
    """dr.durand writes from B, the patient reads and answers in A's API; returns the conversation id and
    the answer as dr.durand received it at B (after checking what both sides must see)."""
    first = await d.professional_writes(DURAND, SUBJECT, FIRST_TEXT, name="Dr Jean Durand")
    conv = await d.patient.wait_conversation(DURAND)
    [group] = await d.patient.conversations()
    assert (group["name"], group["profession"]) == (DURAND_NAME, "Médecin, Cardiologie")
    assert [(c["id"], c["subject"], c["unread"]) for c in group["conversations"]] == [(conv, SUBJECT, 1)]
    detail = await d.patient.conversation(conv)
    [message] = detail["messages"]
    assert (message["author"], message["direction"]) == (DURAND_NAME, "in")
    assert message["text"].strip() == FIRST_TEXT

    posted = await d.patient.reply(conv, "Merci docteur, bonne journée.")
    assert posted.status == 201, posted.body
    raw = await d.durand_receives(first)
    assert f'From: "{PATIENT_NAME}" <{PATIENT}>'.encode() in raw
    assert b"peer certificate CN=mx.a.mssante.test,OU=Operateur,O=Operateur A,C=FR verified" in raw
    answer = _parse(raw)
    assert answer["In-Reply-To"] == first
    assert answer["Subject"] == f"Re: {SUBJECT}"
    assert answer.get_content().strip() == "Merci docteur, bonne journée."
    return conv, answer


async def _refused_once_closed(d: Deployment, conv: str) -> None:
    """A closed conversation takes no answer (409), and nothing leaves for B."""
    before = len(await d.b.inbox("dr.durand"))
    refused = await d.patient.reply(conv, "Encore une question.")
    assert refused.status == 409
    assert refused.body["error"] == "Cette conversation est close : vous ne pouvez plus y répondre."
    assert len(await d.b.inbox("dr.durand")) == before


@pytest.mark.slow
@pytest.mark.parametrize("a_db_url", ["sqlite", "postgresql"], indirect=True)
async def test_remote_professional_conversation_closed_by_fin_subject(deployment: Deployment) -> None:
    d = deployment
    conv, answer = await _durand_opens_and_patient_answers(d)

    await d.professional_writes(DURAND, "[FIN]", "Au revoir.", in_reply_to=answer["Message-ID"])
    closed = await d.patient.wait_closed(conv)
    assert closed["closed_at"] is not None
    assert [m["text"].strip() for m in closed["messages"]][-1] == "Au revoir."
    assert await _closed_by(d, conv) == "subject"
    await _refused_once_closed(d, conv)

    # The professional's next message opens a new conversation; the closed one stays closed.
    await d.professional_writes(DURAND, "Nouveau rendez-vous", "Pouvez-vous venir jeudi ?")
    reopened = await d.patient.wait_conversation(DURAND)
    assert reopened != conv
    [group] = await d.patient.conversations()
    assert {c["id"]: c["state"] for c in group["conversations"]} == {reopened: "open", conv: "closed"}


@pytest.mark.slow
async def test_remote_professional_conversation_closed_by_header(deployment: Deployment) -> None:
    d = deployment
    conv, answer = await _durand_opens_and_patient_answers(d)

    await d.professional_writes(
        DURAND,
        f"Re: {SUBJECT}",
        "Je clos notre échange.",
        in_reply_to=answer["Message-ID"],
        extra={"X-MSS-MES": "FIN"},
    )
    await d.patient.wait_closed(conv)
    assert await _closed_by(d, conv) == "header"
    await _refused_once_closed(d, conv)


@pytest.mark.slow
async def test_local_professional_closes_with_imap_keyword(deployment: Deployment) -> None:
    """The keyword acts in the professional's own mailbox: dr.martin is at A. Submission keeps no Sent
    copy, so the conversation's message in dr.martin's mailbox is the patient's answer, in INBOX."""
    d = deployment
    first = await d.professional_writes(MARTIN, "Ordonnance", "Votre ordonnance est prête.", name="Dr Martin")
    conv = await d.patient.wait_conversation(MARTIN)
    posted = await d.patient.reply(conv, "Merci, je passe demain.")
    assert posted.status == 201, posted.body

    def store_keyword() -> list[bytes]:
        imap = d.imap(MARTIN)
        try:
            assert imap.select("INBOX")[0] == "OK"
            status, [found] = imap.search(None, "HEADER", "In-Reply-To", first)
            assert status == "OK"
            [number] = found.split()
            status, data = imap.store(number.decode(), "+FLAGS", "($MSSClosed)")
            assert status == "OK"
            return [item for item in data if isinstance(item, bytes)]
        finally:
            imap.logout()

    fetched = await asyncio.to_thread(store_keyword)
    assert any(b"$MSSClosed" in item for item in fetched)
    closed = await d.patient.wait_closed(conv)
    assert await _closed_by(d, conv) == "keyword"
    notice = closed["messages"][-1]
    assert (notice["kind"], notice["author"], notice["direction"]) == ("notice", "Messagerie Caducée", "in")
    assert notice["text"].startswith("Dr Martin a clos cette conversation.")
    assert (await d.patient.reply(conv, "Une dernière chose.")).status == 409


@pytest.mark.slow
async def test_operator_closes_with_the_cli_while_serving(deployment: Deployment) -> None:
    """``caducee conversation close`` is a second process on A's database, next to the running server."""
    d = deployment
    await d.professional_writes(DURAND, SUBJECT, FIRST_TEXT, name="Dr Jean Durand")
    conv = await d.patient.wait_conversation(DURAND)
    cli = await asyncio.create_subprocess_exec(
        CADUCEE,
        "--config",
        str(d.a.config),
        "conversation",
        "close",
        conv,
        cwd=d.a.directory,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), 30)
    assert cli.returncode == 0, err.decode()
    assert out.decode().strip() == f"conversation {conv} closed"
    closed = await d.patient.wait_closed(conv)
    assert await _closed_by(d, conv) == "cli"
    notice = closed["messages"][-1]
    assert (notice["kind"], notice["author"]) == ("notice", "Messagerie Caducée")
    assert notice["text"].startswith("Dr Jean Durand a clos cette conversation.")
    await _refused_once_closed(d, conv)


@pytest.mark.slow
async def test_patient_cannot_write_first_nor_answer_another_conversation(deployment: Deployment) -> None:
    d = deployment
    client = await d.a.submission_client(d.pki, PATIENT, PATIENT_PASSWORD)
    try:
        await client.mail(PATIENT)
        for professional in (DURAND, MARTIN):
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt(professional)
            assert (refused.value.code, refused.value.message[:5]) == (550, "5.7.1")
        await client.rset()
    finally:
        await client.quit()

    durand_first = await d.professional_writes(DURAND, SUBJECT, FIRST_TEXT, name="Dr Jean Durand")
    martin_first = await d.professional_writes(MARTIN, "Ordonnance", "Votre ordonnance est prête.")
    await d.patient.wait_conversation(DURAND)
    await d.patient.wait_conversation(MARTIN)

    def answer(in_reply_to: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = PATIENT
        msg["To"] = DURAND
        msg["Subject"] = f"Re: {SUBJECT}"
        msg["Message-ID"] = f"<answer-{in_reply_to.strip('<>')}>"
        msg["In-Reply-To"] = in_reply_to
        msg.set_content("Merci.")
        return msg

    client = await d.a.submission_client(d.pki, PATIENT, PATIENT_PASSWORD)
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.send_message(answer(martin_first))
        assert (refused.value.code, refused.value.message[:5]) == (550, "5.7.1")
        assert "does not belong to the open conversation" in refused.value.message
        await client.rset()
        await client.send_message(answer(durand_first))
    finally:
        await client.quit()
    received = _parse(await d.durand_receives(durand_first))
    assert received["Message-ID"] == f"<answer-{durand_first.strip('<>')}>"
    assert [_parse(m)["In-Reply-To"] for m in await d.b.inbox("dr.durand")] == [durand_first]

    # The answer left A's queue, which released its copy; the patient holds none (no Sent copy over
    # SMTP), so the conversation must not point at that copy: on SQLite the next message's copy may
    # reuse its id, and dr.martin's next message would show in dr.durand's thread as the patient's.
    assert d.a.rt is not None
    queue = Queue(d.a.rt)

    async def drained() -> bool:
        return await queue.entries() == []

    await wait_for(drained)
    await d.professional_writes(MARTIN, "Ordonnance (suite)", "Le renouvellement est prêt.")
    await d.patient.wait_conversation(MARTIN)
    durand_thread = await d.patient.conversation(await d.patient.wait_conversation(DURAND))
    assert [(m["author"], m["text"].strip()) for m in durand_thread["messages"]] == [
        (DURAND_NAME, FIRST_TEXT)
    ]


@pytest.mark.slow
async def test_browser_answer_then_closed_banner(deployment: Deployment, browser: Browser) -> None:
    """Screenshots only when ``CADUCEE_SCREENSHOTS`` names a directory: a normal run writes nothing."""
    d = deployment
    url = d.portal_url
    first = await d.professional_writes(DURAND, SUBJECT, FIRST_TEXT, name="Dr Jean Durand")
    await d.patient.wait_conversation(DURAND)
    page = await browser.new_page(viewport={"width": 420, "height": 780})
    await page.goto(f"{url}/connexion")
    await page.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
    await page.get_by_label("Mot de passe").fill(PATIENT_PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{url}/conversations")
    assert await page.get_by_role("heading", name=DURAND_NAME).is_visible()
    await page.get_by_role("link", name=SUBJECT).click()
    assert await page.get_by_text("vos résultats sont normaux.").is_visible()
    await page.get_by_label("Votre message").fill("Merci docteur, à bientôt.")
    await page.get_by_role("button", name="Envoyer").click()
    await page.wait_for_load_state()
    assert await page.get_by_text("Merci docteur, à bientôt.").is_visible()
    answer = _parse(await d.durand_receives(first))
    assert answer.get_content().strip() == "Merci docteur, à bientôt."

    await d.professional_writes(DURAND, "[FIN]", "Au revoir.", in_reply_to=answer["Message-ID"])
    await d.patient.wait_conversation(DURAND, state="closed")
    await page.reload()
    assert await page.get_by_text("Conversation close.").is_visible()
    assert await page.get_by_label("Votre message").count() == 0
    assert await page.get_by_role("button", name="Envoyer").count() == 0
    shots = os.environ.get("CADUCEE_SCREENSHOTS")
    if shots:
        await page.screenshot(path=str(Path(shots) / "e2e-conversation-closed.png"), full_page=True)
