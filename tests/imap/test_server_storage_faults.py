"""A message file the storage cannot give back (issue 20 item 5): on one node, a message's file is
deleted on disk, as when a node is configured with another storage path. Real clients (imaplib,
imapclient) then read it: the commands that need the file answer ``NO [UNAVAILABLE]`` (RFC 5530),
SEARCH leaves it out with an untagged ``NO [UNAVAILABLE]`` warning and still answers for the rest,
each command logs one JSON line and one audit event, and the session goes on (NOOP, SELECT)."""

from __future__ import annotations

import asyncio
import imaplib
import logging
import os
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv, message

LARGE = "Compte rendu de cardiologie, page suivante.\r\n" * 2000  # ~88 KiB: beyond inline_max, a file


async def lose_the_file(env: IMAPEnv) -> None:
    """Deliver small, large (a file), small; then delete every message file, as another node's
    storage path would: only message 2 lives in a file."""
    await env.deliver(message("petit un", "Rien a signaler.\r\n", X_Service="urgences"))
    await env.deliver(message("gros", LARGE, X_Service="cardiologie"))
    await env.deliver(message("petit trois", "Suivi de cardiologie.\r\n", X_Service="cardiologie"))
    files = await asyncio.to_thread(lambda: list(env.rt.blobs.all_paths()))
    assert len(files) == 1
    os.unlink(env.rt.blobs.root / files[0])


def unavailable(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "message-unavailable"]


