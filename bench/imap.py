"""IMAP benchmark: the client mix of issue 14, against Caducée alone or side by side with Dovecot.

    .venv/bin/python bench/imap.py [--seconds 10] [--rounds 3] [--clients 50] [--mailboxes 50]
                                   [--messages 30] [--against-dovecot] [--dovecot-plain] [--cache]
                                   [--concurrent-verifications 4] [--idle 0] [--db URL]
                                   [--workers N] [--py-spy FILE]

Caducée runs in a subprocess (``--serve``: a fresh SQLite database, or ``--db`` for PostgreSQL,
a first-run TLS certificate, mailboxes ``bench<i>@a.mssante.test`` whose passwords are hashed at the
default argon2id cost, t=2, 19 MiB, p=1). Before anything is timed, every mailbox gets ``--messages``
messages by IMAP APPEND (on each server alike). Each of ``--clients`` clients then loops, over
implicit TLS, on its own mailbox: LOGIN, LIST, STATUS, SELECT, FETCH (flags+envelope of all), FETCH (one
body), STORE \\Seen, STORE \\Deleted, EXPUNGE, APPEND, LOGOUT. Prints ops/s, p50/p99 per command and
the number of error replies (tagged NO/BAD, dropped connections), and the server's CPU time per
operation (user + system, all its threads, from /proc): the figure to compare on a shared machine.

``--workers N`` serves through ``caducee serve`` itself with ``[server] workers = N`` (PostgreSQL,
``--db``, when N > 1), on a fixed port shared by the worker processes; the server's CPU time and RSS
are then the supervisor's and its workers' together (``[auth] concurrent_verifications`` holds per
worker). Without it the IMAP listener runs alone in the bench's own server process, as before.

``--against-dovecot`` also starts a private Dovecot (bench/peers.py: Debian's dovecot-imapd, installed
when missing; 127.0.0.1 only, same certificate, a passwd-file holding the very argon2id hashes Caducée
stored, or the clear passwords with ``--dovecot-plain``) and runs the two in alternating rounds (so
the machine's other load weighs on both), then prints the medians and the ratio Caducée/Dovecot.
``--cache`` turns on both sides' verified-credential caches (Caducée's ``[auth] credential_cache_ttl``
300 s, Dovecot's ``auth_cache``); without it each login pays argon2 on both. ``--py-spy FILE`` records
Caducée's server during its rounds (``py-spy record --format raw``; summarise with
bench/profile_summary.py). ``--idle N`` then measures the server's RSS per idle authenticated
connection (N, then N more; the second batch is the figure, the first pays the heap growth the TLS
handshakes leave).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PASSWORD = "Bench-Password-2026"
DOMAIN = "a.mssante.test"
COMMANDS = [
    "LOGIN",
    "LIST",
    "STATUS",
    "SELECT",
    "FETCH envelopes",
    "FETCH body",
    "STORE",
    "STORE \\Deleted",
    "EXPUNGE",
    "APPEND",
    "LOGOUT",
]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def password(i: int) -> str:
    return f"{PASSWORD}-{i}"


def sample(i: int) -> bytes:
    return (
        f"From: Dr Bench <dr.bench@{DOMAIN}>\r\nTo: <bench0@{DOMAIN}>\r\nSubject: Compte rendu {i}\r\n"
        f"Date: Mon, 2 Feb 2026 10:00:00 +0100\r\nMessage-ID: <bench-{i}-{time.time_ns()}@{DOMAIN}>\r\n\r\n"
        + "Ligne de compte rendu medical.\r\n"
        * 40
    ).encode()


# --------------------------------------------------------------------------- Caducée's server process


SERVE_CONFIG = """[server]
hostname = "localhost"
log_level = "info"
workers = {workers}
[database]
url = "{url}"
[storage]
path = "{directory}/store"
[tls]
cert = "{cert}"
key = "{key}"
peer_ca = "{ca}"
[smtp]
listen = []
[submission]
listen = []
tls_listen = []
[imap]
listen = []
tls_listen = ["127.0.0.1:{port}"]
[portal]
listen = []
[ldap]
listen = []
[admin]
listen = []
[auth]
credential_cache_ttl = {cache_ttl}
concurrent_verifications = {verifications}
[limits]
connections_per_ip = 100000
connections_per_user_ip = 100000
connections_per_user = 100000
max_connections = 100000
"""


async def caducee_serve(directory: Path, workers: int, info: dict, **config: object) -> None:
    """``caducee serve`` with ``[server] workers``; ``info`` (with the server's pid) printed once every
    worker has logged ``ready`` (its log: DIRECTORY/caducee.log), then run until SIGTERM."""
    path = directory / "caducee.toml"
    path.write_text(SERVE_CONFIG.format(directory=directory, workers=workers, **config), encoding="utf-8")
    log = directory / "caducee.log"
    with log.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("caducee")), "--config", str(path), "serve", stderr=out
        )
    while log.read_text().count('"event":"ready"') < workers:
        if proc.returncode is not None:
            raise SystemExit(f"caducee serve exited {proc.returncode}:\n{log.read_text()}")
        await asyncio.sleep(0.2)
    print(json.dumps(info | {"pid": proc.pid}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    proc.send_signal(signal.SIGTERM)
    await proc.wait()


async def serve(
    directory: Path, db_url: str | None, mailboxes: int, cache_ttl: float, verifications: int, workers: int
) -> None:
    from sqlalchemy import select

    from mailserver import accounts
    from mailserver.db import migrate
    from mailserver.db.models import Mailbox
    from mailserver.imap import server
    from mailserver.runtime import Runtime
    from mailserver.tls import make_first_run_certificates
    from tests.conftest import make_settings
    from tests.ports import free_port

    url = db_url or f"sqlite+aiosqlite:///{directory}/bench.db"
    chain, key, ca = make_first_run_certificates(directory / "tls", "localhost", "Bench")
    settings = make_settings(
        directory,
        url,
        tls={"cert": str(chain), "key": str(key), "peer_ca": str(ca)},
        imap={"listen": [], "tls_listen": ["127.0.0.1:0"]},
        # The production cost (config/settings.py defaults), not the tests' cheap one.
        auth={"argon2_time_cost": 2, "argon2_memory_kib": 19 * 1024, "credential_cache_ttl": cache_ttl}
        | {"concurrent_verifications": verifications},
        limits={
            "connections_per_ip": 100000,
            "connections_per_user_ip": 100000,
            "connections_per_user": 100000,
            "max_connections": 100000,
        },
    )
    await migrate.upgrade_async(url)
    rt = Runtime.build(settings)
    await asyncio.to_thread(rt.blobs.ensure)
    await accounts.add_domain(rt, DOMAIN, patients=False)
    hashes = {}
    for i in range(mailboxes):
        address = f"bench{i}@{DOMAIN}"
        await accounts.add_mailbox(rt, address, "ORG", password=password(i))
        async with rt.db.read() as session:
            hashes[address] = (
                await session.execute(select(Mailbox.password_hash).where(Mailbox.address == address))
            ).scalar_one()
    info = {"ca": str(ca), "cert": str(chain), "key": str(key), "hashes": hashes}
    if workers:
        await rt.close()
        port = free_port()
        await caducee_serve(
            directory,
            workers,
            info | {"port": port},
            url=url,
            port=port,
            cert=chain,
            key=key,
            ca=ca,
            cache_ttl=cache_ttl,
            verifications=verifications,
        )
        return
    listeners = await server.start(rt)
    info["port"] = listeners[0].port
    print(json.dumps(info), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for listener in listeners:
        await listener.close()
    await rt.close()


def tree(pid: int) -> list[int]:
    """The process and its children (``caducee serve``'s workers), from /proc."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def rss_kib(pid: int) -> int:
    """The resident memory of the process and its children."""
    total = 0
    for p in tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children, every thread included (/proc/PID/stat
    fields 14, 15): CPU per operation compares runs on a shared machine better than ops/s, which
    other load moves."""
    total = 0
    for p in tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- client


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.n = reader, writer, 0

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, limit=1 << 24)
        conn = cls(reader, writer)
        await reader.readline()
        return conn

    async def cmd(self, text: str, data: bytes | None = None) -> tuple[bool, list[bytes]]:
        """Send one command; (tagged OK?, untagged lines), literals skipped."""
        self.n += 1
        tag = b"b%d" % self.n
        if data is None:
            self.writer.write(tag + b" " + text.encode() + b"\r\n")
        else:
            self.writer.write(tag + b" " + text.encode() + b" {%d+}\r\n" % len(data) + data + b"\r\n")
        untagged: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line.endswith(b"}\r\n"):
                size = int(line[line.rindex(b"{") + 1 : -3].rstrip(b"+"))
                await self.reader.readexactly(size)
            if line.startswith(tag + b" "):
                return line.startswith(tag + b" OK"), untagged
            untagged.append(line)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


@dataclass
class Result:
    elapsed: float
    cpu: float = float("nan")  # the server's CPU seconds during the round (Caducée only)
    client_cpu: float = float("nan")  # this load generator's
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def ops(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def rate(self) -> float:
        return self.ops / self.elapsed

    @property
    def cpu_ms_per_op(self) -> float:
        return self.cpu / self.ops * 1000 if self.ops else float("nan")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


async def worker(i: int, port: int, ctx: ssl.SSLContext, deadline: float, res: Result, boxes: int) -> None:
    box = i % boxes
    user, secret = f"bench{box}@{DOMAIN}", password(box)
    n = 0
    while time.monotonic() < deadline:
        try:
            conn = await Conn.open(port, ctx)
        except (OSError, ssl.SSLError):
            res.errors["connect"] += 1
            await asyncio.sleep(0.1)
            continue
        exists = 0

        async def timed(name: str, text: str, data: bytes | None = None, conn: Conn = conn) -> list[bytes]:
            start = time.perf_counter()
            ok, untagged = await conn.cmd(text, data)
            res.latencies[name].append(time.perf_counter() - start)
            if not ok:
                res.errors[name] += 1
            return untagged

        try:
            n += 1
            await timed("LOGIN", f'LOGIN "{user}" "{secret}"')
            await timed("LIST", 'LIST "" "*"')
            await timed("STATUS", "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)")
            for line in await timed("SELECT", "SELECT INBOX"):
                if line.endswith(b" EXISTS\r\n"):
                    exists = int(line.split()[1])
            if exists:
                await timed("FETCH envelopes", "FETCH 1:* (UID FLAGS ENVELOPE)")
                await timed("FETCH body", f"FETCH {1 + n % exists} BODY.PEEK[]")
                await timed("STORE", f"STORE {1 + n % exists} {'+' if n % 2 else '-'}FLAGS (\\Seen)")
                await timed("STORE \\Deleted", "STORE 1 +FLAGS.SILENT (\\Deleted)")
                await timed("EXPUNGE", "EXPUNGE")
            await timed("APPEND", "APPEND INBOX", sample(n))
            await timed("LOGOUT", "LOGOUT")
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            res.errors["connection lost"] += 1
        finally:
            await conn.close()


async def run_mix(port: int, ctx: ssl.SSLContext, clients: int, seconds: float, boxes: int) -> Result:
    res = Result(0)
    start = time.monotonic()
    await asyncio.gather(*(worker(i, port, ctx, start + seconds, res, boxes) for i in range(clients)))
    res.elapsed = time.monotonic() - start
    return res


async def seed(port: int, ctx: ssl.SSLContext, boxes: int, messages: int) -> None:
    """``messages`` messages APPENDed to each mailbox's INBOX (untimed, the same on every server)."""
    sem = asyncio.Semaphore(10)

    async def one(box: int) -> None:
        async with sem:
            conn = await Conn.open(port, ctx)
            ok, _ = await conn.cmd(f'LOGIN "bench{box}@{DOMAIN}" "{password(box)}"')
            if not ok:
                raise SystemExit(f"seeding: LOGIN refused for bench{box}")
            for n in range(messages):
                ok, _ = await conn.cmd("APPEND INBOX", sample(n))
                if not ok:
                    raise SystemExit(f"seeding: APPEND refused for bench{box}")
            await conn.cmd("LOGOUT")
            await conn.close()

    await asyncio.gather(*(one(b) for b in range(boxes)))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def report(name: str, results: list[Result]) -> None:
    merged: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for r in results:
        for k, v in r.latencies.items():
            merged[k] += v
        for k, v in r.errors.items():
            errors[k] += v
    rates = " ".join(f"{r.rate:.0f}" for r in results)
    total_errors = sum(errors.values())
    print(
        f"\n{name}: median {statistics.median(r.rate for r in results):.0f} ops/s (rounds: {rates}), ", end=""
    )
    print(f"{total_errors} error replies" + (f" {dict(errors)}" if total_errors else ""))
    cpus = [r.cpu_ms_per_op for r in results if r.cpu == r.cpu]
    if cpus:
        rounds = " ".join(f"{c:.2f}" for c in cpus)
        print(f"  server CPU per operation: median {statistics.median(cpus):.2f} ms (rounds: {rounds})")
    print(f"  {'command':<18}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}")
    for command in COMMANDS:
        values = merged.get(command, [])
        p50 = statistics.median(values) * 1000 if values else float("nan")
        print(f"  {command:<18}{len(values):>8}{p50:>10.1f}{percentile(values, 0.99) * 1000:>10.1f}")


async def idle_memory(port: int, ctx: ssl.SSLContext, pid: int, count: int, boxes: int) -> None:
    conns: list[Conn] = []
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with sem:
            conn = await Conn.open(port, ctx)
            await conn.cmd(f'LOGIN "bench{i % boxes}@{DOMAIN}" "{password(i % boxes)}"')
            conns.append(conn)

    async def batch() -> float:
        """KiB of server RSS per connection for ``count`` more idle connections."""
        await asyncio.sleep(1)
        before = rss_kib(pid)
        await asyncio.gather(*(one(i) for i in range(count)))
        await asyncio.sleep(2)
        return (rss_kib(pid) - before) / count

    first = await batch()
    steady = await batch()
    print(f"\nidle memory: {2 * count} authenticated idle connections, server RSS per connection:")
    print(f"  first {count}: {first:.1f} KiB (with the heap growth their handshakes leave)")
    print(f"  next {count}:  {steady:.1f} KiB per idle connection (target < 64 KiB)")
    await asyncio.gather(*(c.close() for c in conns))


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    return ctx


def argon2_params(hashed: str) -> str:
    """``m=19456,t=2,p=1`` from an encoded argon2 hash (what Dovecot's libsodium verification reads)."""
    return hashed.split("$")[3]


async def measure(args: argparse.Namespace, info: dict, server_pid: int, dovecot_port: int | None) -> None:
    ctx = client_context(info["ca"])
    print(f"seeding {args.mailboxes} mailboxes × {args.messages} messages by APPEND...", flush=True)
    await seed(info["port"], ctx, args.mailboxes, args.messages)
    if dovecot_port is not None:
        await seed(dovecot_port, ctx, args.mailboxes, args.messages)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    caducee: list[Result] = []
    dovecot: list[Result] = []
    spy: asyncio.subprocess.Process | None = None
    for rnd in range(args.rounds):
        if args.py_spy and spy is None:
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("py-spy")),
                *("record", "--format", "raw", "--nonblocking", "--rate", "50"),
                *("--subprocesses", "--pid", str(server_pid), "--output", str(args.py_spy)),
                stdout=asyncio.subprocess.DEVNULL,
            )
            await asyncio.sleep(1)
        cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
        caducee.append(await run_mix(info["port"], ctx, args.clients, args.seconds, args.mailboxes))
        caducee[-1].cpu = cpu_seconds(server_pid) - cpu
        caducee[-1].client_cpu = time.process_time() - client_cpu
        client_ms = caducee[-1].client_cpu / max(caducee[-1].ops, 1) * 1000
        line = (
            f"round {rnd + 1}: Caducée {caducee[-1].rate:.0f} ops/s, {caducee[-1].cpu_ms_per_op:.2f} ms "
            f"server CPU/op, {client_ms:.2f} ms client CPU/op ({caducee[-1].error_count} errors, "
            f"load {os.getloadavg()[0]:.1f})"
        )
        if dovecot_port is not None:
            dovecot.append(await run_mix(dovecot_port, ctx, args.clients, args.seconds, args.mailboxes))
            line += f", Dovecot {dovecot[-1].rate:.0f} ops/s ({dovecot[-1].error_count} errors)"
        print(line, flush=True)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        await asyncio.wait_for(spy.wait(), 30)
        print(f"py-spy profile of Caducée's server written to {args.py_spy}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    setup = f"{args.clients} clients, {args.mailboxes} mailboxes, {args.seconds:g} s × {args.rounds} rounds"
    report(f"Caducée ({setup}, credential cache {'on' if args.cache else 'off'})", caducee)
    if dovecot_port is not None:
        auth = "plain-text passwords" if args.dovecot_plain else "the same argon2id hashes"
        report(f"Dovecot ({auth}, auth_cache {'on' if args.cache else 'off'})", dovecot)
        ratio = statistics.median(r.rate for r in caducee) / statistics.median(r.rate for r in dovecot)
        print(f"\nratio Caducée/Dovecot: {ratio:.2f}× (medians of {args.rounds} interleaved rounds)")
    if args.idle:
        await idle_memory(info["port"], ctx, server_pid, args.idle, args.mailboxes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10, help="length of each timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--mailboxes", type=int, default=50)
    parser.add_argument("--messages", type=int, default=30, help="messages APPENDed to each mailbox first")
    parser.add_argument("--against-dovecot", action="store_true", help="interleave with a private Dovecot")
    parser.add_argument("--dovecot-plain", action="store_true", help="Dovecot with clear-text passwords")
    parser.add_argument("--cache", action="store_true", help="both sides' verified-credential caches on")
    parser.add_argument(
        "--concurrent-verifications", type=int, default=4, help="Caducée's [auth] setting (default 4)"
    )
    parser.add_argument("--idle", type=int, default=0, help="then RSS per idle connection (N, N more)")
    parser.add_argument("--db", default=None, help="database URL for the server (default: fresh SQLite)")
    parser.add_argument(
        "--workers", type=int, default=0, help="serve with caducee serve and [server] workers = N"
    )
    parser.add_argument("--py-spy", type=Path, help="record Caducée's server with py-spy (raw format)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    if args.serve:
        ttl = 300 if args.cache else 0
        verifications = args.concurrent_verifications
        asyncio.run(serve(args.serve, args.db, args.mailboxes, ttl, verifications, args.workers))
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--serve", tmp, "--mailboxes", str(args.mailboxes)]
        cmd += ["--db", args.db] if args.db else []
        cmd += ["--cache"] if args.cache else []
        cmd += ["--concurrent-verifications", str(args.concurrent_verifications)]
        cmd += ["--workers", str(args.workers)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            hashes: dict[str, str] = info["hashes"]
            params = {argon2_params(h) for h in hashes.values()}
            served = f"caducee serve, {args.workers} worker(s)" if args.workers else "IMAP listener alone"
            print(f"Caducée ({served}) on 127.0.0.1:{info['port']}, argon2id {', '.join(sorted(params))}")
            server_pid = info.get("pid", proc.pid)
            if not args.against_dovecot:
                asyncio.run(measure(args, info, server_pid, None))
                return
            from bench.peers import private_dovecot

            plain = {f"bench{i}@{DOMAIN}": password(i) for i in range(args.mailboxes)}
            with private_dovecot(
                hashes, info["cert"], info["key"], plain if args.dovecot_plain else None, args.cache
            ) as dv:
                version = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout
                auth = (
                    "clear-text passwords" if args.dovecot_plain else f"the same hashes ({', '.join(params)})"
                )
                print(f"Dovecot {version.split()[0]} on 127.0.0.1:{dv.port}, passwd-file with {auth}")
                asyncio.run(measure(args, info, server_pid, dv.port))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: servers stopped")
