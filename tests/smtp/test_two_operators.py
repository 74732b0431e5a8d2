"""Two ``caducee serve`` processes, operators A and B, exchanging mail both ways over mutual TLS.

Covers: delivery A→B and B→A through the queue, a success DSN (NOTIFY=SUCCESS, issued by B and routed
back to A), a bounce when B refuses an unknown user, and a queued message surviving a restart of A
while B is down.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from config.settings import load
from mailserver import accounts, trust
from mailserver.db import migrate
from mailserver.queue.queue import Queue
from mailserver.runtime import Runtime
from tests.smtp.conftest import PASSWORD, RPPS, tls_client, wait_for

CADUCEE = str(Path(sys.executable).with_name("caducee"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    domain: str
    directory: Path
    config: Path
    smtp: int
    submission: int
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)
    rt: Runtime | None = None

    def start(self) -> None:
        self.log = []
        self.proc = subprocess.Popen(
            [CADUCEE, "--config", str(self.config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.directory,
        )
        proc = self.proc

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(line.decode("utf-8", "replace"))

        threading.Thread(target=pump, daemon=True).start()

    async def ready(self) -> None:
        async def seen() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.domain} exited:\n{''.join(self.log)}")
            return any('"event":"ready"' in line for line in self.log)

        await wait_for(seen, 30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None

    async def inbox(self, local: str) -> list[bytes]:
        assert self.rt is not None
        mb = await accounts.get_mailbox(self.rt, f"{local}@{self.domain}")
        folder = await self.rt.store.folder(mb.id, "INBOX")
        _info, msgs = await self.rt.store.snapshot(folder.id)
        return [await self.rt.store.read_blob(m.blob_id) for m in msgs]

    async def submit(self, pki: Any, local: str, rcpt: str, subject: str, notify: str = "") -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=self.submission, start_tls=False, tls_context=tls_client(pki)
        )
        await client.connect()
        await client.starttls()
        await client.ehlo()
        await client.auth_plain(f"{local}@{self.domain}", PASSWORD)
        await client.mail(f"{local}@{self.domain}", options=["RET=HDRS", "ENVID=env-" + subject])
        await client.rcpt(rcpt, options=[f"NOTIFY={notify}"] if notify else [])
        await client.data(f"Subject: {subject}\r\nFrom: <{local}@{self.domain}>\r\n\r\nBonjour.\r\n".encode())
        await client.quit()


def write_config(op: Operator, pki: Any, db_url: str, peer: Operator) -> None:
    ident = pki.tls[op.domain]
    op.config.write_text(
        f"""[server]
hostname = "mx.{op.domain}"
log_level = "info"
shutdown_grace = "5s"
[database]
url = "{db_url}"
[storage]
path = "store"
[tls]
cert = "{ident.chain_path}"
key = "{ident.key_path}"
peer_ca = "{pki.peer_ca}"
[smtp]
listen = ["127.0.0.1:{op.smtp}"]
[submission]
listen = ["127.0.0.1:{op.submission}"]
tls_listen = []
[imap]
listen = []
tls_listen = []
[portal]
listen = []
[delivery]
routes = {{ "{peer.domain}" = "127.0.0.1:{peer.smtp}" }}
retry_schedule = ["1s"]
workers = 2
connect_timeout = "5s"
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8192
"""
    )


async def prepare(op: Operator, pki: Any, users: list[str]) -> None:
    settings = load(op.config)
    await migrate.upgrade_async(settings.database.url)
    op.rt = Runtime.build(settings)
    await asyncio.to_thread(op.rt.blobs.ensure)
    await accounts.add_domain(op.rt, op.domain, patients=False)
    for local in users:
        await accounts.add_mailbox(op.rt, f"{local}@{op.domain}", "PER", rpps=RPPS, password=PASSWORD)
    for domain in ("a.mssante.test", "b.mssante.test"):
        await trust.add(op.rt.db, domain, pki.tls[domain].subject)


@pytest.fixture
async def operators(tmp_path: Path, db_url: str, pki: Any) -> AsyncIterator[tuple[Operator, Operator]]:
    ops = []
    for domain in ("a.mssante.test", "b.mssante.test"):
        d = tmp_path / domain
        d.mkdir()
        ops.append(Operator(domain, d, d / "caducee.toml", free_port(), free_port()))
    a, b = ops
    write_config(a, pki, db_url, b)
    write_config(b, pki, f"sqlite+aiosqlite:///{b.directory}/caducee.db", a)
    await prepare(a, pki, ["dr.martin"])
    await prepare(b, pki, ["dr.durand"])
    try:
        yield a, b
    finally:
        for op in ops:
            op.stop()
            if op.rt is not None:
                await op.rt.close()


@pytest.mark.slow
async def test_two_operators_exchange_mail(operators: tuple[Operator, Operator], pki: Any) -> None:
    a, b = operators
    a.start()
    b.start()
    await asyncio.gather(a.ready(), b.ready())

    # A → B with a success DSN requested: B delivers, then reports back to A through its own queue.
    await a.submit(pki, "dr.martin", "dr.durand@b.mssante.test", "first", notify="SUCCESS,FAILURE")

    async def durand_has(n: int) -> list[bytes] | None:
        msgs = await b.inbox("dr.durand")
        return msgs if len(msgs) >= n else None

    (first,) = await wait_for(lambda: durand_has(1))
    assert b"Subject: first" in first
    assert b"peer certificate CN=mx.a.mssante.test,OU=Operateur,O=Operateur A,C=FR verified" in first

    async def martin_reports(kind: bytes) -> list[bytes]:
        return [m for m in await a.inbox("dr.martin") if b"report-type=delivery-status" in m and kind in m]

    (success,) = await wait_for(lambda: martin_reports(b"Action: delivered"))
    assert b"Final-Recipient: rfc822; dr.durand@b.mssante.test" in success
    assert b"Original-Envelope-Id: env-first" in success

    # B → A.
    await b.submit(pki, "dr.durand", "dr.martin@a.mssante.test", "reply")

    async def martin_has_reply() -> bool:
        return any(b"Subject: reply" in m for m in await a.inbox("dr.martin"))

    await wait_for(martin_has_reply)

    # B refuses an unknown user: one bounce to the sender at A.
    await a.submit(pki, "dr.martin", "nobody@b.mssante.test", "lost")
    (bounce,) = await wait_for(lambda: martin_reports(b"Action: failed"))
    assert b"Final-Recipient: rfc822; nobody@b.mssante.test" in bounce and b"Status: 5.1.1" in bounce
    assert b"Subject: lost" in bounce

    # B down: A queues; A restarts; B comes back; the message arrives.
    b.stop()
    await a.submit(pki, "dr.martin", "dr.durand@b.mssante.test", "survivor")
    assert a.rt is not None
    queue = Queue(a.rt)

    async def attempted() -> bool:
        entries = await queue.entries()
        return any(r["attempts"] >= 1 for e in entries for r in e["recipients"])

    await wait_for(attempted)
    a.stop()
    assert [r["status"] for e in await queue.entries() for r in e["recipients"]] == ["queued"]
    b.start()
    await b.ready()
    a.start()
    await a.ready()
    msgs = await wait_for(lambda: durand_has(2), 30)
    assert b"Subject: survivor" in msgs[-1]

    async def queue_empty() -> bool:
        return await queue.entries() == []

    await wait_for(queue_empty)