async def test_imaplib_and_imapclient_get_unavailable_and_keep_their_session(
    imap_both: IMAPEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = imap_both
    await lose_the_file(env)

    def with_imaplib() -> dict[str, Any]:
        m = imaplib.IMAP4_SSL("127.0.0.1", env.tls_port, ssl_context=env.ctx, timeout=30)
        m.login(MARTIN, PASSWORD)
        assert m.select("INBOX") == ("OK", [b"3"])
        out: dict[str, Any] = {"peek": m.fetch("2", "(BODY.PEEK[])")}
        out["binary"] = m.fetch("2", "(BINARY.PEEK[])")
        out["all"] = m.fetch("1:3", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out["all_untagged"] = m.response("FETCH")
        out["body"] = m.search(None, "BODY", "cardiologie")
        out["body_warning"] = m.untagged_responses.pop("NO")  # (m.response("NO") is always [None])
        out["header"] = m.uid("SEARCH", "HEADER", "X-Service", "cardiologie")
        out["not_peek"] = m.fetch("2:3", "(BODY[TEXT])")  # would set \\Seen on both
        out["not_peek_untagged"] = m.untagged_responses.pop("FETCH")
        out["flags"] = m.fetch("1:3", "(FLAGS)")
        out["noop"] = m.noop()
        out["select"] = m.select("INBOX")
        out["readable"] = m.fetch("3", "(BODY.PEEK[TEXT])")
        m.logout()
        return out

    got = await asyncio.to_thread(with_imaplib)
    for name in ("peek", "binary", "all"):
        status, data = got[name]
        assert status == "NO" and data[0].startswith(b"[UNAVAILABLE] "), (name, got[name])
    # the others of 1:3 were still sent
    fetched = [x for x in got["all_untagged"][1] if isinstance(x, tuple)]
    assert [h for _, h in fetched] == [b"Subject: petit un\r\n\r\n", b"Subject: petit trois\r\n\r\n"]
    # SEARCH completes for what can be read; message 2 (which would match) is left out, with a warning
    assert got["body"] == ("OK", [b"3"])
    assert got["body_warning"][0].startswith(b"[UNAVAILABLE] 1 message(s) could not be read"), got
    assert got["header"] == ("OK", [b"3"])
    # a body that was not sent is not \Seen; the one sent is
    assert got["not_peek"][0] == "NO" and got["not_peek"][1][0].startswith(b"[UNAVAILABLE] ")
    assert got["not_peek_untagged"][0][1] == b"Suivi de cardiologie.\r\n"
    flags = [b"1 (FLAGS (\\Recent))", b"2 (FLAGS (\\Recent))", b"3 (FLAGS (\\Seen \\Recent))"]
    assert got["flags"] == ("OK", flags)
    assert got["noop"][0] == "OK" and got["select"] == ("OK", [b"3"])
    assert got["readable"][0] == "OK" and got["readable"][1][0][1] == b"Suivi de cardiologie.\r\n"

    def with_imapclient() -> dict[str, Any]:
        client = IMAPClient("127.0.0.1", port=env.tls_port, ssl=True, ssl_context=env.ctx, timeout=30)
        with client:
            client.login(MARTIN, PASSWORD)
            client.select_folder("INBOX")
            out: dict[str, Any] = {}
            for item in ("BODY.PEEK[]", "BINARY.PEEK[]"):
                with pytest.raises(IMAPClientError) as refused:
                    client.fetch([2], [item])
                out[item] = str(refused.value)
            out["body"] = client.search(["BODY", "cardiologie"])
            out["header"] = client.search(["HEADER", "X-Service", "cardiologie"])
            out["noop"] = client.noop()
            out["select"] = client.select_folder("INBOX")[b"EXISTS"]
            out["readable"] = client.fetch([1], ["BODY.PEEK[TEXT]"])[1][b"BODY[TEXT]"]
            return out

    got = await asyncio.to_thread(with_imapclient)
    assert "UNAVAILABLE" in got["BODY.PEEK[]"] and "UNAVAILABLE" in got["BINARY.PEEK[]"], got
    assert got["body"] == [3] and got["header"] == [3]
    assert got["select"] == 3 and got["readable"] == b"Rien a signaler.\r\n"

    # one JSON line per command that met the missing file (4 imaplib FETCHes, 2 SEARCHes, then
    # imapclient's 2 UID FETCHes and 2 UID SEARCHes), no address in it; as many audit events, naming
    # the user
    lines = unavailable(caplog)
    assert len(lines) == 10, [r.getMessage() for r in lines]
    for record in lines:
        fields = record.fields  # type: ignore[attr-defined]
        assert record.levelno == logging.ERROR and fields["service"] == "imap" and fields["count"] == 1
        assert "FileNotFoundError" in fields["reason"] and MARTIN not in str(fields)
    assert sorted(r.fields["request"] for r in lines) == sorted(  # type: ignore[attr-defined]
        ["imap FETCH"] * 4 + ["imap SEARCH"] + ["imap UID SEARCH"] * 3 + ["imap UID FETCH"] * 2
    )
    events = await env.rt.audit.events(action="storage-error")
    assert len(events) == 10 and {(e.actor, e.remote) for e in events} == {(MARTIN, "127.0.0.1")}
    assert all(e.response.startswith("1 message(s) unreadable (blob ") for e in events)


async def test_an_updating_context_meeting_a_lost_file_warns_and_the_session_goes_on(
    imap: IMAPEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 5267 contexts are re-evaluated after the command, while updates are sent: a file lost
    there used to end the connection with no reply and nothing in the log."""
    env = imap
    await env.deliver(message("petit", "Suivi de cardiologie.\r\n"))
    c = await env.connect()
    await c.ok("SELECT INBOX")
    lines = await c.ok("SEARCH RETURN (ALL UPDATE) BODY cardiologie")
    assert lines[0].startswith('* ESEARCH (TAG "t3") ALL 1'), lines
    await env.deliver(message("gros", LARGE))
    (path,) = await asyncio.to_thread(lambda: list(env.rt.blobs.all_paths()))
    os.unlink(env.rt.blobs.root / path)
    lines = await c.ok("NOOP")
    assert "* 2 EXISTS" in lines and any(x.startswith("* NO [UNAVAILABLE] 1 message(s)") for x in lines)
    assert not any("ADDTO" in x or "REMOVEFROM" in x for x in lines), lines
    await c.ok("SELECT INBOX")
    assert [r.fields["request"] for r in unavailable(caplog)] == ["imap RETURN (UPDATE)"]  # type: ignore[attr-defined]
    await c.close()
