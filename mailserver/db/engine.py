"""Database access: one ``Database`` per process, with explicit read and write transactions.

Invariants (see tests/foundation/test_db_concurrency.py):
- Every transaction that writes is opened with ``db.write()``. On SQLite that is ``BEGIN IMMEDIATE`` on a
  connection in autocommit mode (``isolation_level=None``), so two read-then-write transactions can never
  interleave and silently lose an update (Python's default sqlite3 handling does exactly that). On
  PostgreSQL, rows read to be changed are locked with ``SELECT … FOR UPDATE`` (``with_for_update()``)
  or changed with a single ``UPDATE … RETURNING``.
- ``db.read()`` is for transactions that only read, one snapshot each (REPEATABLE READ on PostgreSQL).
  On SQLite they run synchronously on the event loop over read-only connections: deferred, in WAL
  mode, so they never wait on writers, and without aiosqlite's thread hops (see ``read``).
- On SQLite, writers of this process queue on an asyncio lock before ``BEGIN IMMEDIATE``: SQLite's own
  busy handler sleeps with back-off (up to 100 ms a try), which under concurrency costs far more than
  the transactions themselves. The busy timeout remains for other processes (the CLI). Never open a
  write transaction inside another one: on SQLite that waits for itself.
- SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk before the caller acknowledges
  anything to a client (an SMTP 250 or an IMAP APPEND OK).
- Never await network I/O to a client while a write transaction is open.
- ``db.run_write(work)`` runs synchronous code as one write transaction: on SQLite whole in the single
  writer thread (one thread hop for the transaction, not one per statement), serialised with
  ``db.write()`` by the same lock; through ``run_sync`` on PostgreSQL.
- ``db.run_write(work, brief=True)`` is for transactions of a few indexed statements whatever the data
  (a delivery batch, an audit event): on SQLite the statements run on the event loop and only the
  COMMIT, whose fsync is the slow part, goes to the writer thread. A thread running the statements
  would take the GIL back from the busy event loop after every one of them, which costs more than the
  statements. Never for work that grows with a folder (STORE 1:*), which would stall the loop.
  BEGIN does not wait there: if another process holds the write lock, the transaction runs in the
  writer thread instead, which may wait (busy timeout). Brief ``run_write`` works queued while a
  COMMIT is in flight share the next transaction (one savepoint each) and its COMMIT; ``db.write(
  brief=True)`` blocks take the lock and commit alone.
- ``db.lookup()`` is for the few indexed point reads a protocol command needs (RCPT, the trust
  check): on SQLite they run synchronously on the event loop over a read-only connection, because
  such a read costs microseconds in WAL mode (it never waits for a writer) while a trip through
  aiosqlite's thread and SQLAlchemy's async session costs a millisecond or more of CPU. Only
  lookups by key belong there, never scans; statements are built once (module constants).
  ``db.read_one(fn)`` is the same for a hot path's read of one Core statement.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, Result, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

T = TypeVar("T")

# How long a lookup may wait for SQLite's lock: in WAL mode readers only wait in rare moments (recovery
# of a crashed writer's WAL), and the event loop is blocked meanwhile, so this stays short.
LOOKUP_BUSY_TIMEOUT_MS = 200


def _configure_sqlite(
    engine: Engine, begin: str | None, busy_timeout_ms: int = 30000, read_only: bool = False
) -> None:
    """Connection settings every SQLite engine of ours shares; ``begin`` is the statement opening a
    transaction (``BEGIN IMMEDIATE`` for writers, ``BEGIN`` for readers), None for the lookup
    connection, whose statements are each their own snapshot; ``read_only`` refuses any write."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        if begin is not None:
            # Autocommit at the driver level: the "begin" event below issues BEGIN itself.
            dbapi_connection.isolation_level = None
        if read_only:
            cur.execute("PRAGMA query_only=ON")
            cur.execute(f"PRAGMA busy_timeout={LOOKUP_BUSY_TIMEOUT_MS}")
        else:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    if begin is not None:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            raw = conn.connection.dbapi_connection
            if isinstance(raw, sqlite3.Connection):  # straight on the driver: SQLAlchemy's execution
                try:  # context costs more than BEGIN itself, at every transaction
                    raw.execute(begin)
                except sqlite3.Error as exc:  # as SQLAlchemy raises it (busy: ``OperationalError``)
                    raise DBAPIError.instance(begin, (), exc, sqlite3.Error) from exc
            else:  # aiosqlite's adapter
                conn.exec_driver_sql(begin)


