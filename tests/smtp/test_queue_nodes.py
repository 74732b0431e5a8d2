"""Two ``caducee serve`` nodes of operator A on one PostgreSQL database and one storage path, draining
one outbound queue towards a slow peer (``tests/smtp/sink.py``) that records every SMTP transaction.

What must hold whatever the timing (issue 20): every message reaches the peer exactly once, in one
transaction carrying all its recipients there; an operator's ``queue retry`` never re-sends what a
worker is delivering; a node killed mid-delivery gives its rows back after the (short) lease while a
live node's lease is renewed for as long as its delivery runs; the reply to the final "." is awaited
for the RFC 5321 §4.5.3.2 time, not the connect timeout. And a node whose LISTEN connection to
PostgreSQL was cut wakes its IDLE sessions once it listens again, so a change committed in the gap
is not left for the next change to reveal.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import imapclient
import pytest

from mailserver import accounts
from mailserver.queue.queue import Queue
from tests.conftest import PG_ADMIN, pg_admin
from tests.ports import free_port
from tests.smtp.conftest import PASSWORD, tls_client, wait_for
from tests.smtp.operators import CADUCEE, Operator, prepare
from tests.smtp.sink import SlowSink, Transaction

DOMAIN = "a.mssante.test"
MARTIN = f"dr.martin@{DOMAIN}"
PEERS = tuple(f"dr.{name}@b.mssante.test" for name in ("durand", "petit", "leroy"))


@dataclass
class Cluster:
    nodes: list[Operator]
    sink: SlowSink
    pki: Any
    db_url: str
    store: Path

    @property
    def rt(self) -> Any:
        return self.nodes[0].rt

    def configure(self, extra: str = "") -> None:
        """Both nodes: same database, same store, the sink as route to b.mssante.test."""
        for n, node in enumerate(self.nodes, 1):
            node.config.write_text(node_config(self, node, n, extra), encoding="utf-8")

    async def start(self) -> None:
        for node in self.nodes:
            node.start()
        await asyncio.gather(*(node.ready() for node in self.nodes))

    async def submit(self, subjects: list[str], node: int = 0) -> None:
        """One submission session on ``node`` (one login) sending each subject to ``PEERS``."""
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=self.nodes[node].submission,
            start_tls=False,
            tls_context=tls_client(self.pki),
        )
        await client.connect()
        await client.starttls()
        await client.ehlo()
        await client.auth_plain(MARTIN, PASSWORD)
        for subject in subjects:
            body = f"Subject: {subject}\r\nFrom: <{MARTIN}>\r\n\r\nBonjour.\r\n".encode()
            await client.sendmail(MARTIN, list(PEERS), body)
        await client.quit()

    async def queue_empty(self) -> bool:
        return not await Queue(self.rt).entries()

    def caducee(self, *args: str, node: int = 0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CADUCEE, "--config", str(self.nodes[node].config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )


def node_config(cluster: Cluster, node: Operator, n: int, extra: str) -> str:
    ident = cluster.pki.tls[DOMAIN]
    imaps = f'"127.0.0.1:{node.imaps}"' if node.imaps else ""
    return f"""[server]
