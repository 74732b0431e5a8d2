"""Read-then-write transactions must never lose updates, on either engine.

With Python's default sqlite3 transaction handling, 8 tasks × 100 increments ended at ~170 instead of
800 here; ``db.write()`` (BEGIN IMMEDIATE on SQLite, row locks on PostgreSQL) must give exactly 800.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mailserver import accounts
from mailserver.db import engine
from mailserver.db.models import Mailbox
from mailserver.runtime import Runtime
from tests.conftest import pg_admin

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


def _set(mailbox_id: int, **values: int) -> Callable[[Session], object]:
    """A transaction's work: set columns of one mailbox."""
    return lambda session: session.execute(update(Mailbox).where(Mailbox.id == mailbox_id).values(**values))


async def test_brief_and_threaded_writes_interleave_without_loss(runtime: Runtime) -> None:
    """``run_write`` with and without ``brief`` and ``db.write()``, all at once: every increment kept."""
    mb = await accounts.add_mailbox(runtime, "mixed@a.mssante.test", "ORG")

    def bump(session: Session) -> None:
        row = session.execute(select(Mailbox).where(Mailbox.id == mb.id).with_for_update()).scalar_one()
        row.used_messages += 1

    async def sync_worker(brief: bool) -> None:
        for _ in range(INCREMENTS):
            await runtime.db.run_write(bump, brief=brief)

    async def async_worker() -> None:
        for _ in range(INCREMENTS):
            async with runtime.db.write() as session:
                row = (
                    await session.execute(select(Mailbox).where(Mailbox.id == mb.id).with_for_update())
                ).scalar_one()
                row.used_messages += 1

    await asyncio.gather(sync_worker(True), sync_worker(True), sync_worker(False), async_worker())
    async with runtime.db.read() as session:
        final = (await session.execute(select(Mailbox.used_messages).where(Mailbox.id == mb.id))).scalar_one()
    assert final == 4 * INCREMENTS


async def test_brief_write_that_raises_leaves_nothing(runtime: Runtime) -> None:
    mb = await accounts.add_mailbox(runtime, "raises@a.mssante.test", "ORG")

    def fail(session: Session) -> None:
        session.execute(update(Mailbox).where(Mailbox.id == mb.id).values(used_messages=99))
        raise RuntimeError("refused halfway")

    with pytest.raises(RuntimeError):
        await runtime.db.run_write(fail, brief=True)
    await runtime.db.run_write(_set(mb.id, used_bytes=7), brief=True)
    async with runtime.db.read() as session:
        row = (await session.execute(select(Mailbox).where(Mailbox.id == mb.id))).scalar_one()
    assert (row.used_messages, row.used_bytes) == (0, 7)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_brief_write_cancelled_during_its_commit_is_committed(runtime: Runtime) -> None:
    """SQLite: once handed to the writer thread the COMMIT completes (a cancelled work item would never
    run, leaving the connection inside its transaction); the connection is free afterwards."""
    mb = await accounts.add_mailbox(runtime, "cancel@a.mssante.test", "ORG")
    gate = threading.Event()
    assert runtime.db._writer_thread is not None
    busy = runtime.db._writer_thread.submit(gate.wait)  # the COMMIT will queue behind this
    ran = threading.Event()

    def work(session: Session) -> None:
        _set(mb.id, used_messages=5)(session)
        ran.set()

    task = asyncio.create_task(runtime.db.run_write(work, brief=True))
    await asyncio.sleep(0.05)  # the work ran; its COMMIT waits in the writer thread's queue
    assert ran.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # At once, while that COMMIT still waits: this one must neither disturb it nor be lost.
    second = asyncio.create_task(runtime.db.run_write(_set(mb.id, used_bytes=9), brief=True))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wrap_future(busy)
    await second
    async with runtime.db.read() as session:
        row = (await session.execute(select(Mailbox).where(Mailbox.id == mb.id))).scalar_one()
    assert (row.used_messages, row.used_bytes) == (5, 9)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("form", ["run_write", "block"])
