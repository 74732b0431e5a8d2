"""Headers as mail clients really write them, seen where users see them.

A professional submits (smtplib, swaks) to a hosted patient; the patient reads the conversation in the
portal's JSON API and answers there or over submission; the professional reads over IMAP. Field names
come in any case (RFC 5322 §1.2.2: swaks and Apple Mail write ``Message-Id``), subjects as raw UTF-8
(RFC 6532, with SMTPUTF8) or as encoded words, bodies as 8-bit text without a charset.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from imapclient import IMAPClient

from directory.patients import add_patient, make_record
from mailserver import accounts
from mailserver.imap import server as imap_server
from mailserver.portal import service as portal
from mailserver.portal import web
from tests.smtp.conftest import MARTIN, PASSWORD, SMTPEnv, start_env, wait_for

PATIENT_INS = "262112B82955335"
PATIENT_DOMAIN = "patient.a.mssante.test"
PATIENT = f"{PATIENT_INS.lower()}@{PATIENT_DOMAIN}"
PATIENT_PASSWORD = "correct horse battery"
PATIENT_NAME = "PETIT Pierrette (patiente)"
SUBJECT = "Résultats d'échographie"


@dataclass
class Deployment:
    env: SMTPEnv
    portal_url: str
    imaps: int
    token: str = ""

    @property
    def rt(self) -> Any:
        return self.env.rt

    def submit(self, user: str, password: str, raw: bytes, *, to: str, utf8: bool = False) -> None:
        """smtplib over the submission port, STARTTLS + AUTH, as a mail client does (call from a thread)."""
        options = ["SMTPUTF8", "BODY=8BITMIME"] if utf8 else []
        with smtplib.SMTP("127.0.0.1", self.env.ports["submission"], timeout=10) as s:
            s.starttls(context=self.env.user())
            s.login(user, password)
            s.sendmail(user, [to], raw, mail_options=options)

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.portal_url}{path}", headers=headers, **kwargs) as resp,
        ):
            return resp.status, await resp.json()

    async def conversation(self) -> dict[str, Any]:
        """The patient's only conversation in the portal's JSON API (title and messages), once it is there."""

        async def listed() -> list[dict[str, Any]]:
            status, body = await self.api("GET", "/api/conversations")
            assert status == 200, body
            return [c for g in body["professionals"] for c in g["conversations"]]

        [summary] = await wait_for(listed)
        status, detail = await self.api("GET", f"/api/conversations/{summary['id']}")
        assert status == 200, detail
        return {"summary": summary, **detail}

    async def martin_inbox(self) -> list[EmailMessage]:
        return [_parse(raw) for raw in await self.env.inbox(MARTIN)]

    def imap_envelopes(self, user: str, password: str) -> list[Any]:
        """FETCH ENVELOPE of every INBOX message over IMAPS (call from a thread)."""
        ctx = ssl.create_default_context(cafile=str(self.env.pki.peer_ca))
        ctx.check_hostname = False
        with IMAPClient("127.0.0.1", port=self.imaps, ssl=True, ssl_context=ctx, timeout=10) as c:
            c.login(user, password)
            c.select_folder("INBOX")
            fetched = c.fetch(c.search("ALL"), ["ENVELOPE"])
            return [fetched[uid][b"ENVELOPE"] for uid in sorted(fetched)]


def _parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.fixture
async def deployment(tmp_path: Path, pki: Any) -> AsyncIterator[Deployment]:
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/caducee.db",
        pki,
        portal={"listen": ["127.0.0.1:0"], "secure_cookies": False, "second_factor": "off"},
        imap={"listen": [], "tls_listen": ["127.0.0.1:0"]},
    )
    rt = env.rt
    await accounts.add_domain(rt, PATIENT_DOMAIN, patients=True)
    await accounts.add_mailbox(rt, PATIENT, "PAT")
    await add_patient(rt.db, make_record(PATIENT_INS, "Petit", "Pierrette", "F", "1962-11-23"))
    _address, code, _expires = await portal.invite(rt, PATIENT_INS)
    await portal.activate(rt, PATIENT_INS, code, PATIENT_PASSWORD, "127.0.0.1")
    [listener] = await web.start(rt)
    env.started.append(listener)
    imap = await imap_server.start(rt)
    env.started.extend(imap)
    d = Deployment(env, f"http://{listener.address}", imap[0].port)
    try:
        status, body = await d.api(
            "POST", "/api/login", json={"ins": PATIENT_INS, "password": PATIENT_PASSWORD}
        )
        assert status == 200, body
        d.token = body["token"]
        yield d
    finally:
        await env.close()


def _first_message(message_id_field: str, message_id: str, subject: str, body: bytes) -> bytes:
    return (
        f"From: Dr Martin <{MARTIN}>\r\n"
        f"To: <{PATIENT}>\r\n"
        f"Subject: {subject}\r\n"
        "Date: Tue, 03 Feb 2026 10:00:00 +0100\r\n"
        f"{message_id_field}: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
    ).encode() + body


def _patient_answer(in_reply_to: str, message_id_field: str) -> bytes:
    return (
        f"From: <{PATIENT}>\r\n"
        f"To: <{MARTIN}>\r\n"
        f"Subject: Re: {SUBJECT}\r\n"
        f"{message_id_field}: <answer-{in_reply_to.strip('<>')}>\r\n"
        f"in-reply-to: {in_reply_to}\r\n"
        f"REFERENCES: {in_reply_to}\r\n"
        "\r\n"
        "Merci docteur.\r\n"
    ).encode()


async def _conversation_flow(d: Deployment, first_id: str, answer_field: str) -> None:
    """What follows a professional's first message ``first_id``: the patient answers in the portal (the
    reply must answer ``first_id``, not a placeholder), then over submission (accepted, not 550)."""
    conv = await d.conversation()
    status, posted = await d.api(
        "POST", f"/api/conversations/{conv['summary']['id']}/messages", json={"text": "Merci."}
    )
    assert status == 201, posted
    [reply] = await d.martin_inbox()
    assert reply["In-Reply-To"] == first_id
    assert reply["References"] == first_id
    assert reply["Subject"] == f"Re: {conv['summary']['subject']}"

    raw = _patient_answer(first_id, answer_field)
    await asyncio.to_thread(d.submit, PATIENT, PATIENT_PASSWORD, raw, to=MARTIN)
    inbox = await d.martin_inbox()
    assert [m["In-Reply-To"] for m in inbox] == [first_id, first_id]
    assert inbox[-1]["From"] == f'"{PATIENT_NAME}" <{PATIENT}>'  # submission shows the patient's name


@pytest.mark.parametrize("field", ["Message-ID", "Message-Id", "message-id", "MESSAGE-ID"])
async def test_message_id_in_any_case_threads_the_conversation(deployment: Deployment, field: str) -> None:
    """RFC 5322 §1.2.2: names are case-insensitive, ``Message-Id`` links replies as ``Message-ID`` does."""
    d = deployment
    first_id = "<first-case-1@a.mssante.test>"
    raw = _first_message(field, first_id, "Ordonnance", "Votre ordonnance est prête.\r\n".encode())
    await asyncio.to_thread(d.submit, MARTIN, PASSWORD, raw, to=PATIENT)
    await _conversation_flow(d, first_id, field.swapcase())


async def test_message_id_completed_by_submission_threads_the_conversation(deployment: Deployment) -> None:
    """A client that writes no Message-ID gets one from submission (RFC 6409 §8.3): the conversation
    follows that one, so the patient's answer refers to what the patient received, not a placeholder."""
    d = deployment
    raw = _first_message("X-No-Message-ID", "<none>", "Ordonnance", b"Votre ordonnance.\r\n")
    await asyncio.to_thread(d.submit, MARTIN, PASSWORD, raw, to=PATIENT)
    [received] = [_parse(m) for m in await d.env.inbox(PATIENT)]
    assert received["Message-ID"].endswith("@mx.a.mssante.test>")
    await _conversation_flow(d, received["Message-ID"], "Message-ID")