hostname = "mx{n}.{DOMAIN}"
log_level = "info"
shutdown_grace = "5s"
[database]
url = "{cluster.db_url}"
[storage]
path = "{cluster.store}"
[tls]
cert = "{ident.chain_path}"
key = "{ident.key_path}"
peer_ca = "{cluster.pki.peer_ca}"
[smtp]
listen = ["127.0.0.1:{node.smtp}"]
[submission]
listen = ["127.0.0.1:{node.submission}"]
tls_listen = []
[imap]
listen = []
tls_listen = [{imaps}]
[portal]
listen = []
[admin]
listen = ["127.0.0.1:0"]
[delivery]
routes = {{ "b.mssante.test" = "127.0.0.1:{cluster.sink.port}" }}
retry_schedule = ["1s"]
workers = 4
connect_timeout = "5s"
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8192
{extra}"""


@pytest.fixture
async def cluster(tmp_path: Path, pg_url: str, pki: Any) -> AsyncIterator[Cluster]:
    nodes = []
    for n in (1, 2):
        d = tmp_path / f"node{n}"
        d.mkdir()
        nodes.append(Operator(DOMAIN, d, d / "caducee.toml", free_port(), free_port(), imaps=free_port()))
    sink = SlowSink(pki)
    sink.start()
    c = Cluster(nodes, sink, pki, pg_url, tmp_path / "store")
    c.configure()
    await prepare(nodes[0], pki, ["dr.martin"])
    try:
        yield c
    finally:
        for n, node in enumerate(nodes, 1):
            print(f"--- node {n} log:\n" + "".join(node.log))  # shown when the test fails
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(30)
        sink.stop()
        if nodes[0].rt is not None:
            await nodes[0].rt.close()


def once_each(done: list[Transaction], subjects: list[str]) -> None:
    """Each subject in exactly one transaction, carrying every recipient at the peer."""
    seen = sorted(t.subject for t in done)
    assert seen == sorted(subjects), seen
    for t in done:
        assert sorted(t.recipients) == sorted(PEERS), t


@pytest.mark.slow
async def test_a_message_is_claimed_whole(cluster: Cluster) -> None:
    """Eight workers on two nodes race for 30 messages of three recipients: 30 transactions."""
    cluster.sink.final_delay = lambda _t: 0.05
    await cluster.start()
    subjects = [f"claim {i}" for i in range(30)]
    await asyncio.gather(cluster.submit(subjects[::2], node=0), cluster.submit(subjects[1::2], node=1))
    await wait_for(cluster.queue_empty, 60)
    once_each(cluster.sink.snapshot()[1], subjects)


@pytest.mark.slow
async def test_retry_leaves_leased_rows_alone(cluster: Cluster) -> None:
    """``caducee queue retry`` while three messages are being delivered: none is sent twice."""
    cluster.sink.final_delay = lambda _t: 60.0
    cluster.sink.release = threading.Event()  # the peer answers once both retries are done
    await cluster.start()
    subjects = [f"retry {i}" for i in range(3)]
    await cluster.submit(subjects)

    async def all_started() -> bool:
        return len(cluster.sink.snapshot()[0]) >= 3

    await wait_for(all_started, 30)
    r = cluster.caducee("queue", "retry")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0 recipient(s) due now, 9 being delivered left alone", r.stdout
    entry = (await Queue(cluster.rt).entries())[0]["id"]
    r = cluster.caducee("queue", "retry", str(entry))
    assert (
        r.returncode == 1
        and r.stderr.strip() == f"caducee: entry {entry} is being delivered right now: left alone"
    )
    await asyncio.sleep(2)  # a row the retry made due would now be claimed by an idle worker
    cluster.sink.release.set()
    await wait_for(cluster.queue_empty, 60)
    await asyncio.sleep(1)  # a duplicate claimed by the retry would now be at the sink
    started, done = cluster.sink.snapshot()
    assert len(started) == 3, started
    once_each(done, subjects)


@pytest.mark.slow
async def test_killed_node_gives_its_rows_back_after_the_lease(cluster: Cluster) -> None:
    """kill -9 of the node whose delivery the peer holds: the other node delivers after the 3 s lease
    (the hard-coded lease was 10 minutes)."""
    cluster.configure('[queue]\nlease = "3s"\n')
    held: list[str] = []

    def first_held(t: Transaction) -> float:
        if not held:
            held.append(t.helo)
            return 300.0
        return 0.0

    cluster.sink.final_delay = first_held
    await cluster.start()
    await cluster.submit(["orphan"])

    async def delivering() -> bool:
        return bool(cluster.sink.snapshot()[0])

    await wait_for(delivering, 30)
    (victim,) = [n for i, n in enumerate(cluster.nodes, 1) if held == [f"mx{i}.{DOMAIN}"]]
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait(30)
    survivor = f"mx{2 if victim is cluster.nodes[0] else 1}.{DOMAIN}"

    async def delivered() -> list[Transaction]:
        return cluster.sink.snapshot()[1]

    (txn,) = await wait_for(delivered, 60)
    assert txn.helo == survivor and sorted(txn.recipients) == sorted(PEERS), txn
    await wait_for(cluster.queue_empty, 30)


@pytest.mark.slow
async def test_a_live_delivery_keeps_its_lease(cluster: Cluster) -> None:
    """A peer answering after 4.5 s, a 2 s lease: the heartbeat keeps each message with its worker."""
    cluster.configure('[queue]\nlease = "2s"\n')
    cluster.sink.final_delay = lambda _t: 4.5
    await cluster.start()
    subjects = ["slow 1", "slow 2"]
    await cluster.submit(subjects)
    await wait_for(cluster.queue_empty, 60)
    await asyncio.sleep(1)
    started, done = cluster.sink.snapshot()
    assert len(started) == 2, started
    once_each(done, subjects)


@pytest.mark.slow
async def test_the_final_reply_is_awaited_for_rfc5321_time(cluster: Cluster) -> None:
    """A peer answering "." after 8 s, a 5 s connect timeout: one transaction, the message sent (the
    reply was awaited for ``connect_timeout``: timed out, retried, a duplicate at the peer)."""
    cluster.sink.final_delay = lambda _t: 8.0
    await cluster.start()
    await cluster.submit(["patience"])
    await wait_for(cluster.queue_empty, 60)
    await asyncio.sleep(1)
    started, done = cluster.sink.snapshot()
    assert len(started) == 1, started
    once_each(done, ["patience"])


def _idle_until_exists(client: imapclient.IMAPClient, count: int, seconds: float) -> bool:
    """Blocking: wait in IDLE (already started) until ``* count EXISTS`` or ``seconds`` passed."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for response in client.idle_check(timeout=1):
            if response[:2] == (count, b"EXISTS"):
                return True
    return False


@pytest.mark.slow
async def test_listen_reconnect_wakes_idle_sessions(cluster: Cluster) -> None:
    """The LISTEN backends are terminated and, until they are back, a message is committed: the IDLE
    session on node 1 hears of it once its node listens again (before: only with the next change)."""
    await cluster.start()
    rt = cluster.rt
    martin = await accounts.get_mailbox(rt, MARTIN)

    async def deliver(subject: str) -> None:
        data = f"Subject: {subject}\r\nFrom: <{MARTIN}>\r\n\r\nBonjour.\r\n".encode()
        await rt.store.deliver(await rt.store.prepare(data), [martin.id])

    await deliver("before")  # also leaves this process a pooled connection for the gap
    node = cluster.nodes[0]
    client = imapclient.IMAPClient("127.0.0.1", node.imaps, ssl=True, ssl_context=tls_client(cluster.pki))
    client.login(MARTIN, PASSWORD)
    client.select_folder("INBOX")
    client.idle()
    database = cluster.db_url.rsplit("/", 1)[1]
    await pg_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            terminated = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND query ILIKE 'LISTEN%'",
                database,
            )
        finally:
            await conn.close()
        assert len(terminated) == 2, terminated  # one per node
        await deliver("during the gap")
    finally:
        await pg_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    try:
        assert await asyncio.to_thread(_idle_until_exists, client, 2, 30)
    finally:
        client.idle_done()
        client.logout()
