"""Schema only through Alembic: from empty to head, back to empty, and up again, on both engines."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from mailserver.db import migrate
from mailserver.db.models import Mailbox
from mailserver.runtime import Runtime
from tests.conftest import make_settings


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    assert await migrate.current(db_url) == ()
    await migrate.upgrade_async(db_url)
    assert set(await migrate.current(db_url)) == set(migrate.heads())
    tables = await _tables(db_url)
    assert {"domain", "mailbox", "folder", "message", "blob", "expunged", "audit_event"} <= tables
    await asyncio.to_thread(migrate.downgrade, db_url, "base")
    assert await _tables(db_url) <= {"alembic_version"}
    await migrate.upgrade_async(db_url)
    assert await _tables(db_url) == tables


async def test_composite_indexes_exist(db_url: str) -> None:
    await migrate.upgrade_async(db_url)
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("message"))
            uniques = await conn.run_sync(lambda c: inspect(c).get_unique_constraints("message"))
    finally:
        await engine.dispose()
    columns = [tuple(i["column_names"]) for i in indexes] + [tuple(u["column_names"]) for u in uniques]
    assert ("folder_id", "uid") in columns
    assert ("folder_id", "modseq") in columns


async def test_downgrade_refused_while_messages_are_inline(db_url: str) -> None:
    """0008 keeps small messages in ``blob.data``: going back to 0007 would lose them, so it refuses."""
    await migrate.upgrade_async(db_url)
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO blob (path, data, size, sha256, refcount, meta, created_at) "
                    "VALUES (NULL, :d, 3, '', 1, '{}', CURRENT_TIMESTAMP)"
                ),
                {"d": b"abc"},
            )
    finally:
        await engine.dispose()
    # Step down to 0008 first: SQLite's DDL is not transactional, so a refusal keeps the steps before it.
    await asyncio.to_thread(migrate.downgrade, db_url, "0008")
    with pytest.raises(RuntimeError, match="inline"):
        await asyncio.to_thread(migrate.downgrade, db_url, "0007")
    assert await migrate.current(db_url) == ("0008",)


async def test_subscriptions_move_to_their_own_table_and_back(db_url: str) -> None:
    """0009 turns ``folder.subscribed`` into rows of ``subscription`` (which outlive folders); going
    back keeps the subscriptions of the folders that still exist."""
    await migrate.upgrade_async(db_url, "0008")
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO domain (name, patients, created_at)"
                    " VALUES ('a.test', false, CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO mailbox (address, domain_id, type, password_hash, enabled,"
                    " accepts_patient_first, display_name, used_bytes, used_messages, quota_warned,"
                    " last_uidvalidity, created_at) SELECT 'x@a.test', id, 'ORG', '', true, false, 'X',"
                    " 0, 0, 0, 0, CURRENT_TIMESTAMP FROM domain"
                )
            )
            for name, subscribed in (("INBOX", True), ("Kept", False), ("Sub", True)):
                await conn.execute(
                    text(
                        "INSERT INTO folder (mailbox_id, name, uidvalidity, uidnext, highestmodseq,"
                        " subscribed, created_at) SELECT id, :n, 1, 1, 1, :s, CURRENT_TIMESTAMP FROM mailbox"
                    ),
                    {"n": name, "s": subscribed},
                )
        await migrate.upgrade_async(db_url)
        async with engine.begin() as conn:
            rows = await conn.execute(text("SELECT name FROM subscription ORDER BY name"))
            assert [r[0] for r in rows] == ["INBOX", "Sub"]
            await conn.execute(text("DELETE FROM folder WHERE name = 'Sub'"))
        await asyncio.to_thread(migrate.downgrade, db_url, "0008")
        async with engine.begin() as conn:
            rows = await conn.execute(text("SELECT name, subscribed FROM folder ORDER BY name"))
            assert [(r[0], bool(r[1])) for r in rows] == [("INBOX", True), ("Kept", False)]
    finally:
        await engine.dispose()


async def test_mailbox_activity_starts_from_the_last_login_event(db_url: str) -> None:
    """0013: an existing mailbox's last login is its last ``login`` audit event, else the upgrade's
    time, so a mailbox in use is never taken for one unused since its creation."""
    await migrate.upgrade_async(db_url, "0009")
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO domain (name, patients, created_at) VALUES ('a.test', false, '2020-01-01')")
            )
            for address in ("used@a.test", "idle@a.test"):
                await conn.execute(
                    text(
                        "INSERT INTO mailbox (address, domain_id, type, password_hash, enabled,"
                        " accepts_patient_first, display_name, used_bytes, used_messages, quota_warned,"
                        " last_uidvalidity, created_at) SELECT :a, id, 'PER', '', true, false, 'X',"
                        " 0, 0, 0, 0, '2020-01-01 00:00:00' FROM domain"
                    ),
                    {"a": address},
                )
            for day, hour in ((dt.date(2026, 3, 1), 8), (dt.date(2026, 5, 4), 9)):
                at = dt.datetime(day.year, day.month, day.day, hour, 30, tzinfo=dt.UTC)
                if db_url.startswith("sqlite"):
                    at = at.replace(tzinfo=None)  # stored naive, as UTCDateTime does
                await conn.execute(
                    text(
                        "INSERT INTO audit_event (at, actor, remote, action, request, response)"
                        " VALUES (:at, 'used@a.test', '', 'login', 'imap login', 'ok')"
                    ),
                    {"at": at},
                )
        await migrate.upgrade_async(db_url)
        rt = Runtime.build(make_settings(Path(tempfile.mkdtemp()), db_url))
        try:
            async with rt.db.read() as session:
                stamps = dict((await session.execute(select(Mailbox.address, Mailbox.last_login_at))).all())
        finally:
            await rt.close()
        assert stamps["used@a.test"] == dt.datetime(2026, 5, 4, 9, 30, tzinfo=dt.UTC)
        assert dt.datetime.now(dt.UTC) - stamps["idle@a.test"] < dt.timedelta(minutes=10)
    finally:
        await engine.dispose()


async def test_member_flags_come_with_0018_and_go_with_it(db_url: str) -> None:
    await migrate.upgrade_async(db_url)
    assert "member_flags" in await _tables(db_url)
    await asyncio.to_thread(migrate.downgrade, db_url, "0017")
    assert "member_flags" not in await _tables(db_url)
    await migrate.upgrade_async(db_url)
    assert "member_flags" in await _tables(db_url)
