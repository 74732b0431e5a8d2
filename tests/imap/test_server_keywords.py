"""A keyword new to the selected folder is announced (``* FLAGS`` and ``PERMANENTFLAGS``) before any
response shows it (RFC 9051 §7.3.5, RFC 3501 §7.2.6), whoever set it: this session's STORE, another
session, APPEND, COPY; with raw exchanges and imapclient, whose parser is strict."""

from __future__ import annotations

import asyncio

from imapclient import IMAPClient

from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv, message

SYSTEM = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"


def _announced(keywords: str, readonly: bool = False) -> list[str]:
    permanent = "" if readonly else f"{SYSTEM} {keywords} \\*"
    return [f"* FLAGS ({SYSTEM} {keywords})", f"* OK [PERMANENTFLAGS ({permanent})] flags permitted"]


async def test_store_announces_a_new_keyword_here_and_elsewhere(imap_both: IMAPEnv) -> None:
    env = imap_both
    await env.deliver(message("a"))
    a, b, ro = await env.connect(), await env.connect(), await env.connect()
    await a.ok("SELECT INBOX")
    await b.ok("SELECT INBOX")
    await ro.ok("EXAMINE INBOX")
    since = env.rt.notifier.published
    lines = await a.ok("STORE 1 +FLAGS ($hello)")
    assert lines[:3] == [*_announced("$hello"), "* 1 FETCH (FLAGS ($hello \\Recent))"]
    assert (await a.ok("STORE 1 +FLAGS ($hello \\Seen)"))[0] == "* 1 FETCH (FLAGS ($hello \\Seen \\Recent))"
    await env.relayed(since, 2)
    lines = await b.ok("NOOP")
    assert lines[:3] == [*_announced("$hello"), "* 1 FETCH (UID 1 FLAGS ($hello \\Seen))"]
    lines = await ro.ok("FETCH 1 FLAGS")  # the pending change reaches it first, announced first
    assert lines[:3] == [*_announced("$hello", readonly=True), "* 1 FETCH (UID 1 FLAGS ($hello \\Seen))"]
    # .SILENT shows no flags, but the folder's flags still grew.
    since = env.rt.notifier.published
    assert (await a.ok("STORE 1 +FLAGS.SILENT ($world)"))[:2] == _announced("$hello $world")
    await env.relayed(since, 1)
    assert (await b.ok("NOOP"))[:2] == _announced("$hello $world")
    # Removing keywords announces nothing: the client may keep listing them (RFC 9051 §7.3.5).
    since = env.rt.notifier.published
    assert (await a.ok("STORE 1 -FLAGS ($hello $world)"))[0] == "* 1 FETCH (FLAGS (\\Seen \\Recent))"
    await env.relayed(since, 1)
    assert (await b.ok("NOOP"))[0] == "* 1 FETCH (UID 1 FLAGS (\\Seen))"
    for c in (a, b, ro):
        await c.close()


async def test_append_and_copy_announce_their_keywords(imap_both: IMAPEnv) -> None:
    env = imap_both
    a, other = await env.connect(), await env.connect()
    await a.ok("SELECT INBOX")
    since = env.rt.notifier.published
    await other.ok("APPEND INBOX ($Label1) {5+}\r\nHello")
    await env.relayed(since, 1)
    lines = await a.ok("NOOP")
    assert lines == [*_announced("$Label1"), "* 1 EXISTS", "* 1 RECENT", f"t{a.counter} OK NOOP completed"]
    await a.ok("APPEND Archive ($Label2 $Label1) {5+}\r\nHello")
    lines = await a.ok("COPY 1 INBOX")  # nothing new: $Label1 is known
    assert lines[:2] == ["* 2 EXISTS", "* 2 RECENT"]
    await other.ok("SELECT Archive")
    lines = await other.ok("MOVE 1 INBOX")
    await env.relayed(since, 4)
    lines = await a.ok("NOOP")
    assert lines[:4] == [*_announced("$Label1 $Label2"), "* 3 EXISTS", "* 3 RECENT"]
    for c in (a, other):
        await c.close()


async def test_imapclient_sees_flags_before_the_fetch(imap: IMAPEnv) -> None:
    await imap.deliver(message("a"))

    def login() -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=imap.tls_port, ssl=True, ssl_context=imap.ctx)
        client.login(MARTIN, PASSWORD)
        client.select_folder("INBOX")
        return client

    writer, watcher = await asyncio.gather(asyncio.to_thread(login), asyncio.to_thread(login))
    try:
        assert b"$Dossier" in (await asyncio.to_thread(writer.add_flags, [1], [b"$Dossier"]))[1]
        _text, updates = await asyncio.to_thread(watcher.noop)
        kinds = [u[0] if u[0] in (b"FLAGS", b"OK") else u[1] for u in updates]
        assert kinds == [b"FLAGS", b"OK", b"FETCH"], updates
        assert b"$Dossier" in updates[0][1] and b"[PERMANENTFLAGS (" in updates[1][1]
        assert updates[2][2][:3] == (b"UID", 1, b"FLAGS") and b"$Dossier" in updates[2][2][3]
    finally:
        for client in (writer, watcher):
            await asyncio.to_thread(client.logout)
