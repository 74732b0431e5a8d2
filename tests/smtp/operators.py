"""Operators as real ``caducee serve`` processes on loopback, for tests that cross process boundaries.

Each ``Operator`` has its own directory, configuration, database and store, mutual TLS with the test
PKI, and a route to its peer. The test process keeps a ``Runtime`` on the same database (``rt``) to set
accounts up before the start and to observe the stores afterwards, never racing the server's writes.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib

from config.settings import load
from mailserver import accounts, trust
from mailserver.db import migrate
from mailserver.runtime import Runtime
from tests.ports import free_port
from tests.smtp.conftest import PASSWORD, RPPS, tls_client, wait_for

CADUCEE = str(Path(sys.executable).with_name("caducee"))


@dataclass
class Operator:
    """One operator; ``imaps`` and ``portal`` are 0 when that listener is not configured, ``also_hosts``
    lists its domains besides ``domain`` (a patient domain), which its peer routes to it too."""

    domain: str
    directory: Path
    config: Path
    smtp: int
    submission: int
    imaps: int = 0
    portal: int = 0
    also_hosts: tuple[str, ...] = ()
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

    async def submission_client(self, pki: Any, user: str, password: str = PASSWORD) -> aiosmtplib.SMTP:
        """A submission session after STARTTLS and AUTH PLAIN as ``user`` (a full address)."""
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=self.submission, start_tls=False, tls_context=tls_client(pki)
        )
        await client.connect()
        await client.starttls()
        await client.ehlo()
        await client.auth_plain(user, password)
        return client

    async def submit(self, pki: Any, local: str, rcpt: str, subject: str, notify: str = "") -> None:
        client = await self.submission_client(pki, f"{local}@{self.domain}")
        await client.mail(f"{local}@{self.domain}", options=["RET=HDRS", "ENVID=env-" + subject])
        await client.rcpt(rcpt, options=[f"NOTIFY={notify}"] if notify else [])
        await client.data(f"Subject: {subject}\r\nFrom: <{local}@{self.domain}>\r\n\r\nBonjour.\r\n".encode())
        await client.quit()


def two_operators(root: Path) -> tuple[Operator, Operator]:
    """Operators A and B of the trust space, each with its own directory under ``root`` and free ports."""
    ops = []
    for domain in ("a.mssante.test", "b.mssante.test"):
        d = root / domain
        d.mkdir()
        ops.append(Operator(domain, d, d / "caducee.toml", free_port(), free_port()))
    return ops[0], ops[1]


def write_config(op: Operator, pki: Any, db_url: str, peer: Operator) -> None:
    ident = pki.tls[op.domain]
    imaps = f'"127.0.0.1:{op.imaps}"' if op.imaps else ""
    portal = f'"127.0.0.1:{op.portal}"' if op.portal else ""
    routes = ", ".join(f'"{domain}" = "127.0.0.1:{peer.smtp}"' for domain in (peer.domain, *peer.also_hosts))
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
tls_listen = [{imaps}]
[portal]
listen = [{portal}]
secure_cookies = false
second_factor = "off"   # the patient's flows of these tests; the second factor: tests/portal
[admin]
listen = ["127.0.0.1:0"]
[delivery]
routes = {{ {routes} }}
retry_schedule = ["1s"]
workers = 2
connect_timeout = "5s"
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8192
"""
    )


async def prepare(op: Operator, pki: Any, users: list[str]) -> None:
    """Migrate the operator's database; its domain, ``users`` (PER, ``PASSWORD``) and both peers trusted."""
    settings = load(op.config)
    await migrate.upgrade_async(settings.database.url)
    op.rt = Runtime.build(settings)
    await asyncio.to_thread(op.rt.blobs.ensure)
    await accounts.add_domain(op.rt, op.domain, patients=False)
    for local in users:
        await accounts.add_mailbox(op.rt, f"{local}@{op.domain}", "PER", rpps=RPPS, password=PASSWORD)
    for domain in ("a.mssante.test", "b.mssante.test"):
        await trust.add(op.rt.db, domain, pki.tls[domain].subject)
