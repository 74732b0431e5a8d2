"""DELAY DSNs (RFC 3461 NOTIFY=DELAY, RFC 3464 ``Action: delayed``): a recipient whose peer keeps
answering 451 gets one report after ``[delivery] delay_warning`` (4 h by default; the queue's clock is
moved forward), never a second one, not even after a restart; the API's message state shows the delay.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import ssl
import threading
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from config.settings import DeliverySettings
from mailserver import accounts
from mailserver.db.models import utcnow
from mailserver.portal import web
from mailserver.queue.models import QueueMessage, QueueRecipient
from mailserver.runtime import Runtime
from mailserver.smtp import service
from tests.ports import free_port
from tests.smtp.conftest import MARTIN, PASSWORD, SMTPEnv, start_env, wait_for

PEER = "dr.durand@b.mssante.test"
DPI = "dpi@a.mssante.test"
LATER = dt.timedelta(hours=4, minutes=10)  # just past the default delay_warning


class BusyPeer:
    """Operator B's MX (its certificate, STARTTLS) that answers every RCPT with a 451."""

    def __init__(self, pki: Any) -> None:
        self.pki = pki
        self.rcpts = 0
        self._lock = threading.Lock()
        self.port = free_port()
        ident = pki.tls["b.mssante.test"]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(ident.chain_path), str(ident.key_path))
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="mx.b.mssante.test",
            tls_context=ctx,
            require_starttls=True,
        )

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self._lock:
            self.rcpts += 1
        return "451 4.3.2 System not accepting network messages"


def moved(offset: dt.timedelta) -> Callable[[], dt.datetime]:
    return lambda: utcnow() + offset


async def submit(env: SMTPEnv, subject: str, notify: str | None = None) -> None:
    c = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=env.ports["submissions"], use_tls=True, tls_context=env.user()
    )
    await c.connect()
    await c.ehlo()
    await c.auth_plain(MARTIN, PASSWORD)
    data = f"From: <{MARTIN}>\r\nTo: <{PEER}>\r\nSubject: {subject}\r\n\r\nSuivi du patient.\r\n".encode()
    options = [f"NOTIFY={notify}"] if notify else []
    errors, reply = await c.sendmail(MARTIN, [PEER], data, rcpt_options=options)
    assert not errors and reply.startswith("2.0.0"), reply
    await c.quit()


