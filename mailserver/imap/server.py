"""IMAP listeners: ``[imap] listen`` (cleartext + STARTTLS) and ``tls_listen`` (implicit TLS, RFC 8314).

One :class:`IMAPServer` per process holds what sessions share: the TLS context, the connection gate
of both ports (``mailserver.limits``: ``[limits] max_connections``, ``connections_per_ip``,
``connections_per_user_ip``, ``connections_per_user``), and the \\Recent bookkeeping (RFC 3501
§2.3.2: a message is recent in exactly one session).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import ssl
from collections.abc import Iterable
from functools import partial

from config.settings import parse_listen
from mailserver import handshakes
from mailserver.imap import commands  # noqa: F401 - importing registers every verb
from mailserver.imap.session import Session
from mailserver.limits import ConnectionGate, Refused, Slot
from mailserver.runtime import Runtime
from mailserver.tls import server_context

# asyncio's TLS transport preallocates a buffer of ``SSLProtocol.max_size`` bytes per connection for the
# ciphertext it reads from the socket (256 KiB in CPython 3.11), four times our whole per-connection
# budget. Reading 16 KiB at a time (the largest TLS record's plaintext, RFC 8446 §5.1) is enough: the
# TLS layer reassembles records across reads, a large transfer just takes more of them. SMTP in the
# same process benefits too.
_TLS_READ_BUFFER = 16 * 1024
# The \Recent marks are reviewed for deleted folders from this many on (then at each doubling).
_RECENT_REVIEW_MIN = 1024


class IMAPServer:
    """Shared state of every IMAP session of this process."""

    def __init__(self, rt: Runtime, tls_context: ssl.SSLContext | None) -> None:
        self.rt = rt
        self.tls_context = tls_context
        self.sessions: set[Session] = set()
        self.gate = ConnectionGate("imap", rt.settings.limits, rt.audit, rt.metrics)
        self._slots: dict[Session, Slot] = {}
        self._recent_mark: dict[int, tuple[int, int]] = {}  # folder id -> (UIDVALIDITY, mark)
        self._recent_review_at = _RECENT_REVIEW_MIN

    def admit(self, session: Session) -> Refused | None:
        """Count a new connection; a refusal is answered ``* BYE [UNAVAILABLE]`` by the session."""
        slot = self.gate.connect(session.remote)
        if isinstance(slot, Refused):
            return slot
        self.sessions.add(session)
        self._slots[session] = slot
        return None

    def admit_user(self, session: Session, address: str) -> Refused | None:
        """Count an authenticated connection of ``address`` (answered ``NO [LIMIT]`` when refused)."""
        return self.gate.login(self._slots[session], address)

    def release(self, session: Session) -> None:
        slot = self._slots.pop(session, None)
        if slot is not None:
            self.sessions.discard(session)
            self.gate.release(slot)

    def claim_recent(self, folder_id: int, uidvalidity: int, uids: Iterable[int]) -> list[int]:
        """The UIDs no session has seen yet become \\Recent for the caller (RFC 3501 §2.3.2)."""
        mark = self.recent_mark(folder_id, uidvalidity)
        mine = [u for u in uids if u > mark]
        if mine:
            self._recent_mark[folder_id] = (uidvalidity, max(mine))
        return mine

    def recent_mark(self, folder_id: int, uidvalidity: int) -> int:
        """Highest UID already \\Recent to some session (EXAMINE shows, but does not claim, the rest).

        The mark belongs to one UIDVALIDITY: a folder deleted and created again may get the same id
        (SQLite reuses the highest rowid), and its new UIDs start at 1 again.
        """
        validity, mark = self._recent_mark.get(folder_id, (uidvalidity, 0))
        return mark if validity == uidvalidity else 0

    async def forget_deleted_folders(self) -> None:
        """Keep the \\Recent marks bounded by the folders that exist: each time their number doubled
        since the last review, drop those of deleted folders (a user creating, selecting and deleting
        folders in a loop would otherwise grow them for as long as the process lives)."""
        if len(self._recent_mark) < self._recent_review_at:
            return
        known = list(self._recent_mark)
        live = await self.rt.store.existing_folders(known)
        for folder_id in known:
            if folder_id not in live:
                self._recent_mark.pop(folder_id, None)
        self._recent_review_at = max(_RECENT_REVIEW_MIN, 2 * len(self._recent_mark))

    def recent_count(self, folder_id: int, uidvalidity: int, uids: Iterable[int]) -> int:
        """How many messages would be \\Recent to the next SELECT (STATUS RECENT)."""
        mark = self.recent_mark(folder_id, uidvalidity)
        return sum(1 for u in uids if u > mark)


class Listener:
    """One listening socket (``app.Listener`` protocol)."""

    def __init__(self, service: str, server: asyncio.Server, imap: IMAPServer) -> None:
        self.service = service
        self.imap = imap
        self.gate = imap.gate
        self._server = server
        sock = server.sockets[0].getsockname()
        self.address = f"{sock[0]}:{sock[1]}"
        self.port = int(sock[1])

    async def close(self) -> None:
        """Stop accepting; every session of this listener says ``* BYE`` between commands, then ends."""
        self._server.close()
        mine = [s for s in self.imap.sessions if s.service == self.service and s.task is not None]
        for session in mine:
            session.shutdown()
        tasks = [s.task for s in mine if s.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.imap.gate.drain()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()


async def start(rt: Runtime) -> list[Listener]:
    """Open every configured IMAP listener (``app.SERVICES`` entry point)."""
    settings = rt.settings
    if not settings.imap.listen and not settings.imap.tls_listen:
        return []
    ctx = server_context(settings.tls, settings.imap.client_cert)
    asyncio.sslproto.SSLProtocol.max_size = min(asyncio.sslproto.SSLProtocol.max_size, _TLS_READ_BUFFER)
    imap = IMAPServer(rt, ctx)
    listeners: list[Listener] = []
    try:
        for service, addresses, implicit in (
            ("imap", settings.imap.listen, False),
            ("imaps", settings.imap.tls_listen, True),
        ):
            for address in addresses:
                host, port = parse_listen(address)
                factory = partial(Session, rt, imap, tls=implicit, service=service)
                tls = ctx if implicit else None
                server = await handshakes.create_server(
                    rt, service, factory, host, port, tls, reuse_address=True, backlog=1024
                )
                listeners.append(Listener(service, server, imap))
    except BaseException:
        for listener in listeners:
            await listener.close()
        raise
    return listeners
