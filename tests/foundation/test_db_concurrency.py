"""Read-then-write transactions must never lose updates, on either engine.

With Python's default sqlite3 transaction handling, 8 tasks × 100 increments ended at ~170 instead of
800 here; ``db.write()`` (BEGIN IMMEDIATE on SQLite, row locks on PostgreSQL) must give exactly 800.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from mailserver import accounts
from mailserver.db.models import Mailbox
from mailserver.runtime import Runtime

TASKS, INCREMENTS = 8, 100


async def test_concurrent_read_then_write_loses_nothing(runtime: Runtime) -> None:
    mb = await accounts.add_mailbox(runtime, "counter@a.mssante.test", "ORG")

    async def worker() -> None:
        for _ in range(INCREMENTS):
            async with runtime.db.write() as session:
                row = (
                    await session.execute(select(Mailbox).where(Mailbox.id == mb.id).with_for_update())
                ).scalar_one()
                value = row.used_messages
                await asyncio.sleep(0)  # let the other tasks run between the read and the write
                row.used_messages = value + 1

    await asyncio.gather(*(worker() for _ in range(TASKS)))
    async with runtime.db.read() as session:
        final = (await session.execute(select(Mailbox.used_messages).where(Mailbox.id == mb.id))).scalar_one()
    assert final == TASKS * INCREMENTS


async def test_readers_do_not_wait_for_an_open_writer(runtime: Runtime) -> None:
    """A deferred read transaction proceeds while a write transaction holds the write lock (WAL)."""
    await accounts.add_mailbox(runtime, "reader@a.mssante.test", "ORG")
    release = asyncio.Event()
    locked = asyncio.Event()

    async def writer() -> None:
        async with runtime.db.write() as session:
            row = (await session.execute(select(Mailbox).with_for_update())).scalars().first()
            assert row is not None
            row.display_name = "changing"
            await session.flush()
            locked.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await locked.wait()
    async with asyncio.timeout(5):
        async with runtime.db.read() as session:
            names = list((await session.execute(select(Mailbox.display_name))).scalars())
    assert "changing" not in names
    release.set()
    await task
