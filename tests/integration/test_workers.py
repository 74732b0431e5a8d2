"""``[server] workers = 2``: a real ``caducee serve`` on PostgreSQL, one supervisor and two worker
processes accepting on the IMAP socket the supervisor bound once before forking (no SO_REUSEPORT).

Which worker serves a connection is read from the server's own log: every line of a worker carries
its ``pid``, and the IMAP ID command logs what the client says it is (``probe-N``). What must hold:
both workers accept connections, IDLE on one worker hears an APPEND made through the other
(PostgreSQL's NOTIFY), SIGTERM stops everything with exit 0, a worker killed with SIGKILL is started
again while the other keeps serving, a port taken (by another program or a second Caducée on the same
ports) stops the server before anything is served, port 0 is one port shared by the workers, and on
SQLite ``workers = 2`` is refused before anything starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imapclient
import pytest

from config.settings import load
from mailserver import accounts
from mailserver.db import migrate
from mailserver.runtime import Runtime
from tests.conftest import PG_ADMIN, pg_admin
from tests.instance import ServerProcess
from tests.ports import free_port
from tests.smtp.conftest import PASSWORD, RPPS, tls_client
from tests.smtp.operators import CADUCEE

MARTIN = "dr.martin@a.mssante.test"


def config_text(pki: Any, db_url: str, imaps: int, workers: int = 2, admin: str = '"127.0.0.1:0"') -> str:
    ident = pki.tls["a.mssante.test"]
    return f"""[server]
hostname = "mx.a.mssante.test"
log_level = "info"
shutdown_grace = "5s"
workers = {workers}
[database]
url = "{db_url}"
[storage]
path = "store"
[tls]
cert = "{ident.chain_path}"
key = "{ident.key_path}"
peer_ca = "{pki.peer_ca}"
[smtp]
listen = []
[submission]
listen = []
tls_listen = []
[imap]
listen = []
tls_listen = ["127.0.0.1:{imaps}"]
[portal]
listen = []
[ldap]
listen = []
[admin]
listen = [{admin}]
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8192
"""


@dataclass
class Served(ServerProcess):
    """``caducee serve`` with ``[server] workers``, and which worker serves which IMAP session."""

    imaps: int
    pki: Any

    def kill_all(self) -> None:
        """After a test: the supervisor and every worker it started, whatever state they are in."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pid in self.worker_pids().values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)

    def ready_pids(self) -> set[int]:
        return {e["pid"] for e in self.events("ready")}

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid of its latest start."""
        return {e["worker"]: e["pid"] for e in self.events("worker-started")}

    def wait_ready(self, pids: int = 2) -> None:
        self.wait_for(lambda: len(self.ready_pids()) >= pids)

    def client(self, probe: str) -> tuple[imapclient.IMAPClient, int]:
        """A logged-in IMAP session and the pid of the worker serving it (from its ID log line)."""
        client = imapclient.IMAPClient(
            "127.0.0.1", self.imaps, ssl=True, ssl_context=tls_client(self.pki), timeout=30
        )
        client.id_({"name": probe})
        client.login(MARTIN, PASSWORD)

        def served_by() -> int | None:
            for r in self.records():
                if r.get("message", "").startswith("IMAP client") and f"'{probe}'" in r["message"]:
                    return int(r["pid"])
            return None

        self.wait_for(lambda: served_by() is not None)
        pid = served_by()
        assert pid is not None
        return client, pid

    def one_on_each(self, pids: set[int], tries: int = 60) -> dict[int, imapclient.IMAPClient]:
        """Connect until there is a session on each worker of ``pids``; the others are logged out."""
        found: dict[int, imapclient.IMAPClient] = {}
        for n in range(tries):
            client, pid = self.client(f"probe-{time.monotonic_ns()}-{n}")
            if pid in found:
                client.logout()
            else:
                found[pid] = client
            if set(found) >= pids:
                return found
        raise AssertionError(f"after {tries} connections, sessions only on {sorted(found)} of {pids}")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def prepare(config: Path) -> None:
    settings = load(config)
    await migrate.upgrade_async(settings.database.url)
    rt = Runtime.build(settings)
    try:
        await accounts.add_domain(rt, "a.mssante.test", patients=False)
        await accounts.add_mailbox(rt, MARTIN, "PER", rpps=RPPS, password=PASSWORD)
    finally:
        await rt.close()


@pytest.fixture
def served(tmp_path: Path, pg_url: str, pki: Any) -> Iterator[Served]:
    config = tmp_path / "caducee.toml"
    imaps = free_port()
    config.write_text(config_text(pki, pg_url, imaps), encoding="utf-8")
    asyncio.run(prepare(config))
    s = Served(CADUCEE, tmp_path, imaps, pki)
    try:
        yield s
    finally:
        print("--- server log:\n" + "".join(s.lines))  # shown when the test fails
        s.kill_all()


def _idle_until_exists(client: imapclient.IMAPClient, count: int, seconds: float) -> bool:
    """Wait in IDLE (already started) until ``* count EXISTS`` or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for response in client.idle_check(timeout=1):
            if response[:2] == (count, b"EXISTS"):
                return True
    return False


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_serve_and_idle_hears_the_other(served: Served) -> None:
    """Sessions land on both workers; IDLE on one hears an APPEND made through the other."""
    served.launch()
    served.wait_ready()
    assert served.proc is not None
    workers = served.worker_pids()
    assert sorted(workers) == [0, 1] and served.proc.pid not in workers.values(), workers
    assert served.ready_pids() == set(workers.values())
    assert [e["pid"] for e in served.events("listening") if e["service"] == "admin"] == [workers[0]]
    sessions = served.one_on_each(set(workers.values()))
    watcher, writer = sessions[workers[0]], sessions[workers[1]]
    watcher.select_folder("INBOX")
    watcher.idle()
    try:
        writer.append("INBOX", b"Subject: par l'autre worker\r\nFrom: <x@a.mssante.test>\r\n\r\nBonjour.\r\n")
        assert _idle_until_exists(watcher, 1, 30)
    finally:
        watcher.idle_done()
    for client in sessions.values():
        client.logout()


