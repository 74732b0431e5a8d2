"""IMAP benchmark: throughput and latency of a realistic client mix, and memory per idle connection.

    .venv/bin/python bench/imap.py [--seconds 10] [--clients 10 50] [--idle 1000] [--db URL]

The server runs in a subprocess (``--serve``: a fresh SQLite database, or ``--db`` for PostgreSQL,
self-signed TLS, mailboxes ``bench<i>@a.mssante.test`` each holding 50 messages). Clients speak
IMAP over implicit TLS on loopback. Phase 1 runs N clients doing LOGIN, SELECT, FETCH flags+envelope,
FETCH a body, STORE, SEARCH, APPEND, IDLE/DONE and LOGOUT for a fixed time and prints ops/s and
p50/p99 per command. Phase 2 opens ``--idle`` authenticated idle connections, then as many again,
reading the server's RSS before and after each batch. The first batch also pays for heap growth that
the TLS handshakes leave behind (glibc keeps freed memory); the second, made once that memory is
there to reuse, is what each further idle connection costs: the figure held to the target (under
64 KiB). Both are printed.
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
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PASSWORD = "Bench-Password-2026"
DOMAIN = "a.mssante.test"
MESSAGES_PER_BOX = 50


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def sample(i: int) -> bytes:
    return (
        f"From: Dr Bench <dr.bench@{DOMAIN}>\r\nTo: <bench0@{DOMAIN}>\r\nSubject: Compte rendu {i}\r\n"
        f"Date: Mon, 2 Feb 2026 10:00:00 +0100\r\nMessage-ID: <bench-{i}@{DOMAIN}>\r\n\r\n"
        + "Ligne de compte rendu medical.\r\n"
        * 40
    ).encode()


# --------------------------------------------------------------------------- server subprocess


async def serve(directory: Path, db_url: str | None, mailboxes: int) -> None:
    from mailserver import accounts
    from mailserver.db import migrate
    from mailserver.imap import server
    from mailserver.runtime import Runtime
    from mailserver.tls import make_first_run_certificates
    from tests.conftest import make_settings

    url = db_url or f"sqlite+aiosqlite:///{directory}/bench.db"
    chain, key, ca = make_first_run_certificates(directory / "tls", "localhost", "Bench")
    settings = make_settings(
        directory,
        url,
        tls={"cert": str(chain), "key": str(key), "peer_ca": str(ca)},
        imap={"listen": [], "tls_listen": ["127.0.0.1:0"]},
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
    for i in range(mailboxes):
        mb = await accounts.add_mailbox(rt, f"bench{i}@{DOMAIN}", "ORG", password=PASSWORD)
        for n in range(MESSAGES_PER_BOX):
            await rt.store.deliver(await rt.store.prepare(sample(n)), [mb.id])
    listeners = await server.start(rt)
    print(json.dumps({"port": listeners[0].port, "ca": str(ca)}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for listener in listeners:
        await listener.close()
    await rt.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


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

    async def read_until(self, tag: bytes) -> bytes:
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line.endswith(b"}\r\n"):
                size = int(line[line.rindex(b"{") + 1 : -3].rstrip(b"+"))
                await self.reader.readexactly(size)
                continue
            if line.startswith(tag + b" "):
                return line

    async def cmd(self, text: str, data: bytes | None = None) -> bytes:
        self.n += 1
        tag = b"b%d" % self.n
        if data is None:
            self.writer.write(tag + b" " + text.encode() + b"\r\n")
        else:
            self.writer.write(tag + b" " + text.encode() + b" {%d+}\r\n" % len(data) + data + b"\r\n")
        line = await self.read_until(tag)
        if not line.startswith(tag + b" OK"):
            raise RuntimeError(f"{text}: {line!r}")
        return line

    async def idle_done(self) -> None:
        self.n += 1
        tag = b"b%d" % self.n
        self.writer.write(tag + b" IDLE\r\n")
        while not (await self.reader.readline()).startswith(b"+"):
            pass
        self.writer.write(b"DONE\r\n")
        await self.read_until(tag)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def worker(
    i: int, port: int, ctx: ssl.SSLContext, deadline: float, lat: dict[str, list[float]], boxes: int
) -> None:
    user = f"bench{i % boxes}@{DOMAIN}"

    async def timed(name: str, coro) -> bytes | None:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        result = await coro
        lat[name].append(time.perf_counter() - start)
        return result

    n = 0
    while time.monotonic() < deadline:
        conn = await Conn.open(port, ctx)
        await timed("LOGIN", conn.cmd(f'LOGIN "{user}" "{PASSWORD}"'))
        for _ in range(10):
            if time.monotonic() >= deadline:
                break
            n += 1
            await timed("SELECT", conn.cmd("SELECT INBOX"))
            await timed("FETCH flags+envelope", conn.cmd("FETCH 1:20 (FLAGS ENVELOPE)"))
            await timed("FETCH body", conn.cmd(f"FETCH {1 + n % 20} BODY.PEEK[]"))
            await timed("STORE", conn.cmd(f"STORE {1 + n % 20} {'+' if n % 2 else '-'}FLAGS (\\Seen)"))
            await timed("SEARCH", conn.cmd("SEARCH UNSEEN SUBJECT rendu"))
            await timed("APPEND", conn.cmd("APPEND Drafts", sample(n)))
            await timed("IDLE+DONE", conn.idle_done())
        await timed("LOGOUT", conn.cmd("LOGOUT"))
        await conn.close()


async def run_mix(port: int, ctx: ssl.SSLContext, clients: int, seconds: float, boxes: int) -> None:
    lat: dict[str, list[float]] = defaultdict(list)
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    await asyncio.gather(*(worker(i, port, ctx, deadline, lat, boxes) for i in range(clients)))
    elapsed = time.monotonic() - start
    total = sum(len(v) for v in lat.values())
    print(f"\n{clients} clients, {elapsed:.1f} s: {total} commands, {total / elapsed:.0f} ops/s")
    print(f"  {'command':<22}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}")
    for name, values in lat.items():
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(f"  {name:<22}{len(values):>8}{statistics.median(values) * 1000:>10.2f}{p99 * 1000:>10.2f}")


async def idle_memory(port: int, ctx: ssl.SSLContext, pid: int, count: int, boxes: int) -> None:
    conns: list[Conn] = []
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with sem:
            conn = await Conn.open(port, ctx)
            await conn.cmd(f'LOGIN "bench{i % boxes}@{DOMAIN}" "{PASSWORD}"')
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


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--db", default=None, help="database URL for the server (default: fresh SQLite)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    if args.serve:
        await serve(args.serve, args.db, args.mailboxes)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--serve", tmp, "--mailboxes", str(args.mailboxes)]
        if args.db:
            cmd += ["--db", args.db]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            assert proc.stdout is not None
            info = json.loads(await proc.stdout.readline())
            ctx = ssl.create_default_context(cafile=info["ca"])
            ctx.check_hostname = False
            for clients in args.clients:
                await run_mix(info["port"], ctx, clients, args.seconds, args.mailboxes)
            await idle_memory(info["port"], ctx, proc.pid, args.idle, args.mailboxes)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


if __name__ == "__main__":
    asyncio.run(main())