async def test_brief_write_waits_off_the_loop_while_another_process_writes(
    runtime: Runtime, db_url: str, form: str
) -> None:
    """SQLite: with the write lock held elsewhere (the CLI), a brief transaction (``run_write`` or a
    ``db.write`` block) does not block the event loop on BEGIN; it waits off the loop and completes
    once the lock is released."""
    mb = await accounts.add_mailbox(runtime, f"locked-{form}@a.mssante.test", "ORG")
    other = sqlite3.connect(db_url.split("///", 1)[1], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def block() -> None:
        async with runtime.db.write(brief=True) as session:
            row = await session.get(Mailbox, mb.id, with_for_update=True)
            row.used_messages = 3

    write = runtime.db.run_write(_set(mb.id, used_messages=3), brief=True) if form == "run_write" else block()
    task = asyncio.create_task(write)
    started = time.monotonic()
    await asyncio.sleep(0.3)
    # The loop kept running meanwhile: a BEGIN blocking it would hold this sleep until the lock is
    # released, which happens only below (or until SQLite's 30 s busy timeout).
    assert time.monotonic() - started < 5
    assert not task.done()
    other.execute("COMMIT")
    other.close()
    async with asyncio.timeout(10):
        await task
    async with runtime.db.read() as session:
        used = (await session.execute(select(Mailbox.used_messages).where(Mailbox.id == mb.id))).scalar_one()
    assert used == 3


async def test_read_transaction_is_one_snapshot_and_interleaves(runtime: Runtime) -> None:
    """Two read transactions open at once (interleaved on the loop); each sees one snapshot for all its
    statements, whatever commits meanwhile; a read transaction cannot write."""
    mb = await accounts.add_mailbox(runtime, "snapshot@a.mssante.test", "ORG")
    query = select(Mailbox.used_messages).where(Mailbox.id == mb.id)
    async with runtime.db.read() as first:
        assert (await first.execute(query)).scalar_one() == 0
        await runtime.db.run_write(_set(mb.id, used_messages=1), brief=True)
        async with runtime.db.read() as second:
            assert (await second.execute(query)).scalar_one() == 1
            await runtime.db.run_write(_set(mb.id, used_messages=2))
            assert (await first.execute(query)).scalar_one() == 0
            assert (await second.execute(query)).scalar_one() == 1
        with pytest.raises(DBAPIError):
            await first.execute(update(Mailbox).where(Mailbox.id == mb.id).values(used_messages=9))
    async with runtime.db.read() as third:
        assert (await third.execute(query)).scalar_one() == 2


async def test_brief_write_block_commits_or_rolls_back(runtime: Runtime) -> None:
    """``db.write(brief=True)``: the ORM calls of a write transaction, committed at the end of the block,
    nothing kept when it raises."""
    mb = await accounts.add_mailbox(runtime, "block@a.mssante.test", "ORG")
    with pytest.raises(RuntimeError):
        async with runtime.db.write(brief=True) as session:
            row = await session.get(Mailbox, mb.id, with_for_update=True)
            row.used_messages = 4
            await session.flush()
            raise RuntimeError("refused halfway")
    async with runtime.db.write(brief=True) as session:
        row = await session.get(Mailbox, mb.id, with_for_update=True)
        row.used_bytes = 6
    async with runtime.db.read() as session:
        row = (await session.execute(select(Mailbox).where(Mailbox.id == mb.id))).scalar_one()
    assert (row.used_messages, row.used_bytes) == (0, 6)


async def test_brief_writes_share_commits_and_fail_alone(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Brief transactions queued together are committed together (SQLite: fewer COMMITs than
    transactions), and the one that raises is rolled back alone, on either engine."""
    commits = []
    real_commit = engine._commit
    monkeypatch.setattr(engine, "_commit", lambda session: (commits.append(1), real_commit(session)))
    boxes = [await accounts.add_mailbox(runtime, f"group{i}@a.mssante.test", "ORG") for i in range(20)]
    commits.clear()

    def work(mailbox_id: int) -> Callable[[Session], object]:
        def run(session: Session) -> int:
            _set(mailbox_id, used_messages=mailbox_id)(session)
            if mailbox_id == boxes[7].id:
                raise RuntimeError("this one fails")
            return mailbox_id

        return run

    results = await asyncio.gather(
        *(runtime.db.run_write(work(mb.id), brief=True) for mb in boxes), return_exceptions=True
    )
    assert [type(r) for r in results].count(RuntimeError) == 1 and isinstance(results[7], RuntimeError)
    assert [r for r in results if not isinstance(r, Exception)] == [
        mb.id for i, mb in enumerate(boxes) if i != 7
    ]
    async with runtime.db.read() as session:
        used = dict((await session.execute(select(Mailbox.id, Mailbox.used_messages))).all())
    assert all(used[mb.id] == (0 if i == 7 else mb.id) for i, mb in enumerate(boxes))
    if runtime.db.kind == "sqlite":
        assert 1 <= len(commits) < len(boxes)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_failed_group_commit_is_every_writers_error(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COMMIT that fails (a full disk) fails every brief transaction that shared it, none of them
    written, and the next group commits as usual; so does one that cannot even start (the writer
    thread gone): no caller is left waiting."""
    boxes = [await accounts.add_mailbox(runtime, f"group{i}@a.mssante.test", "ORG") for i in range(6)]
    real_commit = engine._commit

    def disk_full(session: Session) -> None:
        session.close()
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(engine, "_commit", disk_full)
    writes = (runtime.db.run_write(_set(mb.id, used_messages=1), brief=True) for mb in boxes)
    results = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 30)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
    monkeypatch.setattr(engine, "_commit", real_commit)
    await runtime.db.run_write(_set(boxes[0].id, used_messages=2), brief=True)
    async with runtime.db.read() as session:
        used = dict((await session.execute(select(Mailbox.id, Mailbox.used_messages))).all())
    assert [used[mb.id] for mb in boxes] == [2, 0, 0, 0, 0, 0]

    def refused(_fn: object, *_args: object) -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    assert runtime.db._writer_thread is not None
    monkeypatch.setattr(runtime.db._writer_thread, "submit", refused)
    with pytest.raises(RuntimeError, match="after shutdown"):
        await asyncio.wait_for(runtime.db.run_write(_set(boxes[1].id, used_messages=3), brief=True), 10)
    monkeypatch.undo()  # the write lock was given back: writes go on
    await asyncio.wait_for(runtime.db.run_write(_set(boxes[2].id, used_messages=4), brief=True), 10)
    async with runtime.db.read() as session:
        used = dict((await session.execute(select(Mailbox.id, Mailbox.used_messages))).all())
    assert [used[mb.id] for mb in boxes] == [2, 0, 4, 0, 0, 0]


async def test_a_brief_work_raising_stop_iteration_fails_alone(runtime: Runtime) -> None:
    """StopIteration (``next()`` on an empty iterator) cannot be set on a future: its caller gets a
    RuntimeError, and the group commit goes on for the others."""
    mb = await accounts.add_mailbox(runtime, "stop@a.mssante.test", "ORG")

    def empty(session: Session) -> object:
        return next(iter(()))

    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(runtime.db.run_write(empty, brief=True), 30)
    await asyncio.wait_for(runtime.db.run_write(_set(mb.id, used_messages=5), brief=True), 30)
    async with runtime.db.read() as session:
        assert (await session.execute(select(Mailbox.used_messages).where(Mailbox.id == mb.id))).scalar() == 5


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_brief_writers_queued_when_the_committer_is_cancelled_are_told(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown cancels the group committer while a COMMIT is in flight: the writers of that COMMIT and
    those queued behind it are cancelled too, none left waiting."""
    mb = await accounts.add_mailbox(runtime, "shutdown@a.mssante.test", "ORG")
    release = threading.Event()
    real_commit = engine._commit

    def slow_commit(session: Session) -> None:
        release.wait(30)
        real_commit(session)

    monkeypatch.setattr(engine, "_commit", slow_commit)
    first = asyncio.ensure_future(runtime.db.run_write(_set(mb.id, used_messages=1), brief=True))
    await asyncio.sleep(0.1)  # its COMMIT is in the writer thread now
    queued = asyncio.ensure_future(runtime.db.run_write(_set(mb.id, used_messages=2), brief=True))
    await asyncio.sleep(0.1)
    committer = runtime.db._brief_committer
    assert committer is not None and not committer.done()
    committer.cancel()
    done, pending = await asyncio.wait([first, queued], timeout=10)
    release.set()
    assert not pending and all(f.cancelled() for f in done)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("idle", [False, True])
async def test_connections_recover_after_the_server_drops_them(
    runtime: Runtime, db_url: str, idle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a connection in steady use is not pinged before each use. Once the server has
    dropped every connection (a restart), pooled connections that were idle are pinged and replaced
    (no error at all), and among those in steady use at most two statements fail before the pool
    reconnects (one of the hot path's on the DB-API cursor included)."""
    if idle:
        monkeypatch.setattr(engine, "PING_IDLE_SECONDS", 0.0)
    mb = await accounts.add_mailbox(runtime, "restart@a.mssante.test", "ORG")
    query = select(Mailbox.used_messages).where(Mailbox.id == mb.id)

    async def use() -> int:
        await runtime.store.folder(mb.id, "INBOX")  # first, a statement on the DB-API cursor (read_one)
        async with runtime.db.lookup() as reader:
            await reader.execute(query)
        await runtime.db.run_write(_set(mb.id, used_bytes=1))
        async with runtime.db.read() as session:
            return (await session.execute(query)).scalar_one()

    assert await use() == 0
    name = db_url.rsplit("/", 1)[1]
    await pg_admin(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
        "AND pid <> pg_backend_pid()"
    )
    failures = 0
    for _ in range(3):
        try:
            await use()
        except DBAPIError:
            failures += 1
    assert failures == 0 if idle else failures <= 2
    assert await use() == 0


async def test_brief_work_raising_a_base_exception_frees_the_connection(runtime: Runtime) -> None:
    """Something other than an error of the work itself (a BaseException) abandons the shared
    transaction, its callers are not left waiting, and the next brief transaction proceeds."""

    class Abort(BaseException):
        pass

    mb = await accounts.add_mailbox(runtime, "abort@a.mssante.test", "ORG")

    def abort(session: Session) -> None:
        _set(mb.id, used_messages=7)(session)
        raise Abort

    async with asyncio.timeout(10):
        with pytest.raises((Abort, asyncio.CancelledError)):
            await runtime.db.run_write(abort, brief=True)
        await runtime.db.run_write(_set(mb.id, used_bytes=2), brief=True)
    async with runtime.db.read() as session:
        row = (await session.execute(select(Mailbox).where(Mailbox.id == mb.id))).scalar_one()
    assert (row.used_messages, row.used_bytes) == (0, 2)
