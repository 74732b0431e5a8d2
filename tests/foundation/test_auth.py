"""Authentication: passwords, application passwords, lock-out per account and per address, audit."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from sqlalchemy import text, update

from mailserver import accounts
from mailserver.audit import Audit
from mailserver.auth import Authenticator
from mailserver.db import migrate
from mailserver.db.engine import Database
from mailserver.db.models import AuthFailure
from mailserver.runtime import Runtime
from tests.conftest import make_settings

PASSWORD = "correct horse battery"


async def test_password_and_app_password(runtime: Runtime) -> None:
    await accounts.add_mailbox(
        runtime, "dr.martin@a.mssante.test", "PER", rpps="10000000009", password=PASSWORD
    )
    ok = await runtime.auth.authenticate("Dr.Martin@a.mssante.test", PASSWORD, "127.0.0.1", "imap")
    assert ok.ok and ok.address == "dr.martin@a.mssante.test"
    assert (
        await runtime.auth.authenticate("dr.martin@a.mssante.test", "wrong", "127.0.0.1", "imap")
    ).reason == "invalid"

    app_id, secret = await accounts.add_app_password(runtime, "dr.martin@a.mssante.test", "phone")
    assert (await runtime.auth.authenticate("dr.martin@a.mssante.test", secret, "127.0.0.1", "smtp")).ok
    apps = await accounts.list_app_passwords(runtime, "dr.martin@a.mssante.test")
    assert apps[0].last_used_at is not None
    await accounts.revoke_app_password(runtime, "dr.martin@a.mssante.test", app_id)
    assert not (await runtime.auth.authenticate("dr.martin@a.mssante.test", secret, "127.0.0.1", "smtp")).ok

    events = await runtime.audit.events(actor="dr.martin@a.mssante.test")
    assert [e.action for e in events] == ["login", "login-failure", "login", "login-failure"]
    assert all(PASSWORD not in e.request + e.response and secret not in e.request for e in events)


async def test_unknown_and_disabled_accounts(runtime: Runtime) -> None:
    assert (
        await runtime.auth.authenticate("nobody@a.mssante.test", "x", "127.0.0.1", "imap")
    ).reason == "invalid"
    await accounts.add_mailbox(runtime, "off@a.mssante.test", "ORG", password=PASSWORD)
    await accounts.set_enabled(runtime, "off@a.mssante.test", False)
    assert (
        await runtime.auth.authenticate("off@a.mssante.test", PASSWORD, "127.0.0.1", "imap")
    ).reason == "disabled"


async def test_account_lockout_then_expiry(runtime: Runtime) -> None:
    await accounts.add_mailbox(runtime, "target@a.mssante.test", "ORG", password=PASSWORD)
    limit = runtime.settings.auth.max_failures
    for i in range(limit):
        r = await runtime.auth.authenticate("target@a.mssante.test", "guess", f"10.0.0.{i}", "imap")
        assert r.reason == "invalid"
    # Locked: even the right password is refused, from any address.
    assert (
        await runtime.auth.authenticate("target@a.mssante.test", PASSWORD, "127.0.0.9", "imap")
    ).reason == "locked"
    async with runtime.db.write() as session:
        await session.execute(
            update(AuthFailure).values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    assert (await runtime.auth.authenticate("target@a.mssante.test", PASSWORD, "127.0.0.9", "imap")).ok


async def test_client_address_lockout(runtime: Runtime) -> None:
    runtime.settings.auth.max_failures_per_ip = 10
    await accounts.add_mailbox(runtime, "victim@a.mssante.test", "ORG", password=PASSWORD)
    for i in range(runtime.settings.auth.max_failures_per_ip):
        await runtime.auth.authenticate(f"user{i}@a.mssante.test", "guess", "192.0.2.7", "smtp")
    r = await runtime.auth.authenticate("victim@a.mssante.test", PASSWORD, "192.0.2.7", "smtp")
    assert r.reason == "locked"
    assert (await runtime.auth.authenticate("victim@a.mssante.test", PASSWORD, "192.0.2.8", "smtp")).ok


async def test_main_password_login_leaves_application_passwords_alone(runtime: Runtime) -> None:
    """Issue 13 §6: the main password matched used to come back as ``True``, an ``int``, so every login
    stamped application password id 1 (whoever owned it) and was audited as "(application password)"."""
    await accounts.add_mailbox(runtime, "other@a.mssante.test", "ORG", password="other password")
    app_id, secret = await accounts.add_app_password(runtime, "other@a.mssante.test", "phone")
    assert app_id == 1
    await accounts.add_mailbox(runtime, "dr.martin@a.mssante.test", "ORG", password=PASSWORD)

    assert (await runtime.auth.authenticate("dr.martin@a.mssante.test", PASSWORD, "127.0.0.1", "imap")).ok
    [other_app] = await accounts.list_app_passwords(runtime, "other@a.mssante.test")
    assert other_app.last_used_at is None
    [login] = await runtime.audit.events(actor="dr.martin@a.mssante.test", action="login")
    assert login.request == "imap login (password)"

    assert (await runtime.auth.authenticate("other@a.mssante.test", secret, "127.0.0.1", "smtp")).ok
    [other_app] = await accounts.list_app_passwords(runtime, "other@a.mssante.test")
    assert other_app.last_used_at is not None
    [login] = await runtime.audit.events(actor="other@a.mssante.test", action="login")
    assert login.request == 'smtp login (application password "phone")'


async def test_parallel_guesses_across_nodes_stay_within_the_limit(runtime: Runtime) -> None:
    """Issue 13 §7: the lock-out was check-then-act, so a burst of guesses was verified whole. Each
    attempt now reserves its place in the database first; two nodes (two engines on one database)
    guessing at once still get ``max_failures`` verifications between them."""
    await accounts.add_mailbox(runtime, "target@a.mssante.test", "ORG", password=PASSWORD)
    second_db = Database(runtime.settings.database.url)
    second = Authenticator(second_db, runtime.settings.auth, Audit(second_db), runtime.passwords)
    verified: list[str] = []
    real = runtime.passwords.verify

    def counting(hashed: str | None, password: str) -> bool:
        verified.append(password)
        return real(hashed, password)

    runtime.passwords.verify = counting  # type: ignore[method-assign]
    try:
        outcomes = await asyncio.gather(
            *(
                node.authenticate("target@a.mssante.test", f"guess {i}", f"10.0.1.{i}", "imap")
                for i in range(20)
                for node in (runtime.auth, second)
            )
        )
    finally:
        await second_db.close()
    limit = runtime.settings.auth.max_failures
    assert len(verified) == limit
    assert sorted(o.reason for o in outcomes) == ["invalid"] * limit + ["locked"] * (40 - limit)
    assert (
        await runtime.auth.authenticate("target@a.mssante.test", PASSWORD, "127.0.0.9", "imap")
    ).reason == "locked"
    assert len(verified) == limit


async def test_a_burst_of_right_passwords_from_one_address_all_get_in(runtime: Runtime) -> None:
    """Places in the lock-out counters are taken before verifying, so logins waiting for a verification
    would fill them: a hospital (one NAT address) whose clients all log in at once, several of them as
    the same clinician, would be refused as locked. At most ``auth.concurrent_verifications`` attempts
    hold a place at a time per process; the others wait their turn."""
    runtime.settings.auth.max_failures_per_ip = 20
    await accounts.add_mailbox(runtime, "dr.martin@a.mssante.test", "ORG", password=PASSWORD)
    others = [f"dr.{i}@a.mssante.test" for i in range(25)]
    for address in others:
        await accounts.add_mailbox(runtime, address, "ORG", password=PASSWORD)
    logins = ["dr.martin@a.mssante.test"] * 8 + others  # more than max_failures, and max_failures_per_ip
    assert len(logins) > runtime.settings.auth.max_failures_per_ip
    outcomes = await asyncio.gather(
        *(runtime.auth.authenticate(address, PASSWORD, "192.0.2.50", "imap") for address in logins)
    )
    assert [o.reason for o in outcomes] == [""] * len(logins)


async def test_a_lock_set_while_a_cached_login_clears_the_counter_is_kept(
    pg_url: str, tmp_path: Path
) -> None:
    """A cache hit clears the account's failures with a DELETE that spares a lock-out: another node
    that locks the account between the hit's check and its DELETE keeps its lock. On PostgreSQL the
    two interleave for real (the other node's UPDATE holds the row, the hit's DELETE waits for it, then
    re-checks its condition on the committed row); SQLite's one write lock cannot interleave them."""
    await migrate.upgrade_async(pg_url)
    rt = Runtime.build(make_settings(tmp_path, pg_url))
    other_db = Database(pg_url)
    try:
        await accounts.add_domain(rt, "a.mssante.test", patients=False)
        await accounts.add_mailbox(rt, "target@a.mssante.test", "ORG", password=PASSWORD)
        assert (await rt.auth.authenticate("target@a.mssante.test", PASSWORD, "127.0.0.1", "imap")).ok
        key = "mailbox:target@a.mssante.test"
        async with rt.db.write() as session:
            session.add(AuthFailure(key=key, count=2, window_start=dt.datetime.now(dt.UTC)))
        until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)
        async with other_db.write() as other:
            await other.execute(update(AuthFailure).where(AuthFailure.key == key).values(locked_until=until))
            login = asyncio.create_task(
                rt.auth.authenticate("target@a.mssante.test", PASSWORD, "127.0.0.2", "imap")
            )
            async with asyncio.timeout(20):
                while True:  # until the hit's DELETE waits for the row the other node holds
                    async with rt.db.read() as s:
                        waiting = (
                            await s.execute(
                                text(
                                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                    " AND query LIKE 'DELETE FROM auth_failure%'"
                                )
                            )
                        ).scalar_one()
                    if waiting or login.done():
                        break
                    await asyncio.sleep(0.01)
            assert not login.done()
        assert (await login).ok  # judged before the lock was committed
        async with rt.db.read() as s:
            row = await s.get(AuthFailure, key)
        assert row is not None and row.locked_until is not None
        assert (
            await rt.auth.authenticate("target@a.mssante.test", PASSWORD, "127.0.0.1", "imap")
        ).reason == "locked"
    finally:
        await other_db.close()
        await rt.close()
