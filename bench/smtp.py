"""SMTP benchmark: the durable MTA path against a bare aiosmtpd sink, same load, same run.

    .venv/bin/python bench/smtp.py [--messages 2000] [--size 10240] [--connections 8] [--rounds 3]
                                   [--db URL] [--against-postfix]

Load: ``--messages`` messages of ``--size`` bytes over ``--connections`` connections, each one
STARTTLS with operator B's client certificate (mutual TLS, test PKI), then one SMTP transaction per
message. Client load runs in a separate process; the server's CPU time is this process's.
1. Caducée's MTA: trust-list check, RCPT policy, the message durable before every 250 (committed in
   its row with the WAL fsync'ed, or, above ``[storage] inline_max``, as a file fsync'ed first).
2. A bare aiosmtpd server with the same TLS context whose handler discards the message (a ceiling).
The two run in alternating rounds (``--rounds``, default 5) so that the machine's other load weighs on
both alike. Prints, for both, the median messages per second and server CPU milliseconds per message
(and each round's rate), and the ratio of the medians (target: durable ≥ 50 % of the sink).
3. With ``--against-postfix``, a private Postfix (bench/peers.py: Debian's package, installed when
   missing; ``postfix -c DIR start-fg`` on a free port of 127.0.0.1, requiring a client certificate of
   the test PKI, virtual(8) delivery into Maildirs) in the same rotation, and the ratio of Caducée's
   median to Postfix's (Postfix answers 250 once its queue file is fsync'ed; delivery into the Maildir
   follows, and the run waits for every message to be there). Postfix's CPU is not in this process:
   only its rate is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiosmtplib
from aiosmtpd.smtp import SMTP

from config.settings import from_dict
from mailserver import accounts, trust
from mailserver.db import migrate
from mailserver.runtime import Runtime
from mailserver.smtp import service
from mailserver.tls import server_context
from tests.pki import make_pki

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import private_postfix

RCPT = "dr.martin@a.mssante.test"


def _message(size: int, i: int) -> bytes:
    head = f"From: <dr.durand@b.mssante.test>\r\nTo: <{RCPT}>\r\nSubject: bench {i}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _client(port: int, count: int, size: int, ctx: ssl.SSLContext, offset: int) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, tls_context=ctx, timeout=60)
    await client.connect()
    await client.starttls()
    for i in range(count):
        errors, _ = await client.sendmail("dr.durand@b.mssante.test", [RCPT], _message(size, offset + i))
        if errors:
            raise RuntimeError(f"refused: {errors}")
    await client.quit()


def _load(port: int, messages: int, size: int, connections: int, files: tuple[str, str, str]) -> None:
    chain, key, ca = files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(chain, key)
    per = messages // connections

    async def run() -> None:
        await asyncio.gather(*(_client(port, per, size, ctx, c * per) for c in range(connections)))

    asyncio.run(run())


async def _measure(port: int, args: argparse.Namespace, files: tuple[str, str, str]) -> tuple[float, float]:
    proc = multiprocessing.get_context("spawn").Process(
        target=_load, args=(port, args.messages, args.size, args.connections, files)
    )
    wall, cpu = time.perf_counter(), time.process_time()
    proc.start()
    await asyncio.to_thread(proc.join)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if proc.exitcode != 0:
        raise SystemExit(f"client load failed (exit {proc.exitcode})")
    return wall, cpu


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as peers:
        root = Path(tmp)
        pki = make_pki(root / "pki")
        a, b = pki.tls["a.mssante.test"], pki.tls["b.mssante.test"]
        files = (str(b.chain_path), str(b.key_path), str(pki.peer_ca))
        postfix = None
        if args.against_postfix:
            postfix = peers.enter_context(
                private_postfix(str(a.chain_path), str(a.key_path), str(pki.peer_ca), [RCPT])
            )
        url = args.db or f"sqlite+aiosqlite:///{root}/caducee.db"
        settings = from_dict(
            {
                "server": {"hostname": "mx.a.mssante.test"},
                "database": {"url": url},
                "storage": {"path": str(root / "store")},
                "tls": {"cert": str(a.chain_path), "key": str(a.key_path), "peer_ca": str(pki.peer_ca)},
                "smtp": {"listen": ["127.0.0.1:0"]},
                "submission": {"listen": [], "tls_listen": []},
                "limits": {"connections_per_ip": 100},
                "quota": {"default_storage": 0},
            },
            root / "caducee.toml",
        )
        await migrate.upgrade_async(url)
        rt = Runtime.build(settings)
        await asyncio.to_thread(rt.blobs.ensure)
        await accounts.add_domain(rt, "a.mssante.test", patients=False)
        await accounts.add_mailbox(rt, RCPT, "PER", rpps="10000000009")
        await trust.add(rt.db, "b.mssante.test", pki.tls["b.mssante.test"].subject)
        started = await service.start(rt)
        mta = next(s for s in started if isinstance(s, service.SMTPListener))
        port = int(mta.address.rsplit(":", 1)[1])

        ctx = server_context(settings.tls, "optional")
        loop = asyncio.get_running_loop()
        sink = await loop.create_server(
            lambda: SMTP(_Sink(), tls_context=ctx, require_starttls=True, hostname="sink"), "127.0.0.1", 0
        )
        sink_port = sink.sockets[0].getsockname()[1]

        # Alternate the two, round after round: whatever else the machine is doing then weighs on both.
        durable: list[tuple[float, float]] = []
        bare: list[tuple[float, float]] = []
        peer: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            durable.append(await _measure(port, args, files))
            bare.append(await _measure(sink_port, args, files))
            if postfix is not None:
                peer.append(await _measure(postfix.port, args, files))
        delivered = await asyncio.to_thread(
            _drained, postfix, args.messages // args.connections * args.connections * args.rounds
        )
        stored = (await accounts.get_mailbox(rt, RCPT)).used_messages
        sink.close()
        for item in reversed(started):
            await item.close()
        await rt.close()

    n = args.messages // args.connections * args.connections
    engine = url.split(":")[0]
    print(f"load: {n} messages of {args.size} bytes, {args.connections} mutual-TLS connections ({engine}),")
    rotation = "the durable MTA, the bare sink" + (" and Postfix" if peer else "")
    print(f"      {args.rounds} rounds alternating {rotation}; medians")
    rate, cpu = _median(durable, n)
    sink_rate, sink_cpu = _median(bare, n)
    print(f"durable MTA : {rate:8.1f} msg/s  {cpu:6.2f} ms CPU/msg  (rounds: {_rates(durable, n)})")
    print(f"bare sink   : {sink_rate:8.1f} msg/s  {sink_cpu:6.2f} ms CPU/msg  (rounds: {_rates(bare, n)})")
    if peer:
        peer_rate = statistics.median(n / wall for wall, _ in peer)
        print(
            f"Postfix     : {peer_rate:8.1f} msg/s  (rounds: {_rates(peer, n)}), {delivered} in its Maildir"
        )
    print(f"stored      : {stored} messages in the mailbox")
    print(f"ratio       : {rate / sink_rate * 100:5.1f} % of the sink (target ≥ 50 %)")
    if peer:
        print(f"ratio       : {rate / peer_rate:5.2f}× Postfix (Caducée/Postfix, target ≥ 1.0)")
        if delivered != n * args.rounds:
            raise SystemExit(f"Postfix delivered only {delivered} of {n * args.rounds} messages")
    if stored != n * args.rounds:
        raise SystemExit(f"only {stored} of {n * args.rounds} messages stored")


def _drained(postfix: Any, expected: int, timeout: float = 120) -> int:
    """Messages in Postfix's Maildir once its queue delivered ``expected`` (or ``timeout`` passed)."""
    if postfix is None:
        return 0
    deadline = time.monotonic() + timeout
    while (count := postfix.delivered()) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return count


def _median(runs: list[tuple[float, float]], n: int) -> tuple[float, float]:
    """Median rate (messages per second) and median server CPU per message (ms) over the rounds."""
    return statistics.median(n / wall for wall, _ in runs), statistics.median(
        cpu / n * 1000 for _, cpu in runs
    )


def _rates(runs: list[tuple[float, float]], n: int) -> str:
    return " ".join(f"{n / wall:.0f}" for wall, _ in runs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each (default 5)")
    parser.add_argument("--db", help="database URL (default: a SQLite file in a temporary directory)")
    parser.add_argument("--against-postfix", action="store_true", help="also a private Postfix, ratio")
    asyncio.run(main(parser.parse_args()))
