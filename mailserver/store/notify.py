"""Change notification: wakes IMAP sessions (IDLE, NOOP) and portals after a commit.

A notification only says "folder F of mailbox M changed"; listeners then ask the store what changed
since the MODSEQ they know, so a lost or merged wake-up can never lose a change. On PostgreSQL the
store also issues ``NOTIFY caducee_changes`` inside the committing transaction (delivered only if it
commits), and every node, this one included, relays what it hears to its local listeners. What is
committed while a node's LISTEN connection is down is never heard, so each time it listens again
it tells every listener that anything may have changed (``RESYNC``): they re-read what changed since
their MODSEQ, which loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable

log = logging.getLogger(__name__)

CHANNEL = "caducee_changes"
RESYNC = -1  # the folder id meaning "any folder may have changed" (notifications may have been missed)

Listener = Callable[[int, int | None], None]


class Notifier:
    """In-process publish/subscribe keyed by mailbox id."""

    def __init__(self) -> None:
        self._listeners: dict[int, set[Listener]] = defaultdict(set)
        self.published = 0  # changes relayed so far: lets tests wait for a relay instead of sleeping
        self.listening = asyncio.Event()  # set once the PostgreSQL relay is subscribed

    def subscribe(self, mailbox_id: int, listener: Listener) -> Callable[[], None]:
        """Register ``listener(mailbox_id, folder_id)``; returns the function that unsubscribes."""
        self._listeners[mailbox_id].add(listener)

        def unsubscribe() -> None:
            self._listeners[mailbox_id].discard(listener)
            if not self._listeners[mailbox_id]:
                self._listeners.pop(mailbox_id, None)

        return unsubscribe

    def publish(self, mailbox_id: int, folder_id: int | None) -> None:
        """Call every listener of the mailbox (folder None means the folder list changed)."""
        self.published += 1
        for listener in list(self._listeners.get(mailbox_id, ())):
            try:
                listener(mailbox_id, folder_id)
            except Exception:
                log.exception("change listener failed")

    def resync(self) -> None:
        """Tell every listener of every mailbox that any of its folders may have changed."""
        for mailbox_id in list(self._listeners):
            self.publish(mailbox_id, RESYNC)

    async def listen_postgres(self, dsn: str) -> None:
        """Relay NOTIFY messages from every node to local listeners until cancelled."""
        import asyncpg

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            mailbox, _, folder = payload.partition(":")
            self.publish(int(mailbox), int(folder) if folder else None)

        while True:
            conn = None
            try:
                lost = asyncio.Event()
                conn = await asyncpg.connect(dsn)
                conn.add_termination_listener(lambda _conn, ev=lost: ev.set())
                await conn.add_listener(CHANNEL, on_notify)
                self.listening.set()
                self.resync()  # what was committed while no connection listened was never heard
                await lost.wait()
                self.listening.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change listener lost its PostgreSQL connection: %s", exc)
                await asyncio.sleep(1)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
