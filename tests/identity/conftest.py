"""Identity fixtures: the OpenID provider stand-in, and IMAP + submission listeners that trust it.

Mailboxes: dr.martin (PER, RPPS 10000000009) who is a member of the secretariat (ORG) and of his
practice (CAB), dr.durand (PER, RPPS 10000000017) who is not, and the applicative mailbox dpi (APP) of
a patient-record system.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailserver import accounts
from mailserver.db import migrate
from mailserver.imap import server as imap_server
from mailserver.runtime import Runtime
from mailserver.smtp import service as smtp_service
from tests.conftest import make_settings
from tests.identity.provider import AUDIENCE, Provider

MARTIN = "dr.martin@a.mssante.test"
MARTIN_RPPS = "10000000009"
MARTIN_ID = "8" + MARTIN_RPPS
DURAND = "dr.durand@a.mssante.test"
DURAND_RPPS = "10000000017"
DURAND_ID = "8" + DURAND_RPPS
SECRETARIAT = "secretariat@a.mssante.test"
DPI = "dpi@a.mssante.test"
CABINET = "cabinet@a.mssante.test"
PASSWORD = "Identity-Test-Password-2026"


@dataclass
class Env:
    rt: Runtime
    pki: Any
    provider: Provider
    ports: dict[str, int] = field(default_factory=dict)
    listeners: list[Any] = field(default_factory=list)
    relay: asyncio.Task[None] | None = None  # PostgreSQL: NOTIFY relayed to this process's sessions

    def client_context(self, identity: Any | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.peer_ca))
        ctx.check_hostname = False
        if identity is not None:
            ctx.load_cert_chain(str(identity.chain_path), str(identity.key_path))
        return ctx

    async def audit(self, action: str) -> list[Any]:
        return await self.rt.audit.events(action=action)

    async def close(self) -> None:
        for listener in reversed(self.listeners):
            with contextlib.suppress(Exception):
                await listener.close()
        if self.relay is not None:
            self.relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.relay
        await self.rt.close()


def oauth_section(provider: Provider, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"issuer": provider.issuer, "audience": AUDIENCE, "jwks_url": provider.jwks_url}
    section.update(overrides)
    return {k: v for k, v in section.items() if v is not None}


async def start_env(
    tmp_path: Path, db_url: str, pki: Any, provider: Provider, **sections: dict[str, Any]
) -> Env:
    a = pki.tls["a.mssante.test"]
    base: dict[str, dict[str, Any]] = {
        "tls": {"cert": str(a.chain_path), "key": str(a.key_path), "peer_ca": str(pki.peer_ca)},
        "smtp": {"listen": []},
        "submission": {"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"]},
        "imap": {"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"]},
        "delivery": {"workers": 1, "retry_schedule": ["1s"], "connect_timeout": "5s"},
        "auth": {"max_failures": 3},
        "oauth": oauth_section(provider),
    }
    for name, values in sections.items():
        if name == "oauth":  # the whole section, or none when empty
            base.pop("oauth")
            if not values:
                continue
        base.setdefault(name, {}).update(values)
    await migrate.upgrade_async(db_url)
    rt = Runtime.build(make_settings(tmp_path, db_url, **base))
    await asyncio.to_thread(rt.blobs.ensure)
    await accounts.add_domain(rt, "a.mssante.test", patients=False)
    await accounts.add_mailbox(rt, MARTIN, "PER", rpps=MARTIN_RPPS, password=PASSWORD)
    await accounts.add_mailbox(rt, DURAND, "PER", rpps=DURAND_RPPS, password=PASSWORD)
    await accounts.add_mailbox(rt, SECRETARIAT, "ORG", password=PASSWORD)
    await accounts.add_mailbox(rt, DPI, "APP")
    await accounts.grant_send_as(rt, SECRETARIAT, MARTIN)
    await accounts.add_mailbox(rt, CABINET, "CAB", password=PASSWORD)
    await accounts.grant_send_as(rt, CABINET, MARTIN)
    env = Env(rt, pki, provider)
    try:
        if rt.db.kind == "postgresql":  # as the server does: other sessions' changes come by NOTIFY
            dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
            env.relay = asyncio.create_task(rt.notifier.listen_postgres(dsn))
            await asyncio.wait_for(rt.notifier.listening.wait(), 10)
        env.listeners += await imap_server.start(rt)
        env.listeners += await smtp_service.start(rt)
    except BaseException:
        await env.close()
        raise
    for listener in env.listeners:
        if isinstance(listener, smtp_service.SMTPListener):
            env.ports[listener.service] = int(listener.address.rsplit(":", 1)[1])
        elif isinstance(listener, imap_server.Listener):
            env.ports[listener.service] = listener.port
    return env


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def env(tmp_path: Path, pki: Any, provider: Provider) -> AsyncIterator[Env]:
    """Protocol tests: SQLite (the engine is exercised by the tests taking ``db_url``)."""
    e = await start_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/identity.db", pki, provider)
    try:
        yield e
    finally:
        await e.close()