def _sqlite_engine(url: str, immediate: bool, echo: bool) -> AsyncEngine:
    engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
    _configure_sqlite(engine.sync_engine, "BEGIN IMMEDIATE" if immediate else "BEGIN")
    return engine


def _sqlite_sync_engines(url: str, echo: bool) -> tuple[Engine, Engine, Engine, Engine] | None:
    """The synchronous engines on the same SQLite file, (writer, brief writer, readers, lookups); None
    for an in-memory database, which another connection would not see."""
    sync_url = make_url(url).set(drivername="sqlite")
    if sync_url.database in (None, "", ":memory:"):
        return None
    writer = create_engine(sync_url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})
    _configure_sqlite(writer, "BEGIN IMMEDIATE")
    # Brief transactions begin on the event loop: BEGIN must fail at once rather than wait there.
    brief = create_engine(
        sync_url, echo=echo, poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    _configure_sqlite(brief, "BEGIN IMMEDIATE", busy_timeout_ms=0)
    # Read transactions run on the event loop, and may interleave there: a pool that never makes
    # its caller wait for a connection (that would block the loop), ten kept open.
    readers = create_engine(
        sync_url,
        echo=echo,
        pool_size=10,
        max_overflow=-1,
        connect_args={"check_same_thread": False, "timeout": LOOKUP_BUSY_TIMEOUT_MS / 1000},
    )
    _configure_sqlite(readers, "BEGIN", read_only=True)
    lookups = create_engine(
        sync_url,
        echo=echo,
        poolclass=StaticPool,
        connect_args={"check_same_thread": False, "timeout": LOOKUP_BUSY_TIMEOUT_MS / 1000},
    )
    _configure_sqlite(lookups, None, read_only=True)
    return writer, brief, readers, lookups


# (True, result) or (False, the exception it raised)
_Outcome = tuple[bool, Any]
# A brief transaction waiting for the next group commit: its work and its caller's future.
_Queued = tuple[Callable[[Session], Any], "asyncio.Future[Any]"]


def _in_savepoint(session: Session, work: Callable[[Session], Any]) -> _Outcome:
    """Run one brief transaction's work inside the shared transaction, rolled back alone if it raises."""
    try:
        with session.begin_nested():
            return True, work(session)
    except StopIteration as exc:  # a future cannot hold it (asyncio refuses it: TypeError)
        return False, RuntimeError(f"brief transaction raised StopIteration: {exc!r}")
    except Exception as exc:
        return False, exc


def _settle(done: asyncio.Future[Any], outcome: _Outcome) -> None:
    """``outcome`` onto ``done``, unless its caller stopped waiting (cancelled)."""
    ok, value = outcome
    if done.done():
        return
    if ok:
        done.set_result(value)
    else:
        done.set_exception(value)


def _copy_outcome(work: concurrent.futures.Future[Any], done: asyncio.Future[Any]) -> None:
    """On the loop: a finished work item's result or exception onto ``done`` (unless cancelled)."""
    error = work.exception()
    _settle(done, (True, work.result()) if error is None else (False, error))


def _commit(session: Session) -> None:
    """In the writer thread: COMMIT (the WAL's fsync) and give the connection back."""
    with session:
        session.commit()


# A pooled PostgreSQL connection unused for longer than this is pinged before use.
PING_IDLE_SECONDS = 10.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """``pool_pre_ping``, but only for a connection that has been idle: a ping before every use is one
    more round trip per transaction (under the SMTP benchmark's load, a lookup took twice as long).
    A connection in steady use is known to be alive; one the server dropped (a restart) meanwhile is
    replaced at its next checkout, and if it was dropped while in use, SQLAlchemy empties the pool on
    that first error. (SQLAlchemy's documented custom pessimistic disconnect handling.)"""
    sync = engine.sync_engine

    @event.listens_for(sync, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get("checked_in")
        if last is not None and time.monotonic() - last > PING_IDLE_SECONDS:
            try:
                alive = sync.dialect.do_ping(dbapi_connection)
            except Exception as exc:
                raise DisconnectionError("idle connection failed its ping") from exc
            if not alive:
                raise DisconnectionError("idle connection failed its ping")

    @event.listens_for(sync, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()


class Reader(Protocol):
    """What lookups use of a session: ``AsyncSession``, ``AsyncConnection`` and ``LookupConnection``
    all provide it."""

    async def execute(self, statement: Any, params: Any = None) -> Result[Any]: ...


class LookupConnection:
    """The awaitable ``execute`` of an ``AsyncSession`` over a synchronous Core connection, so policy
    functions run unchanged on either (see ``Database.lookup``)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def execute(self, statement: Any, params: Any = None) -> Result[Any]:
        return self._connection.execute(statement, params)


class ReadSession(Protocol):
    """What read transactions use of a session: ``AsyncSession`` and ``SyncReadSession`` both
    provide it."""

    async def execute(self, statement: Any, params: Any = None, **kw: Any) -> Result[Any]: ...

    async def scalar(self, statement: Any, params: Any = None, **kw: Any) -> Any: ...

    async def get(self, entity: Any, ident: Any, **kw: Any) -> Any: ...

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T: ...


class SyncReadSession:
    """The reading methods of an ``AsyncSession`` over a synchronous connection (``Database.read`` on
    SQLite), so the same read code runs on either engine. The ORM ``Session`` is made only when ORM
    code asks for one: the IMAP hot path's Core statements (``run_core``) run on ``connection``, and
    a ``Session`` and its transaction bookkeeping cost more than such a read itself."""

    def __init__(self, connection: Connection, session: Session | None = None) -> None:
        self.connection = connection
        self._session = session
        self.bind = connection.engine  # its ``dialect``, as on an AsyncSession

    @property
    def sync_session(self) -> Session:
        if self._session is None:  # joins the connection's transaction, which ``Database.read`` ends
            self._session = Session(bind=self.connection, expire_on_commit=False)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    async def execute(self, statement: Any, params: Any = None, **kw: Any) -> Result[Any]:
        return self.sync_session.execute(statement, params, **kw)

    async def scalar(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        return self.sync_session.scalar(statement, params, **kw)

    async def get(self, entity: Any, ident: Any, **kw: Any) -> Any:
        return self.sync_session.get(entity, ident, **kw)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return fn(self.sync_session, *args, **kw)


class SyncWriteSession(SyncReadSession):
    """``SyncReadSession`` with the writing methods of an ``AsyncSession`` (``Database.write``)."""

    def add(self, instance: object) -> None:
        self.sync_session.add(instance)

    async def delete(self, instance: object) -> None:
        self.sync_session.delete(instance)

    async def flush(self) -> None:
        self.sync_session.flush()


WriteSession = AsyncSession | SyncWriteSession


async def run_core(session: ReadSession | WriteSession, fn: Callable[..., T], *args: Any) -> T:
    """``fn(connection or session, *args)`` in the session's transaction: on the connection itself
    for a synchronous session (no ORM ``Session`` made), through ``run_sync`` on an ``AsyncSession``
    (PostgreSQL). For functions of Core statements, which take either (``mailserver.store.queries``)."""
    if isinstance(session, SyncReadSession):
        return fn(session.connection, *args)
    return await session.run_sync(fn, *args)


def _unobserved(kind: str, seconds: float) -> None:
    """A database outside a runtime: its timings go nowhere."""


class Database:
    """Owns the engines and hands out sessions; ``kind`` is ``"sqlite"`` or ``"postgresql"``."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        # Told each transaction's kind and duration (the runtime points it at its metrics).
        self.observe: Callable[[str, float], None] = _unobserved
        self.sync_write_engine: Engine | None = None
        self.brief_engine: Engine | None = None
        self.sync_read_engine: Engine | None = None
        self.lookup_engine: Engine | None = None
        self.async_lookup_engine: AsyncEngine | None = None
        self._writer_thread: ThreadPoolExecutor | None = None
        self._brief_commit: concurrent.futures.Future[None] | None = None  # the COMMIT in the thread
        self._brief_queue: list[_Queued] = []
        self._brief_committer: asyncio.Task[None] | None = None
        if url.startswith("sqlite"):
            self.kind = "sqlite"
            self.write_engine = _sqlite_engine(url, immediate=True, echo=echo)
            self.read_engine = _sqlite_engine(url, immediate=False, echo=echo)
            sync_engines = _sqlite_sync_engines(url, echo)
            if sync_engines is not None:
                (
                    self.sync_write_engine,
                    self.brief_engine,
                    self.sync_read_engine,
                    self.lookup_engine,
                ) = sync_engines
                self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="caducee-db-writer")
        else:
            self.kind = "postgresql"
            self.write_engine = create_async_engine(
                url, echo=echo, pool_size=pool_size, max_overflow=pool_size
            )
            # One pool for all three (asyncpg's isolation level is set client-side, no round trip):
            # half the connections a pool of its own for lookups needed, for the same throughput.
            # A read transaction is one snapshot on either engine (read-only ones never fail there).
            self.read_engine = self.write_engine.execution_options(isolation_level="REPEATABLE READ")
            self.async_lookup_engine = self.write_engine.execution_options(isolation_level="AUTOCOMMIT")
            _ping_when_idle(self.write_engine)
        self._write = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self._writer = asyncio.Lock() if self.kind == "sqlite" else None
        self._read = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @asynccontextmanager
    async def write(self, *, brief: bool = False) -> AsyncIterator[WriteSession]:
        """``_write_transaction``, timed (``observe("write", seconds)``), commit included."""
        started = time.perf_counter()
        try:
            async with self._write_transaction(brief=brief) as session:
                yield session
        finally:
            self.observe("write", time.perf_counter() - started)

    @asynccontextmanager
    async def _write_transaction(self, *, brief: bool = False) -> AsyncIterator[WriteSession]:
        """A write transaction: committed on normal exit, rolled back on any exception.

        ``brief``: bounded work (one command's messages, one folder, one login): on SQLite its
        statements run on the event loop and only its COMMIT in the writer thread, as with
        ``run_write(brief=True)``; otherwise (or when BEGIN would wait) through aiosqlite.
        """
        if self._writer is None:
            async with self._write() as session, session.begin():
                yield session
            return
        async with self._writer:
            sync = self._begin_brief() if brief else None
            if sync is None:
                async with self._write() as session, session.begin():
                    yield session
                return
            try:
                yield SyncWriteSession(sync.connection(), sync)
            except BaseException:
                sync.close()  # rolls back: nothing was written to disk yet
                raise
            await self._commit_brief(sync)

    async def run_write(self, work: Callable[[Session], T], *, brief: bool = False) -> T:
        """Run ``work`` (synchronous code) as one write transaction: committed when it returns,
        rolled back if it raises.

        For the hot write paths (group commit of deliveries, STORE, audit events). On SQLite the whole
        transaction runs in the writer thread on a synchronous connection: one thread hop instead of
        several per statement, each of which, under load, waits its turn on a busy event loop; with
        ``brief`` only its COMMIT does (see the invariants). On PostgreSQL (or an in-memory SQLite
        database) it runs through ``AsyncSession.run_sync``.
        """
        if self._writer_thread is None or self._writer is None:
            async with self.write() as session:
                return await session.run_sync(work)
        started = time.perf_counter()
        try:
            if brief:
                return await self._run_brief(work)
            async with self._writer:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._writer_thread, self._transaction, work)
        finally:
            self.observe("write", time.perf_counter() - started)

    async def _run_brief(self, work: Callable[[Session], T]) -> T:
        """Group commit of brief transactions: those that arrive while a COMMIT is in flight share the
        next transaction, each in its own savepoint (one that raises is rolled back alone), and its
        single COMMIT. Once queued, a transaction is committed even if its caller is cancelled (the
        committer, not the caller, runs it; a cancelled caller's future is simply not settled)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._brief_queue.append((work, done))
        if self._brief_committer is None or self._brief_committer.done():
            self._brief_committer = asyncio.create_task(self._commit_brief_queue())
        return await done

    async def _commit_brief_queue(self) -> None:
        while self._brief_queue:
            batch, self._brief_queue = self._brief_queue, []
            try:
                await self._commit_brief_batch(batch)
            except BaseException:  # cancelled (shutdown): nobody is left waiting forever
                batch += self._brief_queue  # queued meanwhile: never run now
                self._brief_queue = []
                for _work, done in batch:
                    done.cancel()
                raise

    async def _commit_brief_batch(self, batch: list[_Queued]) -> None:
        """Each caller's future is settled from the COMMIT's completion callback itself: under load,
        every extra hop (committer task, then caller) is a full turn of a busy event loop."""
        async with self._writer:
            session = self._begin_brief()
            if session is None:  # another process is writing: each in the writer thread, which waits
                for work, done in batch:
                    _settle(done, await self._outcome_in_thread(work))
                return
            try:
                outcomes = [_in_savepoint(session, work) for work, _done in batch]
            except BaseException:  # not an error of one work (those are outcomes): give up the transaction
                session.close()
                raise

            def settle(error: BaseException | None) -> None:
                for (_work, done), outcome in zip(batch, outcomes, strict=True):
                    _settle(done, outcome if error is None else (False, error))

            try:
                await self._commit_brief(session, settle)
            except Exception as exc:  # a failed COMMIT, or one never begun, is every caller's outcome
                settle(exc)

    async def _outcome_in_thread(self, work: Callable[[Session], Any]) -> _Outcome:
        assert self._writer_thread is not None
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._writer_thread, self._transaction, work
            )
        except Exception as exc:
            return False, exc
        return True, result

    def _begin_brief(self) -> Session | None:
        """A transaction begun on the brief connection; None when it must go elsewhere: an in-memory
        database, another process holding the lock, or a COMMIT of ours still in the writer thread
        (its caller was cancelled meanwhile and released the lock: the connection is still in use)."""
        if self.brief_engine is None or not (self._brief_commit is None or self._brief_commit.done()):
            return None
        session = Session(self.brief_engine, expire_on_commit=False)
        try:
            session.connection()  # BEGIN IMMEDIATE, busy timeout 0
        except OperationalError:
            session.close()
            return None
        return session

    async def _commit_brief(
        self, session: Session, committed: Callable[[BaseException | None], None] | None = None
    ) -> None:
        """From here the session belongs to the writer thread, which commits and closes it even if we
        are cancelled meanwhile: what we await is a future of our own, not chained to the work item
        (a cancelled work item would never run), and set straight from the thread's completion, which
        saves the busy event loop a round of callbacks per COMMIT. ``committed`` is called there too,
        with the COMMIT's error or None."""
        assert self._writer_thread is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished(work: concurrent.futures.Future[None]) -> None:  # on the loop
            try:
                if committed is not None:
                    committed(work.exception())
            finally:  # whatever happened there, the committer goes on
                _copy_outcome(work, done)

        try:
            self._brief_commit = self._writer_thread.submit(_commit, session)
        except BaseException:  # never reached the thread (shut down): roll back, free the write lock
            session.close()
            raise
        self._brief_commit.add_done_callback(lambda work: loop.call_soon_threadsafe(finished, work))
        await done

    def _transaction(self, work: Callable[[Session], T]) -> T:  # in the writer thread
        with Session(self.sync_write_engine, expire_on_commit=False) as session, session.begin():
            return work(session)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[ReadSession]:
        """A read-only transaction: one snapshot for all its statements.

        On SQLite (a file) it runs synchronously on the event loop, on a read-only connection: in WAL
        mode a read never waits for a writer, and the trip through aiosqlite's thread and the async
        session (a thread hop and greenlet switches per statement, BEGIN and ROLLBACK included) cost
        ~1.4 ms of latency for a one-statement transaction, against ~0.1 ms here. Scans run here too,
        so queries stay indexed (see the models).
        """
        started = time.perf_counter()
        try:
            if self.sync_read_engine is None:
                async with self._read() as session, session.begin():
                    yield session
                return
            with self.sync_read_engine.connect() as connection, connection.begin():
                session = SyncReadSession(connection)
                try:
                    yield session
                finally:
                    session.close()
        finally:
            self.observe("read", time.perf_counter() - started)

    async def read_one(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)``, a function of Core statements (``mailserver.store.queries``) that
        reads with one statement, or several each right on its own (immutable rows): outside a
        transaction, each statement its own snapshot, so no BEGIN and COMMIT, which on PostgreSQL are
        two of the three round trips of such a read. Never for reads that must agree with each other
        (a folder's UIDNEXT and its messages): ``read()``."""
        started = time.perf_counter()
        try:
            if self.lookup_engine is not None:
                with self.lookup_engine.connect() as connection:
                    return fn(connection, *args)
            if self.async_lookup_engine is not None:
                async with self.async_lookup_engine.connect() as connection:
                    return await connection.run_sync(fn, *args)
            async with self.read() as session:  # in-memory SQLite
                return await run_core(session, fn, *args)
        finally:
            self.observe("read", time.perf_counter() - started)

    @asynccontextmanager
    async def lookup(self) -> AsyncIterator[Reader]:
        """Point reads for a protocol command, each statement its own snapshot (see the invariants):
        no transaction around them, so no BEGIN/ROLLBACK round trips on PostgreSQL either."""
        if self.lookup_engine is None:
            if self.async_lookup_engine is not None:
                async with self.async_lookup_engine.connect() as connection:
                    yield connection
                return
            async with self.read_engine.connect() as connection:  # in-memory SQLite
                yield await connection.execution_options(isolation_level="AUTOCOMMIT")
            return
        with self.lookup_engine.connect() as connection:
            yield LookupConnection(connection)

    async def close(self) -> None:
        if self._brief_committer is not None:  # what was queued is committed before the engines go
            await asyncio.gather(self._brief_committer, return_exceptions=True)
        if self._writer_thread is not None:
            self._writer_thread.shutdown(wait=True)
        for engine in (self.lookup_engine, self.sync_read_engine, self.brief_engine, self.sync_write_engine):
            if engine is not None:
                engine.dispose()
        await self.write_engine.dispose()  # on PostgreSQL, the pool of all three
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()
