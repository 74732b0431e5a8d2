"""Several sessions on one mailbox (SQLite and PostgreSQL): EXISTS/EXPUNGE/FETCH at the right times,
IDLE woken at once by a delivery, CONDSTORE/QRESYNC resynchronisation, SEARCH/SORT/THREAD glue."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

from imapclient import IMAPClient

from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv, message


async def test_updates_reach_other_session_at_allowed_points(imap_both: IMAPEnv) -> None:
    env = imap_both
    for i in range(3):
        await env.deliver(message(f"m{i}"))
    a, b = await env.connect(), await env.connect()
    await a.ok("SELECT INBOX")
    await b.ok("SELECT INBOX")
    since = env.rt.notifier.published
    await a.ok("STORE 2 +FLAGS.SILENT (\\Deleted \\Flagged)")
    await a.ok("EXPUNGE")
    await env.deliver(message("new"))
    await env.relayed(since, 3)  # PostgreSQL: the NOTIFY relay is asynchronous
    # RFC 9051 §7.5.1: no EXPUNGE during FETCH; EXISTS is fine (message 2 is still seq 2 for b).
    lines = await b.ok("FETCH 1:3 (FLAGS)")
    assert not any("EXPUNGE" in x for x in lines)
    assert "* 4 EXISTS" in lines
    lines = await b.ok("NOOP")
    assert lines[0] == "* 2 EXPUNGE"
    lines = await b.ok("FETCH 1:* (UID)")
    assert [re.search(r"UID (\d+)", x).group(1) for x in lines[:-1]] == ["1", "3", "4"]  # type: ignore[union-attr]
    since = env.rt.notifier.published
    await a.ok("STORE 1 +FLAGS (\\Answered)")
    await env.relayed(since, 1)
    lines = await b.ok("NOOP")
    assert lines[0] == "* 1 FETCH (UID 1 FLAGS (\\Answered))"
    for c in (a, b):
        await c.close()


async def test_idle_wakes_on_delivery_and_expunge(imap_both: IMAPEnv) -> None:
    env = imap_both
    await env.deliver(message("first"))
    c = await env.connect()
    await c.ok("SELECT INBOX")
    await c.send("i1 IDLE\r\n")
    assert await c.line() == "+ idling"
    await env.deliver(message("second"))
    assert await c.line(wait=5) == "* 2 EXISTS"  # pushed: nothing polls, so a missed wake-up hangs
    assert await c.line(wait=5) == "* 2 RECENT"
    other = await env.connect()
    await other.ok("SELECT INBOX")
    await other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await other.ok("EXPUNGE")
    lines = [await c.line(wait=5), await c.line(wait=5)]
    assert lines[0].startswith("* 1 FETCH (UID 1 FLAGS (\\Deleted")
    assert lines[1] == "* 1 EXPUNGE"
    await c.send("DONE\r\n")
    assert await c.line() == "i1 OK IDLE terminated"
    await c.close()
    await other.close()


async def test_qresync_from_stale_state(imap_both: IMAPEnv) -> None:
    env = imap_both
    for i in range(4):
        await env.deliver(message(f"q{i}"))
    c = await env.connect()
    await c.ok("ENABLE QRESYNC")
    lines = await c.ok("SELECT INBOX")
    validity = re.search(r"UIDVALIDITY (\d+)", " ".join(lines)).group(1)  # type: ignore[union-attr]
    modseq = int(re.search(r"HIGHESTMODSEQ (\d+)", " ".join(lines)).group(1))  # type: ignore[union-attr]
    await c.ok("UNSELECT")
    other = await env.connect()
    await other.ok("SELECT INBOX")
    await other.ok("STORE 3 +FLAGS.SILENT (\\Flagged)")
    await other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await other.ok("EXPUNGE")
    lines = await c.ok(f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:4))")
    assert "* VANISHED (EARLIER) 2" in lines
    fetches = [x for x in lines if "FETCH" in x]
    assert len(fetches) == 1 and re.match(
        r"\* 2 FETCH \(UID 3 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", fetches[0]
    )
    lines = await c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[0] == "* VANISHED (EARLIER) 2"
    assert re.match(r"\* 2 FETCH \(UID 3 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", lines[1])
    since = env.rt.notifier.published
    await other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await other.ok("EXPUNGE")
    await env.relayed(since, 2)
    lines = await c.ok("NOOP")
    assert lines[0] == "* VANISHED 1"  # QRESYNC: VANISHED replaces EXPUNGE
    for x in (c, other):
        await x.close()


async def test_condstore_needs_enable_for_qresync(imap: IMAPEnv) -> None:
    c = await imap.connect()
    assert (await c.command("SELECT INBOX (QRESYNC (1 1))"))[-1].split()[1] == "BAD"
    await c.ok("SELECT INBOX")
    assert (await c.command("UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)"))[-1].split()[1] == "BAD"
    await imap.deliver(message("x"))
    lines = await c.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")
    assert re.search(r"\* 1 FETCH \(FLAGS \(\\Recent\) MODSEQ \(\d+\)\)", " ".join(lines))
    await c.close()


async def test_search_sort_thread(imap: IMAPEnv) -> None:
    await imap.deliver(message("Bilan sanguin", "resultats normaux\r\n"))
    await imap.deliver(message("Re: Bilan sanguin", "merci\r\n", In_Reply_To="<x@y>"))
    await imap.deliver(message("Ordonnance", "amoxicilline\r\n"))
    c = await imap.connect()
    await c.ok("SELECT INBOX")
    await c.ok("STORE 2 +FLAGS (\\Flagged)")
    assert (await c.ok("SEARCH FLAGGED"))[0] == "* SEARCH 2"
    assert (await c.ok("UID SEARCH BODY amoxicilline"))[0] == "* SEARCH 3"
    assert (await c.ok('SEARCH SUBJECT "bilan"'))[0] == "* SEARCH 1 2"
    lines = await c.ok("SEARCH RETURN (MIN MAX COUNT) ALL")
    assert lines[0] == f'* ESEARCH (TAG "t{c.counter}") MIN 1 MAX 3 COUNT 3'
    await c.ok("SEARCH RETURN (SAVE) UNFLAGGED")
    lines = await c.ok("FETCH $ (UID)")
    assert [x.split()[1] for x in lines[:-1]] == ["1", "3"]
    lines = await c.ok("UID SEARCH RETURN (ALL) UID $")
    assert lines[0] == f'* ESEARCH (TAG "t{c.counter}") UID ALL 1,3'
    lines = await c.ok("SORT (REVERSE SUBJECT) UTF-8 ALL")
    assert lines[0] == "* SORT 3 1 2" or lines[0] == "* SORT 3 2 1"
    lines = await c.ok("THREAD ORDEREDSUBJECT UTF-8 ALL")
    assert lines[0] == "* THREAD (1 2)(3)"
    lines = await c.ok("UID THREAD REFERENCES UTF-8 ALL")
    assert lines[0].startswith("* THREAD ")
    assert (await c.command("SEARCH MODSEQ 1"))[0].startswith("* SEARCH 1 2 3 (MODSEQ ")
    await c.close()
    rev2 = await imap.connect()
    await rev2.ok("ENABLE IMAP4rev2")
    await rev2.ok("SELECT INBOX")
    lines = await rev2.ok("SEARCH FLAGGED")
    assert lines[0] == f'* ESEARCH (TAG "t{rev2.counter}") ALL 2'
    await rev2.close()


async def test_imapclient_idle_sees_updates_from_before_and_during_idle(imap_both: IMAPEnv) -> None:
    """RFC 2177 §3: ``+ idling`` comes first, then the updates: imapclient's ``idle()`` refuses any
    response before the continuation, so a message delivered between SELECT and IDLE must wait."""
    env = imap_both
    await env.deliver(message("before select"))
    loop = asyncio.get_running_loop()
    selected, delivered = threading.Event(), threading.Event()

    def with_imapclient() -> tuple[list[Any], list[Any], list[Any]]:
        client = IMAPClient("127.0.0.1", port=env.tls_port, ssl=True, ssl_context=env.ctx, timeout=30)
        with client:
            client.login(MARTIN, PASSWORD)
            client.select_folder("INBOX")
            assert b"IDLE" in client.capabilities()  # asked now, so that idle() sends IDLE at once
            selected.set()
            assert delivered.wait(10)  # a message arrived after SELECT, before IDLE
            client.idle()  # raises IMAPClientError("Unexpected IDLE response") if EXISTS came first
            first = client.idle_check(timeout=10)
            asyncio.run_coroutine_threadsafe(env.deliver(message("during idle")), loop).result(10)
            second = client.idle_check(timeout=10)
            done = client.idle_done()
            return first, second, done[1]

    async def deliver_after_select() -> None:
        await asyncio.to_thread(selected.wait, 10)
        since = env.rt.notifier.published
        await env.deliver(message("before idle"))
        await env.relayed(since, 1)
        delivered.set()

    waiter = asyncio.create_task(deliver_after_select())
    first, second, _done = await asyncio.to_thread(with_imapclient)
    await waiter
    assert (2, b"EXISTS") in first
    assert (3, b"EXISTS") in second


async def test_a_stopping_server_lets_an_append_in_flight_finish(imap: IMAPEnv) -> None:
    """SIGTERM arrives while a client is half-way through an APPEND literal: the command completes
    (the message is stored and acknowledged) and only then the session hears BYE; an idle session
    hears BYE at once."""
    sender, idle = await imap.connect(), await imap.connect()
    body = message("gros envoi") + b"x" * 300_000 + b"\r\n"
    await sender.send(f"A1 APPEND INBOX {{{len(body)}+}}\r\n".encode() + body[:100_000])
    await asyncio.sleep(0.2)  # the server has read part of the literal
    closing = asyncio.gather(*(listener.close() for listener in imap.listeners))
    assert (await idle.line()).startswith("* BYE")
    await sender.send(body[100_000:] + b"\r\n")
    lines = await sender.until("A1")
    assert lines[-1].startswith("A1 OK") and "APPENDUID" in lines[-1], lines
    assert (await sender.line()).startswith("* BYE")
    await asyncio.wait_for(closing, 10)
    folder = await imap.rt.store.folder(imap.mailboxes[MARTIN], "INBOX")
    _info, stored = await imap.rt.store.snapshot(folder.id)
    assert len(stored) == 1
