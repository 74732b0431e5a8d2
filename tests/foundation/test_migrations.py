"""Schema only through Alembic: from empty to head, back to empty, and up again, on both engines."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from mailserver.db import migrate


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
    with pytest.raises(RuntimeError, match="inline"):
        await asyncio.to_thread(migrate.downgrade, db_url, "0007")
    assert set(await migrate.current(db_url)) == set(migrate.heads())
