"""SMTP fixtures: operator A's listeners in the test's event loop, clients for peers and users."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailserver import accounts, trust
from mailserver.db import migrate
from mailserver.runtime import Runtime
from mailserver.smtp import service
from tests.conftest import make_settings

PASSWORD = "secret-password-1"
MARTIN = "dr.martin@a.mssante.test"
SECRETARIAT = "secretariat@a.mssante.test"
RPPS = "10000000009"


async def wait_for(predicate: Callable[[], Awaitable[Any]], limit: float = 15.0) -> Any:
    """Poll ``predicate`` until it returns something truthy, failing after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


def tls_client(pki: Any, identity: Any | None = None) -> ssl.SSLContext:
    """A client context trusting the test PKI, presenting ``identity`` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.peer_ca))
    ctx.check_hostname = False
    if identity is not None:
        ctx.load_cert_chain(str(identity.chain_path), str(identity.key_path))
    return ctx


@dataclass
class SMTPEnv:
    rt: Runtime
    pki: Any
    ports: dict[str, int]
    started: list[Any] = field(default_factory=list)

    def peer(self, name: str = "b.mssante.test") -> ssl.SSLContext:
        return tls_client(self.pki, self.pki.tls[name])

    def user(self) -> ssl.SSLContext:
        return tls_client(self.pki)

    async def inbox(self, address: str) -> list[bytes]:
        mb = await accounts.get_mailbox(self.rt, address)
        folder = await self.rt.store.folder(mb.id, "INBOX")
        _info, msgs = await self.rt.store.snapshot(folder.id)
        return [await self.rt.store.read_blob(m.blob_id) for m in msgs]

    async def close(self) -> None:
        for item in reversed(self.started):
            await item.close()
        await self.rt.close()


async def start_env(tmp_path: Path, db_url: str, pki: Any, **sections: dict[str, Any]) -> SMTPEnv:
    a = pki.tls["a.mssante.test"]
    base: dict[str, dict[str, Any]] = {
        "tls": {"cert": str(a.chain_path), "key": str(a.key_path), "peer_ca": str(pki.peer_ca)},
        "smtp": {"listen": ["127.0.0.1:0"]},
        "submission": {"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"]},
        "delivery": {
            "workers": 1,
            "retry_schedule": ["1s"],
            "connect_timeout": "5s",
            "routes": {"b.mssante.test": "127.0.0.1:9"},
        },
        "auth": {"max_failures": 3},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    await migrate.upgrade_async(db_url)
    rt = Runtime.build(make_settings(tmp_path, db_url, **base))
    await asyncio.to_thread(rt.blobs.ensure)
    await accounts.add_domain(rt, "a.mssante.test", patients=False)
    await accounts.add_mailbox(rt, MARTIN, "PER", rpps=RPPS, password=PASSWORD)
    await accounts.add_mailbox(rt, SECRETARIAT, "ORG", password=PASSWORD)
    await accounts.add_mailbox(rt, "dr.autre@a.mssante.test", "PER", rpps=RPPS, password=PASSWORD)
    await accounts.add_mailbox(rt, "ancien@a.mssante.test", "ORG", password=PASSWORD)
    await accounts.set_enabled(rt, "ancien@a.mssante.test", False)
    await accounts.grant_send_as(rt, SECRETARIAT, MARTIN)
    await trust.add(rt.db, "a.mssante.test", pki.tls["a.mssante.test"].subject)
    await trust.add(rt.db, "b.mssante.test", pki.tls["b.mssante.test"].subject)
    await trust.add(rt.db, "c.mssante.test", "CN=mx.c.mssante.test,O=Operateur C,C=FR")
    env = SMTPEnv(rt, pki, {})
    env.started = await service.start(rt)
    for listener in env.started:
        if isinstance(listener, service.SMTPListener):
            env.ports[listener.service] = int(listener.address.rsplit(":", 1)[1])
    return env


@pytest.fixture
async def smtp_env(tmp_path: Path, db_url: str, pki: Any) -> AsyncIterator[SMTPEnv]:
    env = await start_env(tmp_path, db_url, pki)
    try:
        yield env
    finally:
        await env.close()


@pytest.fixture
async def sqlite_env(tmp_path: Path, pki: Any) -> AsyncIterator[SMTPEnv]:
    """Protocol-level tests: the database engine does not matter, SQLite is enough."""
    env = await start_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/caducee.db", pki)
    try:
        yield env
    finally:
        await env.close()


class Raw:
    """A line-level SMTP client for pipelining, BDAT and limit tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, ssl_context: ssl.SSLContext | None = None) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
        raw = cls(reader, writer)
        await raw.reply()
        return raw

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def reply(self) -> list[str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode().rstrip("\r\n")
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line)
            if line[3:4] != "-":
                return lines

    async def cmd(self, line: str) -> str:
        await self.send(line + "\r\n")
        return (await self.reply())[-1]

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        assert (await self.cmd("STARTTLS")).startswith("220")
        await self.writer.start_tls(ctx)

    async def close(self) -> None:
        self.writer.close()
