"""Database access: one ``Database`` per process, with explicit read and write transactions.

Invariants (see tests/test_db_concurrency.py):
- Every transaction that writes is opened with ``db.write()``. On SQLite that is ``BEGIN IMMEDIATE`` on a
  connection in autocommit mode (``isolation_level=None``), so two read-then-write transactions can never
  interleave and silently lose an update (Python's default sqlite3 handling does exactly that). On
  PostgreSQL, rows read to be changed are locked with ``SELECT … FOR UPDATE`` (``with_for_update()``)
  or changed with a single ``UPDATE … RETURNING``.
- ``db.read()`` is for transactions that only read: deferred on SQLite so readers never wait on writers.
- On SQLite, writers of this process queue on an asyncio lock before ``BEGIN IMMEDIATE``: SQLite's own
  busy handler sleeps with back-off (up to 100 ms a try), which under concurrency costs far more than
  the transactions themselves. The busy timeout remains for other processes (the CLI). Never open a
  write transaction inside another one: on SQLite that waits for itself.
- SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk before the caller acknowledges
  anything to a client (an SMTP 250 or an IMAP APPEND OK).
- Never await network I/O to a client while a write transaction is open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def _sqlite_engine(url: str, immediate: bool, echo: bool) -> AsyncEngine:
    engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" event below issues BEGIN itself.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Owns the engines and hands out sessions; ``kind`` is ``"sqlite"`` or ``"postgresql"``."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.kind = "sqlite"
            self.write_engine = _sqlite_engine(url, immediate=True, echo=echo)
            self.read_engine = _sqlite_engine(url, immediate=False, echo=echo)
        else:
            self.kind = "postgresql"
            self.write_engine = create_async_engine(
                url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self.read_engine = self.write_engine
        self._write = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self._writer = asyncio.Lock() if self.kind == "sqlite" else None
        self._read = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed on normal exit, rolled back on any exception."""
        if self._writer is None:
            async with self._write() as session, session.begin():
                yield session
            return
        async with self._writer, self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction (never committed)."""
        async with self._read() as session, session.begin():
            yield session

    async def close(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()
