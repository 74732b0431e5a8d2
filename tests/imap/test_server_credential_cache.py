"""The verified-credential cache (mailserver/credential_cache.py) seen through IMAP LOGIN with imaplib:
a repeated right password skips argon2, a wrong one is still verified and counted for the lock-out,
and a password change, an application password revoked or a mailbox disabled take effect at once, in
this process and from an admin CLI run in another process (which cannot touch this one's memory)."""

from __future__ import annotations

import asyncio
import imaplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailserver import accounts
from mailserver.credential_cache import CredentialCache
from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv

CADUCEE = str(Path(sys.executable).with_name("caducee"))


@pytest.fixture
def argon2_calls(imap_both: IMAPEnv) -> Iterator[list[str]]:
    """Every argon2 verification the server runs, counted where it happens (the passwords hasher)."""
    calls: list[str] = []
    passwords = imap_both.rt.passwords
    real = passwords.verify

    def counting(hashed: str | None, password: str) -> bool:
        calls.append(password)
        return real(hashed, password)

    passwords.verify = counting  # type: ignore[method-assign]
    yield calls
    passwords.verify = real  # type: ignore[method-assign]


async def login(env: IMAPEnv, user: str, password: str) -> str:
    """LOGIN over implicit TLS with imaplib; the tagged answer's first word (OK or NO) and its code."""

    def run() -> str:
        m = imaplib.IMAP4_SSL("127.0.0.1", env.tls_port, ssl_context=env.ctx)
        try:
            m.login(user, password)
        except imaplib.IMAP4.error as exc:
            m.shutdown()
            text = exc.args[0]
            return "NO " + (text.decode() if isinstance(text, bytes) else str(text))
        m.logout()
        return "OK"

    return await asyncio.to_thread(run)


