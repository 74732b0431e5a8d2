"""A password the credential cache knows (``Authenticator._known_login``): one write transaction, no
place in the lock-out counters, and still refused when the account is locked or disabled, by this
node or another (a second ``Authenticator`` on its own engines), or changed between the read and the
write. Write transactions are counted with SQLAlchemy's engine events (COMMIT, ROLLBACK) on every
engine of the database, and their statements where every statement goes, hot path included (it runs
straight on the DB-API cursor, ``mailserver.db.prepared``, which engine events do not see): each
SQLite connection's statement trace, the cursor of SQLAlchemy's asyncpg adapter."""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_cursor
from sqlalchemy.engine import Engine

from mailserver.audit import Audit
from mailserver.auth import Authenticator
from mailserver.db.engine import Database
from mailserver.db.models import AuthFailure, Mailbox
from mailserver.runtime import Runtime
from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv

WRITES = ("INSERT", "UPDATE", "DELETE")


def engines(db: Database) -> list[Engine]:
    found = [db.sync_write_engine, db.brief_engine, db.sync_read_engine, db.lookup_engine]
    found += [e.sync_engine for e in (db.write_engine, db.read_engine, db.async_lookup_engine) if e]
    return list({id(e): e for e in found if e is not None}.values())


@pytest.fixture
def write_transactions(imap_both: IMAPEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Every committed transaction that wrote, as the list of its writing statements (keyed by the
    DB-API connection, which both the engine events and SQLite's trace callback name)."""
    committed: list[list[str]] = []
    pending: dict[int, list[str]] = {}

    def seen(key: int, statement: str) -> None:
        if statement.lstrip().upper().startswith(WRITES):
            pending.setdefault(key, []).append(statement.split("(")[0].strip())

    def executed(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        dbapi_connection = conn.connection.dbapi_connection
        traced = hasattr(dbapi_connection, "set_trace_callback") or conn.dialect.name == "postgresql"
        if not traced:  # aiosqlite's adapter: else the trace or the cursor below sees it, and more
            seen(id(dbapi_connection), statement)

    for method in ("execute", "executemany"):
        real = getattr(AsyncAdapt_asyncpg_cursor, method)

        def tracing(cursor: Any, operation: str, *args: Any, real: Any = real) -> Any:
            seen(id(cursor._adapt_connection), operation)  # the DB-API connection of the events
            return real(cursor, operation, *args)

        monkeypatch.setattr(AsyncAdapt_asyncpg_cursor, method, tracing)

    def checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if hasattr(dbapi_connection, "set_trace_callback"):  # sqlite3's, not aiosqlite's adapter
            key = id(dbapi_connection)
            dbapi_connection.set_trace_callback(lambda statement: seen(key, statement))

    def checkin(dbapi_connection: Any, _record: Any) -> None:
        if hasattr(dbapi_connection, "set_trace_callback"):
            dbapi_connection.set_trace_callback(None)

    def commit(conn: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        if key in pending:
            committed.append(pending.pop(key))

    def rollback(conn: Any) -> None:
        pending.pop(id(conn.connection.dbapi_connection), None)

    hooks = [("before_cursor_execute", executed), ("commit", commit), ("rollback", rollback)]
    sqlite_hooks = [("checkout", checkout), ("checkin", checkin)]
    targets = engines(imap_both.rt.db)
    for engine in targets:
        for name, fn in hooks + (sqlite_hooks if engine.dialect.name == "sqlite" else []):
            event.listen(engine, name, fn)
    yield committed
    for engine in targets:
        for name, fn in hooks + (sqlite_hooks if engine.dialect.name == "sqlite" else []):
            event.remove(engine, name, fn)


@pytest.fixture
def argon2_calls(imap_both: IMAPEnv) -> Iterator[list[str]]:
    calls: list[str] = []
    passwords = imap_both.rt.passwords
    real = passwords.verify

    def counting(hashed: str | None, password: str) -> bool:
        calls.append(password)
        return real(hashed, password)

    passwords.verify = counting  # type: ignore[method-assign]
    yield calls
    passwords.verify = real  # type: ignore[method-assign]


def imap_login(env: IMAPEnv, user: str, password: str) -> str:
    m = imaplib.IMAP4_SSL("127.0.0.1", env.tls_port, ssl_context=env.ctx)
    try:
        m.login(user, password)
    except imaplib.IMAP4.error as exc:
        m.shutdown()
        text = exc.args[0]
        return "NO " + (text.decode() if isinstance(text, bytes) else str(text))
    m.logout()
    return "OK"


async def counters(rt: Runtime) -> dict[str, AuthFailure]:
    async with rt.db.read() as session:
        return {r.key: r for r in (await session.execute(select(AuthFailure))).scalars()}


def held(rows: dict[str, AuthFailure]) -> dict[str, int]:
    """The places and failures counted (a counter at 0 may stay, as the full path leaves it)."""
    return {key: row.count for key, row in rows.items() if row.count or row.locked_until}


async def test_a_cache_hit_is_one_write_transaction(
    imap_both: IMAPEnv, write_transactions: list[list[str]], argon2_calls: list[str]
) -> None:
    auth = imap_both.rt.auth
    assert (await auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok
    assert len(write_transactions) == 2  # a miss: its place in the counters, then the success
    write_transactions.clear()

    assert (await auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok
    assert argon2_calls == [PASSWORD]
    assert len(write_transactions) == 1, write_transactions
    assert not any("auth_failure" in s and s.startswith("INSERT") for s in write_transactions[0])
    [*_, last] = await imap_both.rt.audit.events(actor=MARTIN, action="login")
    assert last.request == "imap login (password)" and last.response == "ok"
    assert held(await counters(imap_both.rt)) == {}


async def second_node(env: IMAPEnv) -> tuple[Database, Authenticator]:
    db = Database(env.rt.settings.database.url)
    return db, Authenticator(db, env.rt.settings.auth, Audit(db), env.rt.passwords)


async def test_a_lock_set_by_another_node_refuses_a_cached_password(
    imap_both: IMAPEnv, argon2_calls: list[str]
) -> None:
    rt = imap_both.rt
    assert await asyncio.to_thread(imap_login, imap_both, MARTIN, PASSWORD) == "OK"
    assert rt.auth.cache.knows(MARTIN)
    db, other = await second_node(imap_both)
    try:
        for i in range(rt.settings.auth.max_failures):
            assert (await other.authenticate(MARTIN, f"guess {i}", "10.9.0.1", "imap")).reason == "invalid"
    finally:
        await db.close()
    assert rt.auth.cache.knows(MARTIN)  # the other node cannot reach this one's cache
    calls = len(argon2_calls)
    reply = await asyncio.to_thread(imap_login, imap_both, MARTIN, PASSWORD)
    assert reply.startswith("NO [UNAVAILABLE]"), reply
    assert len(argon2_calls) == calls  # refused before any verification
    assert not rt.auth.cache.knows(MARTIN)
    [*_, refusal] = await rt.audit.events(actor=MARTIN, action="login-failure")
    assert refusal.response == "locked"
    assert (await counters(rt))[f"mailbox:{MARTIN}"].locked_until is not None


async def test_disabled_by_another_node_refuses_a_cached_password(imap_both: IMAPEnv) -> None:
    rt = imap_both.rt
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok
    db = Database(rt.settings.database.url)
    try:
        async with db.write() as session:
            await session.execute(update(Mailbox).where(Mailbox.address == MARTIN).values(enabled=False))
    finally:
        await db.close()
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).reason == "disabled"
    [*_, refusal] = await rt.audit.events(actor=MARTIN, action="login-failure")
    assert refusal.response == "mailbox disabled"


@pytest.mark.parametrize("change", ["password", "lock"])
async def test_a_change_between_the_read_and_the_write(
    imap_both: IMAPEnv, argon2_calls: list[str], change: str
) -> None:
    """What another writer commits after the cache hit was judged on the rows read, but before its
    write transaction, is seen by that transaction: a new password sends the login down the full path
    (argon2 against the new hash: refused), a lock-out refuses it."""
    rt = imap_both.rt
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok
    real = rt.auth._accept_known

    def meanwhile(session: Any, *args: Any) -> Any:
        if change == "password":
            new = rt.passwords.hash("Changed-Meanwhile-2026")
            session.execute(update(Mailbox).where(Mailbox.address == MARTIN).values(password_hash=new))
        else:
            until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
            session.add(AuthFailure(key=f"mailbox:{MARTIN}", count=5, locked_until=until))
            session.flush()
        return real(session, *args)

    rt.auth._accept_known = meanwhile  # type: ignore[method-assign]
    try:
        outcome = await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")
    finally:
        rt.auth._accept_known = real  # type: ignore[method-assign]
    assert not outcome.ok
    assert outcome.reason == ("invalid" if change == "password" else "locked")
    assert len(argon2_calls) == (2 if change == "password" else 1)
    assert not rt.auth.cache.knows(MARTIN)


async def test_near_the_limit(imap_both: IMAPEnv, argon2_calls: list[str]) -> None:
    """One failure short of the limit, a cached password gets in and clears the account's counter
    without touching the address's (it took no place there); at the limit the account is locked and
    the cached password refused; once the lock-out is served the cached password gets in again."""
    rt = imap_both.rt
    limit = rt.settings.auth.max_failures
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok
    for i in range(limit - 1):
        assert (await rt.auth.authenticate(MARTIN, f"guess {i}", "10.9.0.2", "imap")).reason == "invalid"
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok  # re-verified once
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok  # cached
    assert argon2_calls.count(PASSWORD) == 2
    rows = await counters(rt)
    assert f"mailbox:{MARTIN}" not in rows and rows["ip:10.9.0.2"].count == limit - 1
    assert rows.get("ip:127.0.0.1") is None or rows["ip:127.0.0.1"].count == 0

    # Failures counted by another node leave this node's cache warm: one short, the hit gets in and
    # clears them; at the limit (the lock-out starts there) it is refused; once served it gets in.
    now = dt.datetime.now(dt.UTC)
    async with rt.db.write() as session:
        session.add(AuthFailure(key=f"mailbox:{MARTIN}", count=limit - 1, window_start=now))
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok
    assert f"mailbox:{MARTIN}" not in await counters(rt)
    async with rt.db.write() as session:
        until = now + dt.timedelta(seconds=rt.settings.auth.lockout)
        session.add(AuthFailure(key=f"mailbox:{MARTIN}", count=limit, window_start=now, locked_until=until))
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).reason == "locked"
    async with rt.db.write() as session:
        await session.execute(
            update(AuthFailure)
            .where(AuthFailure.key == f"mailbox:{MARTIN}")
            .values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok  # re-verified
    assert (await rt.auth.authenticate(MARTIN, PASSWORD, "127.0.0.1", "imap")).ok  # cached again
    assert argon2_calls.count(PASSWORD) == 3
    assert f"mailbox:{MARTIN}" not in await counters(rt)


async def test_a_burst_of_logins_with_a_warm_cache(imap_both: IMAPEnv, argon2_calls: list[str]) -> None:
    """30 imaplib clients from one address logging in at once as one clinician, with one verification
    at a time allowed: all get in, argon2 runs once, every login is audited, no counter is left."""
    rt = imap_both.rt
    rt.auth.settings.concurrent_verifications = 1
    assert await asyncio.to_thread(imap_login, imap_both, MARTIN, PASSWORD) == "OK"
    replies = await asyncio.gather(
        *(asyncio.to_thread(imap_login, imap_both, MARTIN, PASSWORD) for _ in range(30))
    )
    assert replies == ["OK"] * 30
    assert argon2_calls == [PASSWORD]
    assert len(await rt.audit.events(actor=MARTIN, action="login")) == 31
    assert held(await counters(rt)) == {}
