"""IDLE (RFC 2177, RFC 9051 §6.3.13): push updates as soon as the store publishes a change.

The notifier callback wakes the session; the session then reads ``changes_since`` and writes
EXISTS / EXPUNGE (or VANISHED) / FETCH FLAGS at once (expunges are allowed while idling). The
continuation comes first, then whatever changed before IDLE (RFC 2177 §3's example, Dovecot's
order): clients such as imapclient read the line after ``IDLE`` as the continuation and refuse
anything else. An idle
connection is kept for ``[limits] imap_idle_timeout`` (at least 30 minutes, RFC 9051 §5.4), then
the server says BYE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver.imap.base import Done, State, command
from mailserver.imap.protocol import BadCommand, IdleDone, ReceiverMode
from mailserver.imap.protocol import encoder as enc

if TYPE_CHECKING:
    from mailserver.imap.session import Session

MIN_IDLE_TIMEOUT = 30 * 60


@command("IDLE", State.AUTH_OR_SELECTED, ("IDLE",), sync_first=False)
async def idle(s: Session, tag: str, cmd: object) -> Done:
    timeout = max(s.rt.settings.limits.imap_idle_timeout, MIN_IDLE_TIMEOUT)
    s.send(enc.continuation("idling"))
    await s.flush()
    s.receiver.set_mode(ReceiverMode.IDLE, tag)
    s.idling = True
    s.dirty = s.selected is not None  # pending expunges and changes from before IDLE, now
    try:
        while True:
            if s.dirty:
                if not await s.check_access():  # a member removed meanwhile hears no more of it
                    return Done("IDLE terminated")
                if s.selected is not None:
                    await s.sync(expunges=True)
                await s.flush()
            event = s.receiver.next_event()
            if isinstance(event, IdleDone):
                return Done("IDLE terminated")
            if isinstance(event, BadCommand):
                return Done(event.message, event.code, event.status)
            if s.closed:
                return Done(status="")
            if s.closing:
                s.receiver.set_mode(ReceiverMode.COMMAND)
                s.send(enc.status_response(None, "BYE", "server shutting down"))
                s.logout = True
                return Done(status="")
            if not await s.wait_input(timeout) and not s.dirty and not s.closed:
                s.receiver.set_mode(ReceiverMode.COMMAND)
                s.send(enc.status_response(None, "BYE", "IDLE for too long"))
                s.logout = True
                return Done(status="")
    finally:
        s.idling = False