def cli(env: IMAPEnv, tmp_path: Path, *args: str, stdin: str | None = None) -> str:
    """An admin ``caducee`` process on the same database as the server."""
    config = tmp_path / "cli.toml"
    s = env.rt.settings
    config.write_text(
        f'[server]\nhostname = "{s.server.hostname}"\n[database]\nurl = "{s.database.url}"\n'
        f'[storage]\npath = "{s.storage.path}"\n'
        f"[auth]\nargon2_time_cost = {s.auth.argon2_time_cost}\n"
        f"argon2_memory_kib = {s.auth.argon2_memory_kib}\n"
    )
    r = subprocess.run(
        [CADUCEE, "--config", str(config), *args], input=stdin, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


async def test_second_login_skips_argon2_and_a_wrong_password_is_still_verified(
    imap_both: IMAPEnv, argon2_calls: list[str]
) -> None:
    assert await login(imap_both, MARTIN, PASSWORD) == "OK"
    assert await login(imap_both, MARTIN, PASSWORD) == "OK"
    assert await login(imap_both, MARTIN.upper(), PASSWORD) == "OK"
    assert argon2_calls == [PASSWORD]
    [*_, last] = await imap_both.rt.audit.events(actor=MARTIN, action="login")
    assert last.request == "imap login (password)"

    assert (await login(imap_both, MARTIN, "wrong password")).startswith("NO [AUTHENTICATIONFAILED]")
    assert argon2_calls == [PASSWORD, "wrong password"]
    assert len(await imap_both.rt.audit.events(actor=MARTIN, action="login-failure")) == 1
    # A failure drops the account's entries: the next right password pays argon2 once more.
    assert await login(imap_both, MARTIN, PASSWORD) == "OK"
    assert argon2_calls == [PASSWORD, "wrong password", PASSWORD]


async def test_wrong_passwords_still_lock_out_a_cached_account(
    imap_both: IMAPEnv, argon2_calls: list[str]
) -> None:
    assert await login(imap_both, MARTIN, PASSWORD) == "OK"
    for i in range(imap_both.rt.settings.auth.max_failures):
        assert (await login(imap_both, MARTIN, f"guess {i}")).startswith("NO [AUTHENTICATIONFAILED]")
    assert len(argon2_calls) == 1 + imap_both.rt.settings.auth.max_failures
    assert (await login(imap_both, MARTIN, PASSWORD)).startswith("NO [UNAVAILABLE]")
    assert MARTIN not in {address for address, _ in imap_both.rt.auth.cache._entries}


async def test_password_change_revoke_and_disable_in_this_process(
    imap_both: IMAPEnv, argon2_calls: list[str]
) -> None:
    rt = imap_both.rt
    app_id, secret = await accounts.add_app_password(rt, MARTIN, "phone")
    for _ in range(2):
        assert await login(imap_both, MARTIN, PASSWORD) == "OK"
        assert await login(imap_both, MARTIN, secret) == "OK"
    verified = len(argon2_calls)

    await accounts.revoke_app_password(rt, MARTIN, app_id)
    assert (await login(imap_both, MARTIN, secret)).startswith("NO [AUTHENTICATIONFAILED]")
    assert len(argon2_calls) > verified

    await accounts.set_password(rt, MARTIN, "A-New-Password-2026")
    assert (await login(imap_both, MARTIN, PASSWORD)).startswith("NO [AUTHENTICATIONFAILED]")
    assert await login(imap_both, MARTIN, "A-New-Password-2026") == "OK"
    assert await login(imap_both, MARTIN, "A-New-Password-2026") == "OK"

    await accounts.set_enabled(rt, MARTIN, False)
    assert (await login(imap_both, MARTIN, "A-New-Password-2026")).startswith("NO")
    [*_, refusal] = await rt.audit.events(actor=MARTIN, action="login-failure")
    assert refusal.response == "mailbox disabled"


async def test_password_change_and_revoke_by_the_cli_in_another_process(
    imap_both: IMAPEnv, argon2_calls: list[str], tmp_path: Path
) -> None:
    """Another process (another node) cannot reach this one's cache: the entry is bound to the stored
    hash the login reads anyway, so a new hash or a deleted application password is seen at once."""
    out = cli(imap_both, tmp_path, "mailbox", "app-password", "add", MARTIN, "--label", "tablet")
    app_id, secret = int(out.split()[2]), out.splitlines()[0].rsplit(" ", 1)[1]
    for _ in range(2):
        assert await login(imap_both, MARTIN, PASSWORD) == "OK"
        assert await login(imap_both, MARTIN, secret) == "OK"
    assert argon2_calls.count(PASSWORD) == 1
    assert len(imap_both.rt.auth.cache) == 2

    cli(imap_both, tmp_path, "mailbox", "app-password", "revoke", MARTIN, str(app_id))
    assert (await login(imap_both, MARTIN, secret)).startswith("NO [AUTHENTICATIONFAILED]")
    assert await login(imap_both, MARTIN, PASSWORD) == "OK"

    cli(imap_both, tmp_path, "mailbox", "passwd", MARTIN, "--password-stdin", stdin="Cli-Password-2026\n")
    assert (await login(imap_both, MARTIN, PASSWORD)).startswith("NO [AUTHENTICATIONFAILED]")
    assert await login(imap_both, MARTIN, "Cli-Password-2026") == "OK"
    assert await login(imap_both, MARTIN, "Cli-Password-2026") == "OK"  # cached again

    cli(imap_both, tmp_path, "mailbox", "disable", MARTIN)
    assert (await login(imap_both, MARTIN, "Cli-Password-2026")).startswith("NO")
    [*_, refusal] = await imap_both.rt.audit.events(actor=MARTIN, action="login-failure")
    assert refusal.response == "mailbox disabled"


async def test_ttl_zero_disables_the_cache(imap_both: IMAPEnv, argon2_calls: list[str]) -> None:
    imap_both.rt.auth.cache.ttl = 0
    for _ in range(3):
        assert await login(imap_both, MARTIN, PASSWORD) == "OK"
    assert argon2_calls == [PASSWORD] * 3


def test_entries_expire_and_the_size_is_bounded() -> None:
    now = [1000.0]
    cache = CredentialCache(ttl=300, size=2, clock=lambda: now[0])
    cache.remember("a@x.test", "pw", None, "", "hash-a")
    assert cache.lookup("a@x.test", "pw", "hash-a", []) is not None
    assert cache.lookup("a@x.test", "other", "hash-a", []) is None
    assert cache.lookup("a@x.test", "pw", "hash-changed", []) is None
    cache.remember("a@x.test", "pw", None, "", "hash-a")
    now[0] += 301
    assert cache.lookup("a@x.test", "pw", "hash-a", []) is None
    for name in ("b", "c", "d"):
        cache.remember(f"{name}@x.test", "pw", 7, "phone", f"hash-{name}")
    assert len(cache) == 2
    assert cache.lookup("b@x.test", "pw", None, [(7, "hash-b")]) is None  # the oldest went first
    assert cache.lookup("d@x.test", "pw", None, [(7, "hash-d")]) is not None
    assert cache.lookup("d@x.test", "pw", None, [(8, "hash-d")]) is None  # that app password is gone
