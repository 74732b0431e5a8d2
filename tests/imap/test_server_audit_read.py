"""Reading a message is audited (issue 19): one "read" event per FETCH command that returns content,
naming the folder and the UID set, never the content; FETCH of flags or sizes is not a consultation."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from imapclient import IMAPClient

from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv, message

COUNT = 300


def fetch_all(port: int, ctx: ssl.SSLContext) -> tuple[int, int]:
    """imapclient (a real client, UID FETCH): FLAGS of everything, every body, one header section."""
    with IMAPClient("127.0.0.1", port, ssl=True, ssl_context=ctx, timeout=60) as c:
        c.login(MARTIN, PASSWORD)
        c.select_folder("INBOX")
        uids = c.search()
        flags = c.fetch(uids, ["FLAGS", "RFC822.SIZE"])
        bodies = c.fetch(uids, ["BODY.PEEK[]"])
        c.fetch([5], ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        return len(flags), len(bodies)


async def test_fetch_of_every_body_is_one_read_event_with_the_uid_set(imap_both: IMAPEnv) -> None:
    for i in range(COUNT):
        await imap_both.deliver(message(f"Compte rendu {i}", body="Diagnostic confidentiel.\r\n"))
    ctx: Any = imap_both.ctx
    assert await asyncio.to_thread(fetch_all, imap_both.tls_port, ctx) == (COUNT, COUNT)
    reads = await imap_both.rt.audit.events(action="read")
    assert [(e.actor, e.request, e.response) for e in reads] == [
        (MARTIN, f"imap FETCH INBOX uids 1:{COUNT}", "ok"),
        (MARTIN, "imap FETCH INBOX uids 5", "ok"),
    ]
    assert reads[0].remote == "127.0.0.1"
    every = await imap_both.rt.audit.events(actor=MARTIN)
    assert not any("confidentiel" in e.request + e.response for e in every)
