"""IMAP fixtures: the listeners on free ports with the test PKI's TLS identity, and two mailboxes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailserver import accounts
from mailserver.db import migrate
from mailserver.imap import server
from mailserver.runtime import Runtime
from tests.conftest import make_settings
from tests.imap.helpers import Client, tls_client

MARTIN = "dr.martin@a.mssante.test"
SECRETARIAT = "secretariat@a.mssante.test"
PASSWORD = "Imap-Test-Password-2026"


@dataclass
class IMAPEnv:
    rt: Runtime
    pki: Any
    plain_port: int = 0
    tls_port: int = 0
    mailboxes: dict[str, int] = field(default_factory=dict)
    listeners: list[Any] = field(default_factory=list)

    @property
    def ctx(self) -> Any:
        return tls_client(self.pki)

    async def relayed(self, since: int, changes: int) -> None:
        """Wait until ``changes`` store changes made after ``since`` (a ``notifier.published`` reading)
        reached this process's sessions: immediate on SQLite, through NOTIFY on PostgreSQL."""
        async with asyncio.timeout(10):
            while True:
                if self.rt.notifier.published >= since + changes:
                    return
                await asyncio.sleep(0.01)

    async def connect(self, user: str | None = MARTIN) -> Client:
        """An implicit-TLS connection, logged in as ``user`` unless None."""
        client = await Client.connect(self.tls_port, self.ctx)
        if user is not None:
            await client.login(user, PASSWORD)
        return client

    async def deliver(self, data: bytes, address: str = MARTIN) -> None:
        """What SMTP does on final delivery, without SMTP."""
        await self.rt.store.deliver(await self.rt.store.prepare(data), [self.mailboxes[address]])


async def start_imap(rt: Runtime, pki: Any, **limits: Any) -> IMAPEnv:
    a = pki.tls["a.mssante.test"]
    rt.settings.tls.cert = str(a.chain_path)
    rt.settings.tls.key = str(a.key_path)
    rt.settings.tls.peer_ca = str(pki.peer_ca)
    rt.settings.imap.listen = ["127.0.0.1:0"]
    rt.settings.imap.tls_listen = ["127.0.0.1:0"]
    for name, value in limits.items():
        setattr(rt.settings.limits, name, value)
    env = IMAPEnv(rt, pki)
    for address in (MARTIN, SECRETARIAT):
        view = await accounts.add_mailbox(rt, address, "ORG", password=PASSWORD)
        env.mailboxes[address] = view.id
    env.listeners = await server.start(rt)
    for listener in env.listeners:
        if listener.service == "imap":
            env.plain_port = listener.port
        else:
            env.tls_port = listener.port
    return env


@contextlib.asynccontextmanager
async def running(runtime: Runtime, pki: Any, **limits: Any) -> AsyncIterator[IMAPEnv]:
    relay = None
    if runtime.db.kind == "postgresql":
        dsn = runtime.settings.database.url.replace("postgresql+asyncpg://", "postgresql://")
        relay = asyncio.create_task(runtime.notifier.listen_postgres(dsn))
        await asyncio.wait_for(runtime.notifier.listening.wait(), 10)
    env = await start_imap(runtime, pki, **limits)
    try:
        yield env
    finally:
        for listener in env.listeners:
            await listener.close()
        if relay is not None:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay


@pytest.fixture
async def imap_both(runtime: Runtime, pki: Any) -> AsyncIterator[IMAPEnv]:
    """The server on SQLite and on PostgreSQL (store-touching, multi-session tests)."""
    async with running(runtime, pki) as env:
        yield env


@pytest.fixture
async def sqlite_runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """Protocol tests: one engine is enough, SQLite is the cheap one."""
    url = f"sqlite+aiosqlite:///{tmp_path}/imap.db"
    await migrate.upgrade_async(url)
    rt = Runtime.build(make_settings(tmp_path, url, auth={"max_failures": 3}))
    await asyncio.to_thread(rt.blobs.ensure)
    await accounts.add_domain(rt, "a.mssante.test", patients=False)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def imap(sqlite_runtime: Runtime, pki: Any) -> AsyncIterator[IMAPEnv]:
    async with running(sqlite_runtime, pki) as env:
        yield env


def message(subject: str = "Bonjour", body: str = "Corps du message.\r\n", **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (
        f"From: Dr Martin <{MARTIN}>\r\nTo: <{SECRETARIAT}>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 7 Feb 2026 10:00:00 +0100\r\nMessage-ID: <{abs(hash(subject))}@a.mssante.test>\r\n"
        f"{extra}\r\n{body}"
    ).encode()
