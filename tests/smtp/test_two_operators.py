"""Two ``caducee serve`` processes, operators A and B, exchanging mail both ways over mutual TLS.

Covers: delivery A→B and B→A through the queue, a success DSN (NOTIFY=SUCCESS, issued by B and routed
back to A), a bounce when B refuses an unknown user, and a queued message surviving a restart of A
while B is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailserver.queue.queue import Queue
from tests.smtp.conftest import wait_for
from tests.smtp.operators import Operator, prepare, two_operators, write_config


@pytest.fixture
async def operators(tmp_path: Path, db_url: str, pki: Any) -> AsyncIterator[tuple[Operator, Operator]]:
    a, b = two_operators(tmp_path)
    ops = [a, b]
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
