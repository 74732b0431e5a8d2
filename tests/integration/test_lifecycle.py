"""The mailbox life cycle (issue 19, CNIL rule): a login stamps the mailbox; a mailbox without any login
for ``[mailboxes] inactive_after`` gets one notice in its INBOX, then is disabled after the grace period
unless someone logs in meanwhile. Real IMAP clients (imapclient) log in and read the notice."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ssl
from typing import Any

import imapclient
import pytest
from imapclient import IMAPClient
from sqlalchemy import select, update

from mailserver import lifecycle
from mailserver.db.models import Mailbox
from mailserver.runtime import Runtime
from tests.imap.conftest import MARTIN, PASSWORD, SECRETARIAT, IMAPEnv

MONTH = dt.timedelta(days=31)


def login_and_read(port: int, ctx: ssl.SSLContext, user: str) -> list[str]:
    """Log in (a real client) and return the subjects in the INBOX."""
    with IMAPClient("127.0.0.1", port, ssl=True, ssl_context=ctx, timeout=60) as c:
        c.login(user, PASSWORD)
        c.select_folder("INBOX", readonly=True)
        found = c.fetch(c.search(), ["BODY.PEEK[HEADER]"])
        return [
            str(email.message_from_bytes(v[b"BODY[HEADER]"], policy=email.policy.default)["Subject"])
            for v in found.values()
        ]


async def last_login(rt: Runtime, address: str) -> dt.datetime | None:
    async with rt.db.read() as session:
        return (
            await session.execute(select(Mailbox.last_login_at).where(Mailbox.address == address))
        ).scalar()


async def test_inactive_mailboxes_are_notified_then_disabled(imap_both: IMAPEnv) -> None:
    rt, ctx, port = imap_both.rt, imap_both.ctx, imap_both.tls_port
    assert await last_login(rt, MARTIN) is None
    await asyncio.to_thread(login_and_read, port, ctx, MARTIN)
    stamped = await last_login(rt, MARTIN)
    assert stamped is not None and dt.datetime.now(dt.UTC) - stamped < dt.timedelta(minutes=5)
    assert await lifecycle.run(rt) == ([], [])  # nobody inactive yet

    now = dt.datetime.now(dt.UTC)
    async with rt.db.write() as session:  # thirteen months pass without a login
        await session.execute(update(Mailbox).values(created_at=now - 14 * MONTH))
        await session.execute(
            update(Mailbox).where(Mailbox.address == MARTIN).values(last_login_at=now - 13 * MONTH)
        )
    assert [m.address for m in await lifecycle.inactive(rt)] == [SECRETARIAT, MARTIN]
    notified, disabled = await lifecycle.run(rt, now)
    assert sorted(notified) == [MARTIN, SECRETARIAT] and disabled == []
    assert await lifecycle.run(rt, now + dt.timedelta(days=1)) == ([], [])  # one notice, not one a day
    listed = {m.address: m for m in await lifecycle.inactive(rt)}
    grace = dt.timedelta(seconds=rt.settings.mailboxes.grace_period)
    assert listed[SECRETARIAT].notice_at == now and listed[SECRETARIAT].disable_after == now + grace

    # dr.martin reads the notice (a login: he keeps his mailbox); the secretariat does not come back
    subjects = await asyncio.to_thread(login_and_read, port, ctx, MARTIN)
    assert subjects == ["Boîte aux lettres inactive : elle sera désactivée"]
    assert [m.address for m in await lifecycle.inactive(rt)] == [SECRETARIAT]
    assert await lifecycle.run(rt, now + grace - dt.timedelta(hours=1)) == ([], [])
    assert await lifecycle.run(rt, now + grace + dt.timedelta(days=1)) == ([], [SECRETARIAT])
    with pytest.raises(imapclient.exceptions.LoginError):
        await asyncio.to_thread(login_and_read, port, ctx, SECRETARIAT)
    events = [(e.action, e.request) for e in await rt.audit.events(actor="admin")]
    assert ("inactive-notice", SECRETARIAT) in events and ("inactive-notice", MARTIN) in events
    assert ("inactive-disabled", SECRETARIAT) in events and ("inactive-disabled", MARTIN) not in events
    assert await lifecycle.inactive(rt) == []  # a disabled mailbox is no longer listed


async def test_logins_stamp_at_most_hourly(imap_both: IMAPEnv) -> None:
    """A busy mailbox's row is not rewritten at every connection."""
    rt: Any = imap_both.rt
    await asyncio.to_thread(login_and_read, imap_both.tls_port, imap_both.ctx, MARTIN)
    first = await last_login(rt, MARTIN)
    await asyncio.to_thread(login_and_read, imap_both.tls_port, imap_both.ctx, MARTIN)
    assert await last_login(rt, MARTIN) == first
