"""Issue 13: one session's LIST/LSUB must not hold the event loop that every session and listener
share. A real ``caducee serve`` process (so that this test's own loop measures it from outside):
while one client runs the adversarial pattern and lists the most folders a mailbox may have every
way, another session's NOOP, a new IMAP greeting and the SMTP banner each answer within ``BOUND``,
or within ``SLOWDOWN`` times the slowest of the same probes on the idle server when the machine is so
loaded that even those are slow. Starvation, not speed, is measured: the LISTs may take as long as they
need (the regex of the bug held the loop 10.6 s per LIST)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailserver import accounts
from tests.imap.helpers import Client, tls_client
from tests.ports import free_port
from tests.smtp.conftest import PASSWORD
from tests.smtp.operators import Operator, prepare, two_operators, write_config

MARTIN = "dr.martin@a.mssante.test"
ADVERSARIAL = "*a*a*a*a*a*a*a*a*a*a*a*a*ab"  # 10.6 s of regex backtracking per LIST before the fix
FOLDERS, DEPTH = 1000, 16  # the default [limits] folders_per_mailbox and folder_depth
BOUND, SLOWDOWN = 0.5, 4


@pytest.fixture
async def operator(tmp_path: Path, pki: Any) -> AsyncIterator[Operator]:
    """Operator A with IMAPS, and dr.martin's mailbox filled up to the folder limit before it starts."""
    a, b = two_operators(tmp_path)
    a.imaps = free_port()
    write_config(a, pki, f"sqlite+aiosqlite:///{a.directory}/caducee.db", b)
    await prepare(a, pki, ["dr.martin"])
    assert a.rt is not None
    try:
        yield a
    finally:
        a.stop()
        await a.rt.close()


async def fill(op: Operator) -> int:
    """Folders up to ``FOLDERS``: a 32-``a`` name for the adversarial pattern, then 16-level branches;
    returns how many top-level names ``%`` lists."""
    assert op.rt is not None
    store = op.rt.store
    mailbox = (await accounts.get_mailbox(op.rt, MARTIN)).id
    await store.create_folder(mailbox, "a" * 32)
    count = len(await store.folders(mailbox))
    top, branch = count, 0
    while count < FOLDERS:
        levels = min(DEPTH, FOLDERS - count)
        await store.create_folder(mailbox, "/".join(f"b{branch}l{i}" for i in range(levels)))
        count += levels
        branch += 1
    return top + branch


async def waits_while(op: Operator, pki: Any, other: Client, busy: asyncio.Future[Any]) -> list[float]:
    """NOOP on a logged-in session, a new IMAPS greeting, an SMTP banner, in turn, while ``busy`` runs."""
    waits: list[float] = []
    while not waits or not busy.done():
        start = time.monotonic()
        assert (await other.command("NOOP", wait=600))[-1].endswith(" OK NOOP completed")
        waits.append(time.monotonic() - start)
        start = time.monotonic()
        fresh = await asyncio.wait_for(Client.connect(op.imaps, tls_client(pki)), 600)
        waits.append(time.monotonic() - start)
        await fresh.close()
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", op.smtp)
        banner = await asyncio.wait_for(reader.readline(), 600)
        waits.append(time.monotonic() - start)
        assert banner.startswith(b"220 ")
        writer.close()
        await writer.wait_closed()
    return waits


@pytest.mark.slow
async def test_long_lists_do_not_starve_other_sessions(operator: Operator, pki: Any) -> None:
    top = await fill(operator)
    operator.start()
    await operator.ready()
    busy_client, other = [await Client.connect(operator.imaps, tls_client(pki)) for _ in range(2)]
    for client in (busy_client, other):
        await client.login(MARTIN, PASSWORD)
    idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    idle.set_result(None)
    baseline = [w for _ in range(5) for w in await waits_while(operator, pki, other, idle)]
    commands = [f'LIST "" "{ADVERSARIAL}"', f'LSUB "" "{ADVERSARIAL}"', 'LIST "" "*"', 'LSUB "" "*"']
    commands += ['LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"', 'LIST "" "*%*%*x" RETURN (CHILDREN)']
    tags = [busy_client.tag() for _ in commands]
    await busy_client.send("".join(f"{t} {c}\r\n" for t, c in zip(tags, commands, strict=True)))
    busy = asyncio.create_task(busy_client.until(tags[-1], wait=600))
    waits = await waits_while(operator, pki, other, busy)
    lines = await busy
    assert sum(1 for x in lines if x.startswith("* LIST ")) == FOLDERS + top
    assert sum(1 for x in lines if x.startswith("* LSUB ")) == FOLDERS
    assert sum(1 for x in lines if " OK " in x) == len(commands)
    bound = max(BOUND, SLOWDOWN * max(baseline))
    assert max(waits) < bound, (sorted(waits)[-5:], sorted(baseline)[-3:])
    for client in (busy_client, other):
        await client.close()