async def test_swaks_message_id_threads_the_conversation(deployment: Deployment) -> None:
    """swaks writes ``Message-Id:`` (and the patient's reply must still be accepted)."""
    d = deployment
    swaks = await asyncio.create_subprocess_exec(
        "swaks",
        "--server",
        f"127.0.0.1:{d.env.ports['submission']}",
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(d.env.pki.peer_ca),
        "--auth",
        "PLAIN",
        "--auth-user",
        MARTIN,
        "--auth-password",
        PASSWORD,
        "--from",
        MARTIN,
        "--to",
        PATIENT,
        "--header",
        "Subject: Rendez-vous",
        "--body",
        "Pouvez-vous venir jeudi ?",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(swaks.communicate(), 30)
    assert swaks.returncode == 0, (out + err).decode()
    # swaks echoes what it sends, prefixed " ~> " inside TLS.
    [first_id] = re.findall(r"^ ~> Message-Id: (<[^>]+>)", out.decode(), re.MULTILINE)
    await _conversation_flow(d, first_id, "Message-Id")


async def test_raw_utf8_subject_reaches_portal_reply_and_imap_intact(deployment: Deployment) -> None:
    """RFC 6532 header (SMTPUTF8): the portal's title, the reply's Subject and IMAP ENVELOPE show the text."""
    d = deployment
    first_id = "<first-utf8@a.mssante.test>"
    raw = _first_message("Message-ID", first_id, SUBJECT, "Vos résultats sont normaux.\r\n".encode())
    await asyncio.to_thread(d.submit, MARTIN, PASSWORD, raw, to=PATIENT, utf8=True)
    conv = await d.conversation()
    assert conv["summary"]["subject"] == SUBJECT
    [message] = conv["messages"]
    assert (message["subject"], message["text"]) == (SUBJECT, "Vos résultats sont normaux.\n")

    status, posted = await d.api(
        "POST", f"/api/conversations/{conv['summary']['id']}/messages", json={"text": "Merci."}
    )
    assert status == 201, posted
    [reply] = await d.martin_inbox()
    assert reply["Subject"] == f"Re: {SUBJECT}"
    assert "\ufffd" not in reply["Subject"]

    [envelope] = await asyncio.to_thread(d.imap_envelopes, PATIENT, PATIENT_PASSWORD)
    assert envelope.subject.decode("utf-8") == SUBJECT
    assert envelope.message_id == first_id.encode()


async def test_mislabelled_encoded_word_is_not_garbled(deployment: Deployment) -> None:
    """An encoded word whose bytes are not its declared charset (Latin-1 labelled UTF-8, as some
    clients do) is read as Windows-1252 rather than shown as U+FFFD."""
    d = deployment
    raw = _first_message(
        "Message-ID", "<first-2047@a.mssante.test>", "=?utf-8?q?R=E9sultats?=", b"Bonjour.\r\n"
    )
    await asyncio.to_thread(d.submit, MARTIN, PASSWORD, raw, to=PATIENT)
    conv = await d.conversation()
    assert conv["summary"]["subject"] == "Résultats"
    assert conv["messages"][0]["subject"] == "Résultats"


@pytest.mark.parametrize(
    ("content_type", "body", "text", "needle"),
    [
        (None, "Vos résultats : 12 µg/l.\r\n".encode(), "Vos résultats : 12 µg/l.\n", "µg/l"),
        ("text/plain", "Vos résultats sont là.\r\n".encode(), "Vos résultats sont là.\n", "là"),
        (
            None,
            "Résultat : 12 € – « normal ».\r\n".encode("cp1252"),
            "Résultat : 12 € – « normal ».\n",
            "12 €",
        ),
        ("text/plain; charset=us-ascii", "Coût : 30 €\r\n".encode("cp1252"), "Coût : 30 €\n", "30 €"),
        ("text/plain; charset=utf-8", "Coût : 30 €\r\n".encode("cp1252"), "Coût : 30 €\n", "30 €"),
    ],
    ids=[
        "utf8-no-content-type",
        "utf8-no-charset",
        "cp1252-no-content-type",
        "cp1252-as-ascii",
        "cp1252-as-utf8",
    ],
)
async def test_8bit_body_without_a_valid_charset(
    deployment: Deployment, content_type: str | None, body: bytes, text: str, needle: str
) -> None:
    """8BITMIME text without a (correct) charset: UTF-8 when it is valid, else Windows-1252; never U+FFFD.
    The portal shows it so, and IMAP SEARCH BODY finds it so."""
    d = deployment
    head = f"From: <{MARTIN}>\r\nTo: <{PATIENT}>\r\nSubject: Analyse\r\nMessage-ID: <body@a.mssante.test>\r\n"
    if content_type is not None:
        head += f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: 8bit\r\n"
    await asyncio.to_thread(d.submit, MARTIN, PASSWORD, head.encode() + b"\r\n" + body, to=PATIENT, utf8=True)
    [message] = (await d.conversation())["messages"]
    assert message["text"] == text

    def search() -> list[int]:
        ctx = ssl.create_default_context(cafile=str(d.env.pki.peer_ca))
        ctx.check_hostname = False
        with IMAPClient("127.0.0.1", port=d.imaps, ssl=True, ssl_context=ctx, timeout=10) as c:
            c.login(PATIENT, PATIENT_PASSWORD)
            c.select_folder("INBOX")
            return list(c.search(["BODY", needle], charset="UTF-8"))

    assert len(await asyncio.to_thread(search)) == 1


async def test_patient_header_from_must_be_their_own(deployment: Deployment) -> None:
    """A patient's client cannot sign as the professional: From is checked before submission rewrites it."""
    d = deployment
    first_id = "<first-from@a.mssante.test>"
    raw = _first_message("Message-ID", first_id, "Ordonnance", b"Votre ordonnance.\r\n")
    await asyncio.to_thread(d.submit, MARTIN, PASSWORD, raw, to=PATIENT)
    await d.conversation()
    forged = _patient_answer(first_id, "Message-ID").replace(
        f"From: <{PATIENT}>".encode(), f"From: <{MARTIN}>".encode()
    )
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(d.submit, PATIENT, PATIENT_PASSWORD, forged, to=MARTIN)
    assert refused.value.smtp_code == 550
    assert (
        refused.value.smtp_error.decode() == f"5.7.1 From: <{MARTIN}> is not an address {PATIENT} may send as"
    )
    assert await d.martin_inbox() == []