@pytest.mark.postgres
@pytest.mark.slow
def test_sigterm_stops_every_worker(served: Served) -> None:
    """SIGTERM to the supervisor: every worker stops, the supervisor exits 0, no process is left."""
    served.launch()
    served.wait_ready()
    pids = set(served.worker_pids().values())
    assert served.stop() == 0, "".join(served.lines)
    assert all(gone(pid) for pid in pids), pids
    assert {e["pid"] for e in served.events("stopped")} == pids
    assert len(served.events("workers-stopped")) == 1


@pytest.mark.postgres
@pytest.mark.slow
def test_a_killed_worker_is_started_again(served: Served) -> None:
    """SIGKILL to worker 1: logged, started again, and both workers serve as before."""
    served.launch()
    served.wait_ready()
    first = served.worker_pids()
    os.kill(first[1], signal.SIGKILL)
    served.wait_for(lambda: served.worker_pids()[1] != first[1])
    (died,) = served.events("worker-exited")
    assert died["worker"] == 1 and died["pid"] == first[1] and died["code"] == -signal.SIGKILL, died
    assert died["level"] == "error" and died["restart_in"] > 0, died
    again = served.worker_pids()
    served.wait_for(lambda: again[1] in served.ready_pids())
    assert again[0] == first[0]
    sessions = served.one_on_each({again[0], again[1]})
    for client in sessions.values():
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        client.logout()
    assert served.stop() == 0
    assert gone(again[1]) and gone(first[0])


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_server(served: Served) -> None:
    """The IMAP port is taken by another program: the supervisor, binding it before it forks, exits 1
    with the reason, and no worker was started."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", served.imaps))
        squatter.listen()
        served.launch()
        code = served.exit_code()
    assert code == 1, "".join(served.lines)
    assert any(line.startswith("caducee: cannot start: ") for line in served.lines), served.lines
    assert not served.worker_pids()


def test_workers_need_postgresql(tmp_path: Path, pki: Any) -> None:
    """On SQLite, ``workers = 2`` is refused with one line naming the setting (exit 2)."""
    config = tmp_path / "caducee.toml"
    config.write_text(config_text(pki, f"sqlite+aiosqlite:///{tmp_path}/c.db", free_port()), encoding="utf-8")
    r = subprocess.run(
        [CADUCEE, "--config", str(config), "serve"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"caducee: {config}: [server] workers = 2 needs PostgreSQL ([database] url ="
        " postgresql+asyncpg://…): on SQLite, writes are grouped and IMAP IDLE is notified within one"
        " process only; use workers = 1\n"
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_port_0_is_one_port_for_every_worker(served: Served, pki: Any, pg_url: str) -> None:
    """``tls_listen = ["127.0.0.1:0"]`` with two workers: bound once by the supervisor, so both
    workers serve the same port (it used to be refused: each worker would have bound its own)."""
    served.config.write_text(config_text(pki, pg_url, 0), encoding="utf-8")
    served.launch()
    served.wait_ready()
    workers = set(served.worker_pids().values())
    addresses = {e["pid"]: e["address"] for e in served.events("listening") if e["service"] == "imaps"}
    assert set(addresses) == workers and len(set(addresses.values())) == 1, addresses
    served.imaps = int(next(iter(addresses.values())).rsplit(":", 1)[1])
    assert served.imaps != 0
    for client in served.one_on_each(workers).values():
        client.logout()
    assert served.stop() == 0


@pytest.fixture
def second(tmp_path: Path, served: Served, pki: Any) -> Iterator[Served]:
    """Another instance (its own data directory and database) configured on the first one's ports."""
    name = f"caducee_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    directory = tmp_path / "restored"
    directory.mkdir()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    (directory / "caducee.toml").write_text(
        config_text(pki, f"{base}/{name}", served.imaps, admin=""), encoding="utf-8"
    )
    asyncio.run(prepare(directory / "caducee.toml"))
    s = Served(CADUCEE, directory, served.imaps, pki)
    try:
        yield s
    finally:
        print("--- second server log:\n" + "".join(s.lines))
        s.kill_all()
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.postgres
@pytest.mark.slow
def test_a_second_instance_on_the_same_ports_is_refused(served: Served, second: Served) -> None:
    """A second ``caducee serve`` on the same IMAP port (a restored backup started beside the
    original, without an admin listener) exits 1 with ``cannot start:`` and serves nothing, while the
    first keeps serving: the mail is never split between two databases."""
    served.launch()
    served.wait_ready()
    first = served.ready_pids()
    second.launch()
    assert second.proc is not None
    second.wait_for(lambda: second.proc.poll() is not None or bool(second.events("ready")))
    assert second.proc.poll() is not None, "the second instance started"
    assert second.exit_code() == 1, "".join(second.lines)
    assert second.lines == [
        f"caducee: cannot start: [imap] tls_listen: 127.0.0.1:{served.imaps}: address already in use\n"
    ]
    assert not second.worker_pids() and not second.events("listening")
    for n in range(4):
        client, pid = served.client(f"after-{n}")
        assert pid in first
        client.logout()
    assert served.ready_pids() == first
    assert served.stop() == 0
