"""Folder hardening (issue 13): every way of making folders is bounded (``[limits] folder_name_length
/ folder_depth / folders_per_mailbox``, ``NO [LIMIT]``), subscriptions too, and an error in a command
costs that command, never the connection. (LIST and the event loop: test_server_starvation.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

from mailserver.runtime import Runtime
from tests.imap.conftest import MARTIN, IMAPEnv, running
from tests.imap.helpers import Client


def status(lines: list[str]) -> list[str]:
    """``["NO", "[LIMIT]"]`` from a tagged completion."""
    return lines[-1].split()[1:3]


async def pipelined(client: Client, commands: list[str]) -> asyncio.Task[list[str]]:
    """Send all commands at once; the task ends with the last one's completion (a NOOP goes first and
    is awaited: the server then has them all)."""
    tags = [client.tag() for _ in range(len(commands) + 1)]
    wire = "".join(f"{t} {c}\r\n" for t, c in zip(tags, ["NOOP", *commands], strict=True))
    await client.send(wire)
    await client.until(tags[0])
    return asyncio.create_task(client.until(tags[-1], wait=300))


async def test_one_create_cannot_make_unlimited_folders(imap: IMAPEnv) -> None:
    """Issue 13: a 9,889-octet ``CREATE "x/x/…"`` made 1,000 folders. Depth and length are limits,
    checked before anything is created, and audited."""
    c = await imap.connect()
    before = await c.ok('LIST "" "*"')
    assert status(await c.command('CREATE "' + "/".join(["x"] * 4945) + '"')) == ["NO", "[LIMIT]"]
    assert status(await c.command('CREATE "' + "/".join(["x"] * 17) + '"')) == ["NO", "[LIMIT]"]
    assert status(await c.command('CREATE "' + "é" * 128 + '"')) == ["NO", "[CANNOT]"]  # 8-bit, no UTF8
    await c.ok("ENABLE UTF8=ACCEPT")
    assert status(await c.command('CREATE "' + "é" * 128 + '"')) == ["NO", "[LIMIT]"]  # 256 octets
    await c.ok('CREATE "' + "é" * 127 + '"')
    await c.ok('CREATE "' + "/".join(["x"] * 16) + '"')
    after = await c.ok('LIST "" "*"')
    assert len(after) == len(before) + 17
    events = await imap.rt.audit.events(actor=MARTIN, action="limit")
    assert [e.request[:11] for e in events] == ["imap CREATE"] * 3
    assert all(e.response.startswith("NO [LIMIT]") for e in events)
    await c.close()


async def test_rename_obeys_the_limits_for_the_whole_subtree(imap: IMAPEnv) -> None:
    c = await imap.connect()
    await c.ok('CREATE "a/' + "/".join(["y"] * 14) + '"')  # 15 levels
    assert status(await c.command("RENAME a b/c/d")) == ["NO", "[LIMIT]"]  # its deepest child: 17 levels
    assert status(await c.command('RENAME a "' + "z" * 250 + '"')) == ["NO", "[LIMIT]"]  # children too long
    assert not any(x.rsplit(" ", 1)[1] == "b" for x in await c.ok('LIST "" "%"'))
    await c.ok("RENAME a b")
    assert any(x.endswith(" b/y/y") for x in await c.ok('LIST "" "b/%/%"'))
    await c.close()


async def test_folder_count_is_a_limit_even_for_concurrent_creates(runtime: Runtime, pki: Any) -> None:
    """Checked in the write transaction after the mailbox lock: parallel CREATEs on two connections
    (and parents that a CREATE would add) never exceed it, on both engines."""
    async with running(runtime, pki, folders_per_mailbox=20) as env:
        a, b = await env.connect(), await env.connect()
        assert status(await a.command('CREATE "p/q/r/s/t/u/v/w/x/y/z/0/1/2/3"')) == ["NO", "[LIMIT]"]  # 6+15
        tasks = [
            await pipelined(c, [f"CREATE {who}{i}" for i in range(10)]) for who, c in [("a", a), ("b", b)]
        ]
        done = [line for t in tasks for line in await t]
        refused = [x for x in done if " NO [LIMIT] " in x]
        assert len(refused) == 6 and sum(1 for x in done if x.endswith(" OK CREATE completed")) == 14
        assert len(await env.rt.store.folders(env.mailboxes[MARTIN])) == 20
        assert status(await a.command("RENAME INBOX Ancien")) == ["NO", "[LIMIT]"]  # it adds a folder
        await a.ok("RENAME a0 Ancien")  # a rename that adds none is fine
        for c in (a, b):
            await c.close()


async def test_subscriptions_are_bounded_and_outlive_delete(runtime: Runtime, pki: Any) -> None:
    """RFC 3501 §6.3.6: DELETE keeps the subscription, so the list is bounded on its own."""
    async with running(runtime, pki, folders_per_mailbox=8) as env:
        c = await env.connect()
        for verb, name in [("CREATE", "X1"), ("CREATE", "X2"), ("DELETE", "X1"), ("DELETE", "X2")]:
            await c.ok(f"{verb} {name}")
        await c.ok("CREATE X3")  # made, but not subscribed: the list holds 8 names already
        assert status(await c.command("SUBSCRIBE X3")) == ["NO", "[LIMIT]"]
        lines = await c.ok('LIST (SUBSCRIBED) "" "X*"')
        assert lines[:-1] == [f'* LIST (\\NonExistent \\Subscribed) "/" {name}' for name in ("X1", "X2")]
        await c.ok("UNSUBSCRIBE X2")  # a subscribed name whose folder is gone
        assert status(await c.command("UNSUBSCRIBE X2")) == ["NO", "[NONEXISTENT]"]
        await c.ok("SUBSCRIBE X3")
        assert (await c.ok('LSUB "" "X*"'))[:-1] == ['* LSUB () "/" X1', '* LSUB () "/" X3']
        await c.close()


async def test_a_failing_command_costs_only_the_command(imap: IMAPEnv, monkeypatch: Any) -> None:
    """An OSError inside a command (a database or blob file error) used to end the session without a
    tagged reply; only a connection that is really gone may end it."""

    async def broken(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    c = await imap.connect()
    monkeypatch.setattr(imap.rt.store, "listing", broken, raising=False)
    monkeypatch.setattr(imap.rt.store, "folders", broken)
    assert status(await c.command('LIST "" "*"')) == ["NO", "[SERVERBUG]"]
    assert status(await c.command('LSUB "" "*"')) == ["NO", "[SERVERBUG]"]
    await c.ok("NOOP")
    await c.close()
