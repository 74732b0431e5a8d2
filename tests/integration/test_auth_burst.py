"""Issue 13 §7: a burst of wrong passwords over real IMAP and SMTP AUTH connections gets no more than
``auth.max_failures`` verifications, and the right password sent while they run is refused as locked.

Every password verification is held (counted, then blocked) until the burst has settled, i.e. until each
guess is either answered or inside a verification: with the old check-then-act lock-out every guess
passed the check before any failure was counted, so more than ``max_failures`` verifications began.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Awaitable, Callable

import pytest

from mailserver import accounts
from mailserver.runtime import Runtime
from tests.imap.conftest import MARTIN as IMAP_USER
from tests.imap.conftest import PASSWORD as IMAP_PASSWORD
from tests.imap.conftest import IMAPEnv
from tests.imap.helpers import Client
from tests.smtp.conftest import MARTIN as SMTP_USER
from tests.smtp.conftest import PASSWORD as SMTP_PASSWORD
from tests.smtp.conftest import Raw, SMTPEnv

Attempt = Callable[[str], Awaitable[str]]


async def burst(rt: Runtime, attempt: Attempt, guesses: int, right: str) -> tuple[list[str], str, int]:
    """``guesses`` wrong passwords at once, then ``right`` while their verifications are held; returns
    the answers to the guesses, the answer to the right password and how many verifications ran."""
    loop = asyncio.get_running_loop()
    limit = rt.settings.auth.max_failures
    # Every guess may be verified at once, as on as many nodes: the counters alone must hold them back.
    rt.settings.auth.concurrent_verifications = guesses + 1
    verified: list[str] = []
    release = threading.Event()
    progress = asyncio.Event()
    real = rt.passwords.verify

    def held(hashed: str | None, password: str) -> bool:
        verified.append(password)
        loop.call_soon_threadsafe(progress.set)
        release.wait(60)
        return real(hashed, password)

    rt.passwords.verify = held  # type: ignore[method-assign]
    tasks = [asyncio.create_task(attempt(f"guess {i}")) for i in range(guesses)]
    for task in tasks:
        task.add_done_callback(lambda _task: progress.set())
    try:
        async with asyncio.timeout(60):
            while True:
                progress.clear()
                assert len(verified) <= limit, f"{len(verified)} guesses verified at once (limit {limit})"
                if sum(t.done() for t in tasks) + len(verified) == guesses:
                    break
                await progress.wait()
            answer = await attempt(right)
    finally:
        release.set()
        answers = await asyncio.gather(*tasks)
        rt.passwords.verify = real  # type: ignore[method-assign]
    return answers, answer, len(verified)


async def imap_login(env: IMAPEnv, password: str) -> str:
    """LOGIN on a fresh implicit-TLS connection; the response code of the tagged answer."""
    client = await Client.connect(env.tls_port, env.ctx)
    try:
        lines = await client.command(f'LOGIN "{IMAP_USER}" "{password}"', wait=60)
        return lines[-1].split()[2]
    finally:
        await client.close()


async def smtp_auth(env: SMTPEnv, password: str) -> str:
    """AUTH PLAIN on a fresh implicit-TLS submission connection; the reply's code and enhanced code."""
    raw = await Raw.connect(env.ports["submissions"], env.user())
    try:
        await raw.cmd("EHLO client.a.mssante.test")
        plain = base64.b64encode(f"\0{SMTP_USER}\0{password}".encode()).decode()
        await raw.send(f"AUTH PLAIN {plain}\r\n")
        line = (await asyncio.wait_for(raw.reader.readline(), 60)).decode()
        return " ".join(line.split()[:2])
    finally:
        await raw.close()


@pytest.mark.parametrize("guesses", [20, 50])
async def test_imap_login_burst(imap_both: IMAPEnv, guesses: int) -> None:
    env, limit = imap_both, imap_both.rt.settings.auth.max_failures
    answers, right, verified = await burst(env.rt, lambda p: imap_login(env, p), guesses, IMAP_PASSWORD)
    assert verified == limit
    assert sorted(answers) == ["[AUTHENTICATIONFAILED]"] * limit + ["[UNAVAILABLE]"] * (guesses - limit)
    assert right == "[UNAVAILABLE]"
    assert await imap_login(env, IMAP_PASSWORD) == "[UNAVAILABLE]"  # still locked afterwards
    events = await env.rt.audit.events(actor=IMAP_USER, action="login-failure")
    assert sorted(e.response for e in events) == ["invalid credentials"] * limit + ["locked"] * (
        guesses - limit + 2
    )


async def test_smtp_auth_burst(smtp_env: SMTPEnv) -> None:
    env, limit = smtp_env, smtp_env.rt.settings.auth.max_failures
    answers, right, verified = await burst(env.rt, lambda p: smtp_auth(env, p), 20, SMTP_PASSWORD)
    assert verified == limit
    assert sorted(answers) == ["454 4.7.0"] * (20 - limit) + ["535 5.7.8"] * limit
    assert right == "454 4.7.0"


async def test_a_hospital_logging_in_at_once(imap_both: IMAPEnv) -> None:
    """The other side of reserving places: 8 connections of one clinician and 25 colleagues, all from the
    hospital's one address at once (more than max_failures, and than max_failures_per_ip), all get in."""
    env = imap_both
    env.rt.settings.auth.max_failures_per_ip = 20
    colleagues = [f"dr.{i}@a.mssante.test" for i in range(25)]
    for address in colleagues:
        await accounts.add_mailbox(env.rt, address, "ORG", password=IMAP_PASSWORD)

    async def login(user: str) -> Client:
        client = await Client.connect(env.tls_port, env.ctx)
        await client.login(user, IMAP_PASSWORD)
        return client

    clients = await asyncio.gather(*(login(user) for user in [IMAP_USER] * 8 + colleagues))
    for client in clients:
        await client.close()
