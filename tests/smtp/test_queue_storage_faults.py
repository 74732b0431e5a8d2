"""A queued message whose file is gone from the storage (issue 20 item 5): the worker keeps it queued
(a temporary failure, logged and audited, never a crash of its loop), bounces it at ``expire`` with a
report that says so, and goes on delivering the rest of the queue."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailserver.queue.queue import Queue
from tests.smtp.conftest import MARTIN, PASSWORD, SMTPEnv, start_env

PEER = "dr.durand@b.mssante.test"  # routed to 127.0.0.1:9: every attempt is a temporary failure


async def submit(env: SMTPEnv, subject: str, body: str) -> None:
    c = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=env.ports["submissions"], use_tls=True, tls_context=env.user()
    )
    await c.connect()
    await c.ehlo()
    await c.auth_plain(MARTIN, PASSWORD)
    data = f"From: <{MARTIN}>\r\nTo: <{PEER}>\r\nSubject: {subject}\r\n\r\n{body}".encode()
    assert (await c.sendmail(MARTIN, [PEER], data))[1].startswith("2.0.0 message accepted")
    await c.quit()


async def reports(env: SMTPEnv, count: int) -> list[email.message.Message]:
    """Wait for ``count`` delivery reports in the sender's INBOX (the queue retries every second)."""
    async with asyncio.timeout(60):
        while True:
            inbox = await env.inbox(MARTIN)
            if len(inbox) >= count:
                return [email.message_from_bytes(raw, policy=email.policy.default) for raw in inbox]
            await asyncio.sleep(0.2)


async def test_a_lost_queued_file_is_retried_then_bounced_and_the_worker_goes_on(
    tmp_path: Path, pki: Any, caplog: pytest.LogCaptureFixture
) -> None:
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/caducee.db",
        pki,
        delivery={"retry_schedule": ["1s"], "expire": "4s"},
    )
    try:
        await submit(env, "gros", "Compte rendu complet.\r\n" * 4000)  # ~92 KiB: a file
        (path,) = await asyncio.to_thread(lambda: list(env.rt.blobs.all_paths()))
        os.unlink(env.rt.blobs.root / path)
        [bounce] = await reports(env, 1)
        assert bounce["Subject"] == "Delivery Status Notification (Failure)"
        assert f"<{PEER}>: failed" in bounce.as_string()
        # the worker loop is still alive: a readable message is attempted and bounced in turn
        await submit(env, "petit", "Suivi.\r\n")
        await reports(env, 2)
        assert await Queue(env.rt).entries() == []
        audited = await env.rt.audit.events(action="storage-error")
    finally:
        await env.close()
    lines = [r for r in caplog.records if getattr(r, "event", None) == "message-unavailable"]
    requests = [r.fields["request"] for r in lines]  # type: ignore[attr-defined]
    assert any(r.startswith("deliver queue entry ") for r in requests), requests
    assert requests[-1].startswith("report for queue entry "), requests
    assert all(r.levelno == logging.ERROR and MARTIN not in str(r.fields) for r in lines)  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info or r.getMessage() == "queue worker error"]
    assert len(audited) == len(lines) and {e.actor for e in audited} == {"queue"}
