"""\\Recent for IMAP4rev1 sessions (RFC 3501 §2.3.2, §6.3.1, §6.3.10, §7.3.2), with imaplib and imapclient:
a message is recent in exactly one read-write session, EXAMINE shows without claiming, STATUS counts,
IMAP4rev2 sessions (RFC 9051 has no \\Recent) neither see nor take it."""

from __future__ import annotations

import asyncio
import imaplib
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from imapclient import IMAPClient

from mailserver.imap import server
from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv, message

T = TypeVar("T")


def _imaplib(env: IMAPEnv) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", env.tls_port, ssl_context=env.ctx)
    m.login(MARTIN, PASSWORD)
    return m


def _imapclient(env: IMAPEnv) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=env.tls_port, ssl=True, ssl_context=env.ctx)
    client.login(MARTIN, PASSWORD)
    return client


async def _run(work: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(work, *args)


async def test_a_folder_created_again_has_recent_messages(imap: IMAPEnv) -> None:
    """imaptest's "select" scenario: DELETE, CREATE, two APPENDs, then SELECT shows ``* 2 RECENT``.

    The recreated folder may get the deleted one's id (SQLite reuses the highest rowid): the UIDs
    seen as recent in the old folder must not hide the new folder's messages."""

    def work() -> tuple[Any, ...]:
        m = _imaplib(imap)
        m.create("Tri")
        for i in range(3):
            m.append("Tri", None, None, message(f"old {i}"))
        assert m.select("Tri") == ("OK", [b"3"]) and m.response("RECENT") == ("RECENT", [b"3"])
        m.close()
        m.delete("Tri")
        m.create("Tri")
        for i in range(2):
            m.append("Tri", None, None, message(f"new {i}"))
        status = m.status("Tri", "(MESSAGES RECENT)")
        m.select("Tri")
        recent = m.response("RECENT")
        flags = m.fetch("1:2", "(FLAGS)")
        m.logout()
        return status, recent, flags

    status, recent, flags = await _run(work)
    assert status == ("OK", [b"Tri (MESSAGES 2 RECENT 2)"])
    assert recent == ("RECENT", [b"2"])
    assert flags == ("OK", [b"1 (FLAGS (\\Recent))", b"2 (FLAGS (\\Recent))"])


async def test_recent_belongs_to_one_session(imap_both: IMAPEnv) -> None:
    env = imap_both
    await env.deliver(message("first"))
    owner, examiner, late, rev2 = await asyncio.gather(*(_run(_imapclient, env) for _ in range(4)))
    try:
        # STATUS before any SELECT counts what the next SELECT will get; EXAMINE shows, does not take.
        assert (await _run(owner.folder_status, "INBOX", ["RECENT"]))[b"RECENT"] == 1
        assert (await _run(examiner.select_folder, "INBOX", True))[b"RECENT"] == 1
        assert (await _run(owner.select_folder, "INBOX"))[b"RECENT"] == 1
        assert (await _run(owner.fetch, [1], ["FLAGS"]))[1][b"FLAGS"] == (b"\\Recent",)
        # STATUS on the selected folder counts what is recent in this session.
        assert (await _run(owner.folder_status, "INBOX", ["RECENT"]))[b"RECENT"] == 1
        assert (await _run(late.select_folder, "INBOX"))[b"RECENT"] == 0
        assert (await _run(late.fetch, [1], ["FLAGS"]))[1][b"FLAGS"] == ()
        assert (await _run(late.folder_status, "INBOX", ["RECENT"]))[b"RECENT"] == 0
        await _run(rev2.enable, "IMAP4rev2")
        assert b"RECENT" not in await _run(rev2.select_folder, "INBOX")

        # A delivery while selected: the first rev1 read-write session told of it gets it (RECENT
        # after EXISTS); an EXAMINE session told first shows it without taking it; rev2 takes nothing.
        since = env.rt.notifier.published
        await env.deliver(message("second"))
        await env.relayed(since, 1)
        assert (await _run(rev2.noop))[1] == [(2, b"EXISTS")]
        assert (await _run(examiner.noop))[1] == [(2, b"EXISTS"), (2, b"RECENT")]
        assert (await _run(owner.noop))[1] == [(2, b"EXISTS"), (2, b"RECENT")]
        assert (await _run(late.noop))[1] == [(2, b"EXISTS"), (0, b"RECENT")]
        assert (await _run(owner.fetch, [2], ["FLAGS"]))[2][b"FLAGS"] == (b"\\Recent",)
        assert (await _run(rev2.fetch, [2], ["FLAGS"]))[2][b"FLAGS"] == ()
        assert (await _run(examiner.folder_status, "INBOX", ["RECENT"]))[b"RECENT"] == 2
    finally:
        for client in (owner, examiner, late, rev2):
            await _run(client.logout)


async def test_marks_of_deleted_folders_are_forgotten(imap: IMAPEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-folder \\Recent marks stay bounded by the folders that exist (reviewed at each doubling)."""
    monkeypatch.setattr(server, "_RECENT_REVIEW_MIN", 4, raising=False)
    shared = imap.listeners[0].imap
    shared._recent_review_at = 4
    c = await imap.connect()
    for i in range(12):
        await c.ok(f"CREATE gone{i}")
        await c.ok(f"APPEND gone{i} {{3+}}\r\nabc")
        assert "* 1 RECENT" in await c.ok(f"SELECT gone{i}")
        await c.ok("UNSELECT")
        await c.ok(f"CREATE kept{i}")  # so that SQLite does not give a later folder the deleted id
        await c.ok(f"DELETE gone{i}")
    assert len(shared._recent_mark) <= 4
    await c.close()