async def inbox(rt: Runtime, address: str) -> list[EmailMessage]:
    mb = await accounts.get_mailbox(rt, address)
    folder = await rt.store.folder(mb.id, "INBOX")
    _info, msgs = await rt.store.snapshot(folder.id)
    out = []
    for m in msgs:
        parsed = email.message_from_bytes(await rt.store.read_blob(m.blob_id), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        out.append(parsed)
    return out


def delivery_status(report: EmailMessage) -> list[Any]:
    """The per-recipient groups of the report's message/delivery-status part (RFC 3464 §2.3)."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    text, status, headers = report.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    groups = status.get_payload()
    assert groups[0]["Reporting-MTA"] == "dns; mx.a.mssante.test"
    return groups[1:]


async def test_one_delay_report_per_recipient_after_delay_warning_even_across_a_restart(
    tmp_path: Path, db_url: str, pki: Any
) -> None:
    peer = BusyPeer(pki)
    peer.controller.start()
    sections = {
        "delivery": {"retry_schedule": ["1s"], "routes": {"b.mssante.test": f"127.0.0.1:{peer.port}"}},
        "portal": {"listen": ["127.0.0.1:0"], "secure_cookies": False},
    }
    env = await start_env(tmp_path, db_url, pki, **sections)
    rt2: Runtime | None = None
    started: list[Any] = []
    try:
        await accounts.add_mailbox(env.rt, DPI, "APP")
        _id, secret = await accounts.add_app_password(env.rt, DPI, "dpi")
        [portal] = await web.start(env.rt)
        env.started.append(portal)
        await submit(env, "sans NOTIFY")  # RFC 3461 §4.1: as NOTIFY=FAILURE,DELAY
        await submit(env, "NOTIFY=FAILURE", notify="FAILURE")
        auth = {"Authorization": "Basic " + base64.b64encode(f"{DPI}:{secret}".encode()).decode()}
        body = {"from": DPI, "to": [PEER], "subject": "Compte rendu", "text": "Texte."}
        url = f"http://{portal.address}/api/v1/messages"
        async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=auth) as r:
            assert r.status == 202, await r.text()
            api_id = (await r.json())["id"]

        async def attempts(n: int) -> bool:
            return peer.rcpts >= n

        await wait_for(lambda: attempts(6), 30)  # each of the 3 entries tried twice: 451 each time
        assert await inbox(env.rt, MARTIN) == [] and await inbox(env.rt, DPI) == []

        env.rt.queue.clock = moved(LATER)
        [report] = await wait_for(lambda: inbox(env.rt, MARTIN), 30)
        assert report["Subject"] == "Delivery Status Notification (Delay)"
        assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mx.a.mssante.test>"
        [group] = delivery_status(report)
        assert group["Final-Recipient"] == f"rfc822; {PEER}"
        assert group["Action"] == "delayed"
        assert group["Status"] == "4.3.2"
        assert "451 4.3.2" in group["Diagnostic-Code"]
        until = email.utils.parsedate_to_datetime(group["Will-Retry-Until"])
        assert dt.timedelta(days=4, hours=23) < until - utcnow() < dt.timedelta(days=5, minutes=1)
        original = report.get_payload()[2].get_payload()
        assert "Subject: sans NOTIFY" in str(original)

        [api_report] = await wait_for(lambda: inbox(env.rt, DPI), 30)
        assert delivery_status(api_report)[0]["Action"] == "delayed"
        async with aiohttp.ClientSession() as http, http.get(f"{url}/{api_id}", headers=auth) as r:
            [state] = (await r.json())["recipients"]
        assert state["state"] == "queued" and state["delayed"] is True and state["delay_notified_at"]

        # more attempts past the warning: still one report, and none for NOTIFY=FAILURE
        seen = peer.rcpts
        await wait_for(lambda: attempts(seen + 6), 30)
        assert len(await inbox(env.rt, MARTIN)) == 1 and len(await inbox(env.rt, DPI)) == 1

        # a restart: a new runtime on the same database and store, its own queue and workers
        settings = env.rt.settings
        await env.close()
        rt2 = Runtime.build(settings)
        rt2.queue.clock = moved(LATER + dt.timedelta(hours=1))
        started = await service.start(rt2)
        seen = peer.rcpts
        await wait_for(lambda: attempts(seen + 6), 30)
        assert len(await inbox(rt2, MARTIN)) == 1 and len(await inbox(rt2, DPI)) == 1
        entries = await rt2.queue.entries()
        assert len(entries) == 3  # still queued, retried until expire
    finally:
        for item in reversed(started):
            await item.close()
        if rt2 is not None:
            await rt2.close()
        else:
            await env.close()
        peer.controller.stop()


async def test_the_delay_report_leaves_when_delay_warning_passes(
    tmp_path: Path, db_url: str, pki: Any
) -> None:
    """With the default retry schedule (1 min, 5 min, 15 min, 1 h, then every 4 h) the first failure
    after 4 h comes at about 5 h 20; the queue brings the attempt after 1 h 21 forward to the moment
    ``delay_warning`` (4 h) passes, so the report leaves then. The queue clock jumps from one due
    attempt to the next."""
    peer = BusyPeer(pki)
    peer.controller.start()
    delivery = {
        "delay_warning": "4h",
        "retry_schedule": [f"{s}s" for s in DeliverySettings().retry_schedule],  # the tests' is shorter
        "routes": {"b.mssante.test": f"127.0.0.1:{peer.port}"},
    }
    env = await start_env(tmp_path, db_url, pki, delivery=delivery)
    warning = dt.timedelta(hours=4)
    try:
        await submit(env, "sans NOTIFY")

        async def entry() -> tuple[QueueRecipient, dt.datetime]:
            async with env.rt.db.read() as session:
                row, created = (
                    await session.execute(
                        select(QueueRecipient, QueueMessage.created_at).join(
                            QueueMessage, QueueMessage.id == QueueRecipient.message_id
                        )
                    )
                ).one()
            return row, aware(created)

        await wait_for(lambda: attempted(entry, 0, None), 30)
        for _ in range(10):
            row, created = await entry()
            if row.delay_notified_at is not None:
                break
            at = aware(row.next_attempt) + dt.timedelta(seconds=1)
            env.rt.queue.clock = lambda at=at: at
            env.rt.queue.wake()
            # the attempt, and once past delay_warning its report (or the mark that none is due)
            seen, due = row.attempts, at - created >= warning
            await wait_for(lambda seen=seen, due=due: attempted(entry, seen, due), 30)
        assert row.delay_notified_at is not None
        assert aware(row.delay_notified_at) - created < warning + dt.timedelta(minutes=1)
        [report] = await inbox(env.rt, MARTIN)
        [group] = delivery_status(report)
        assert group["Action"] == "delayed" and group["Final-Recipient"] == f"rfc822; {PEER}"
    finally:
        await env.close()
        peer.controller.stop()


def aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def attempted(
    entry: Callable[[], Awaitable[tuple[QueueRecipient, dt.datetime]]], seen: int, reported: bool | None
) -> bool:
    """The recipient was tried more than ``seen`` times and, when ``reported``, its delay is marked."""
    row, _created = await entry()
    return row.attempts > seen and (not reported or row.delay_notified_at is not None)


async def test_delay_warning_zero_never_reports(tmp_path: Path, pki: Any) -> None:
    peer = BusyPeer(pki)
    peer.controller.start()
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/caducee.db",
        pki,
        delivery={
            "retry_schedule": ["1s"],
            "delay_warning": "0s",
            "routes": {"b.mssante.test": f"127.0.0.1:{peer.port}"},
        },
    )
    try:
        await submit(env, "sans NOTIFY")
        env.rt.queue.clock = moved(dt.timedelta(days=2))

        async def attempts() -> bool:
            return peer.rcpts >= 3

        await wait_for(attempts, 30)
        assert await inbox(env.rt, MARTIN) == []
    finally:
        await env.close()
        peer.controller.stop()
