"""One IMAP connection: the RFC 9051 §3 state machine on top of the sans-I/O protocol layer.

Invariants (each is relied on by the command modules):

- One command at a time per connection (RFC 9051 §5.5 allows no more for commands that change
  sequence numbers, and we keep it simple for all); pipelined commands wait in the Receiver.
- Nothing is written while a store call runs: handlers call the store, which commits and returns,
  then they queue responses; :meth:`Session.flush` writes after. A slow client never holds a DB
  transaction open.
- Sequence numbers change only when this session announces it: the selected-folder state
  (:class:`Selected`) keeps the UIDs the client knows, in order, as a compact ``array``. UIDs
  expunged by others wait in ``pending`` and are announced (EXPUNGE, or VANISHED under QRESYNC)
  only where RFC 9051 §7.5.1 / §5.5 allow it: never during FETCH, STORE, SEARCH (nor SORT/THREAD,
  which also return sequence numbers), but after their UID forms and any other command.
- A store notification only marks the session dirty; what changed is always read back with
  ``changes_since(folder, modseq)``, so a lost or merged wake-up cannot lose a change.
- Any handler exception is answered ``NO [SERVERBUG]`` and logged; a syntax error is a BAD from the
  Receiver; a message the storage cannot give back is ``NO [UNAVAILABLE]`` (logged and audited by
  ``mailserver.storage_faults``). Only a broken socket, LOGOUT, an idle timeout or a shutdown end
  the connection; any other error that ends it is logged.
- Per idle connection we keep no message data: a few scalars, the UID array of the selected folder,
  the Receiver and the transport. Metas and bodies are read per command, in batches.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from mailserver import accounts, acl, quota, storage_faults
from mailserver.db.models import ACL_RIGHTS
from mailserver.imap.base import REGISTRY, Done, Fail, State, store_code
from mailserver.imap.contexts import Contexts
from mailserver.imap.protocol import (
    NEED_DATA,
    AuthCancel,
    AuthResponse,
    BadCommand,
    Command,
    IdleDone,
    NeedContinuation,
    Receiver,
    SequenceSet,
    mutf7,
)
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import CommandBody
from mailserver.store.notify import RESYNC
from mailserver.store.store import MessageInfo, MessageUnavailable, StoreError, Viewer

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPServer
    from mailserver.runtime import Runtime

log = logging.getLogger("caducee.imap")

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM = frozenset(SYSTEM_FLAGS)
# RFC 9051 §7.5.1 / RFC 3501 §7.4.1: no EXPUNGE while answering these (their UID forms are fine).
_NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD"})
_OUT_HIGH_WATER = 256 * 1024
_PREAUTH_LITERAL = 64 * 1024


class Selected:
    """The selected folder as this client knows it (RFC 9051 §2.3.1.2 sequence number ↔ UID map)."""

    __slots__ = (
        "contexts",
        "folder_id",
        "keywords",
        "modseq",
        "name",
        "owner",
        "pending",
        "readonly",
        "recent",
        "rights",
        "saved",
        "shared",
        "uids",
        "uidvalidity",
        "viewer",
    )

    def __init__(
        self,
        folder_id: int,
        name: str,
        readonly: bool,
        uidvalidity: int,
        modseq: int,
        owner: int = 0,
        rights: str = ACL_RIGHTS,
        viewer: Viewer | None = None,
        shared: str = "",
    ) -> None:
        self.folder_id = folder_id
        self.shared = shared  # the ORG's address for a folder of the shared namespace, else ""
        self.viewer = viewer  # a member in a shared mailbox: whose private flags (\Seen) are shown
        self.name = name  # as the client names it (a shared folder with its namespace prefix)
        self.owner = owner  # the mailbox holding the folder: one's own, or a shared one
        self.rights = rights  # RFC 4314 rights on it (every right on one's own)
        self.readonly = readonly
        self.uidvalidity = uidvalidity
        self.modseq = modseq
        self.uids: array[int] = array("I")
        self.pending: set[int] = set()
        self.recent: set[int] = set()
        self.keywords: set[str] = set()  # announced in the last FLAGS response (RFC 9051 §7.3.5)
        self.saved: list[int] | None = None
        self.contexts = Contexts()  # RFC 5267 §4.3: updates cease when the folder is deselected

    def seq(self, uid: int) -> int:
        """Sequence number of ``uid``, 0 when the client does not know it."""
        i = bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    @property
    def last_uid(self) -> int:
        return self.uids[-1] if self.uids else 0


class Session(asyncio.Protocol):
    """An asyncio protocol driving one connection; ``run`` is its only task."""

    def __init__(self, rt: Runtime, server: IMAPServer, *, tls: bool, service: str) -> None:
        self.rt = rt
        self.server = server
        self.tls = tls
        self.service = service
        self.remote = ""
        self.state = State.NOT_AUTHENTICATED
        self.enabled: set[str] = set()
        self.receiver = self.new_receiver()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.mailbox_id: int | None = None
        self.address = ""
        self.selected: Selected | None = None
        self.dirty = False
        self.idling = False
        self.closing = False
        self.logout = False
        self._closed = False
        self._reading_paused = False
        self._write_paused = False
        self._waiter: asyncio.Future[bool] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._unsubscribe: object = None
        self._unsubscribe_shared: object = None  # notifications of the shared mailbox selected
        self.members: tuple[int, ...] = ()  # a shared mailbox opened through these members' membership
        self.person_address = ""  # then the first of them: whom the audit names as acting

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else ""
        refused = self.server.admit(self)
        if refused is not None:
            transport.write(enc.status_response(None, "BYE", refused.text, "UNAVAILABLE"))
            transport.close()
            self._closed = True
            return
        self.task = asyncio.get_running_loop().create_task(self.run())

    def data_received(self, data: bytes) -> None:
        self.receiver.receive_data(data)
        if not self._reading_paused and self.receiver.buffered > self.receiver.max_command_size:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        self._closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # ------------------------------------------------------------------ I/O helpers

    def new_receiver(self) -> Receiver:
        limits = self.rt.settings.limits
        literal = limits.literal_size if self.state is not State.NOT_AUTHENTICATED else _PREAUTH_LITERAL
        return Receiver(
            max_line_length=limits.imap_line_length,
            max_literal_size=literal,
            max_command_size=2 * literal + limits.imap_line_length,
            nonsync_literal_limit=None,
            utf8=self.utf8,
        )

    def raise_limits(self) -> None:
        """After authentication the literal limits grow to the configured ones (APPEND)."""
        limits = self.rt.settings.limits
        self.receiver.max_literal_size = limits.literal_size
        self.receiver.max_command_size = 2 * limits.literal_size + limits.imap_line_length

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def notified(self, _mailbox_id: int, folder_id: int | None) -> None:
        """Notifier callback (sync, after a commit): the selected folder may have changed."""
        sel = self.selected
        if sel is not None and folder_id in (sel.folder_id, RESYNC):
            self.dirty = True
            if self.idling:
                self._wake()

    async def wait_input(self, seconds: float) -> bool:
        """Wait for bytes, a close or (in IDLE) a notification; False on timeout."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        handle = loop.call_later(seconds, lambda: fut.done() or fut.set_result(False))
        try:
            return await fut
        finally:
            handle.cancel()
            self._waiter = None

    async def read_event(self, seconds: float) -> object | None:
        """Next Receiver event for a command that converses (AUTHENTICATE, IDLE); None on close/timeout."""
        while True:
            event = self.receiver.next_event()
            if event is not NEED_DATA:
                return event
            if self._closed or not await self.wait_input(seconds) or self._closed:
                return None

    def send(self, data: bytes) -> None:
        """Queue a response; large output is handed to the transport early (it buffers)."""
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > _OUT_HIGH_WATER:
            self._write_out()

    def _write_out(self) -> None:
        if self._out and not self._closed and self.transport is not None:
            self.transport.write(b"".join(self._out))
        self._out.clear()
        self._out_size = 0

    async def flush(self) -> None:
        self._write_out()
        while self._write_paused and not self._closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    @property
    def closed(self) -> bool:
        return self._closed

    def _lost(self, exc: OSError) -> bool:
        """Whether a handler's OSError is this connection going away (nobody is left to answer)."""
        gone = self._closed or self.transport is None or self.transport.is_closing()
        return gone or isinstance(exc, ConnectionError | ssl.SSLError)

    async def unavailable(self, faults: Sequence[MessageUnavailable], request: str) -> None:
        """Log and audit messages this command could not read (once per command)."""
        await storage_faults.report(
            self.rt,
            faults,
            service="imap",
            actor=self.address or f"peer:{self.remote}",
            remote=self.remote,
            request=f"imap {request}",
        )

    # ------------------------------------------------------------------ state

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def utf8(self) -> bool:
        """Mailbox names and strings in UTF-8: UTF8=ACCEPT (RFC 6855) or IMAP4rev2 (RFC 9051 §5.1)."""
        return "UTF8=ACCEPT" in self.enabled or "IMAP4REV2" in self.enabled

    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    def capabilities(self) -> list[str]:
        """RFC 9051 §7.2.2: what this connection may use now, derived from the registered handlers."""
        caps = ["IMAP4rev1", "IMAP4rev2"]
        before_auth = self.state is State.NOT_AUTHENTICATED
        if before_auth:
            caps += [f"AUTH={m}" for m in self.mechanisms()] if self.tls else ["STARTTLS", "LOGINDISABLED"]
        for handler in REGISTRY.values():
            if before_auth or handler.states != State.NOT_AUTHENTICATED:
                caps.extend(cap for cap in handler.capabilities if cap not in caps)
        caps += ["LITERAL+", "UTF8=ACCEPT", f"APPENDLIMIT={self.rt.settings.limits.message_size}"]
        return caps

    def mechanisms(self) -> list[str]:
        """SASL mechanisms offered: tokens only when ``[oauth]`` is set, EXTERNAL only when the client
        presented a certificate (a ``client_cert = "optional"`` listener)."""
        mechanisms = ["PLAIN"]
        if self.rt.auth.tokens_enabled:
            mechanisms += ["OAUTHBEARER", "XOAUTH2"]
        if self.peer_certificate() is not None:
            mechanisms.append("EXTERNAL")
        return mechanisms

    def peer_certificate(self) -> bytes | None:
        """The client certificate (DER) the TLS handshake verified, if the client presented one."""
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        return (ssl_object.getpeercert(binary_form=True) or None) if ssl_object is not None else None

    def enable(self, *caps: str) -> list[str]:
        """Turn extensions on (ENABLE, or implicitly per RFC 7162 §3.1); returns the newly enabled."""
        new = []
        for cap in caps:
            if cap not in self.enabled:
                self.enabled.add(cap)
                new.append(cap)
        if "QRESYNC" in new and "CONDSTORE" not in self.enabled:
            self.enabled.add("CONDSTORE")
        self.receiver.utf8 = self.utf8
        return new

    def authenticated(
        self, mailbox_id: int, address: str, members: tuple[int, ...] = (), person_address: str = ""
    ) -> None:
        self.state = State.AUTHENTICATED
        self.members = members
        self.person_address = person_address
        self.mailbox_id = mailbox_id
        self.address = address
        self.raise_limits()
        self._unsubscribe = self.rt.notifier.subscribe(mailbox_id, self.notified)

    def watch(self, mailbox_id: int) -> None:
        """While a shared mailbox's folder is selected, its changes wake this session (IDLE) too."""
        self.unwatch()
        if mailbox_id != self.mailbox_id:
            self._unsubscribe_shared = self.rt.notifier.subscribe(mailbox_id, self.notified)

    def unwatch(self) -> None:
        if callable(self._unsubscribe_shared):
            self._unsubscribe_shared()
        self._unsubscribe_shared = None

    def deselect(self) -> None:
        self.unwatch()
        self.selected = None
        self.dirty = False
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        try:
            caps = enc.Code.capability(self.capabilities())
            self.send(enc.status_response(None, "OK", "Caducee IMAP4rev2 server ready", caps))
            await self.flush()
            limits = self.rt.settings.limits
            while not self._closed:
                event = self.receiver.next_event()
                if event is NEED_DATA:
                    if self._reading_paused and self.transport is not None:
                        self._reading_paused = False
                        self.transport.resume_reading()
                    if self.closing and not self.receiver.mid_command:
                        self.send(enc.status_response(None, "BYE", "server shutting down"))
                        break
                    if not await self.wait_input(limits.imap_command_timeout) and not self._closed:
                        self.send(enc.status_response(None, "BYE", "autologout, idle for too long"))
                        break
                    continue
                await self._event(event)
                if self.logout:
                    break
        except OSError as exc:
            if not self._lost(exc):
                log.exception("IMAP session from %s failed", self.remote)
            self._closed = True
        except Exception:
            log.exception("IMAP session from %s failed", self.remote)
        finally:
            self.close()

    def close(self) -> None:
        """Flush what is queued, close the socket and release the connection slots."""
        if callable(self._unsubscribe):
            self._unsubscribe()
            self._unsubscribe = None
        self.unwatch()
        self._write_out()
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        self.server.release(self)

    def shutdown(self) -> None:
        """Server stopping: the session says BYE as soon as it is between commands (one being received,
        an APPEND literal say, is read and run first, within ``[server] shutdown_grace``)."""
        self.closing = True
        self._wake()

    async def _event(self, event: object) -> None:
        if isinstance(event, Command):
            await self.dispatch(event.tag, event.body)
        elif isinstance(event, NeedContinuation):
            if event.too_large:
                self.send(enc.status_response(event.tag, "NO", "literal too large", "TOOBIG"))
                self.receiver.reject_literal()
            else:
                self.receiver.accept_literal()
                self.send(enc.continuation("Ready for literal data"))
            await self.flush()
        elif isinstance(event, BadCommand):
            self.rt.metrics.command(self.service, "unknown")
            if event.tag is not None:
                self.rt.metrics.reply(self.service, event.status)
            self.send(
                enc.status_response(event.tag, event.status, self.reply_text(event.message), event.code)
            )
            await self.flush()
        elif isinstance(event, IdleDone | AuthResponse | AuthCancel):
            self.send(enc.status_response(None, "BAD", "unexpected continuation data"))
            await self.flush()

    async def still_member(self) -> bool:
        """A shared mailbox opened through a membership: BYE (audited) once the membership is gone,
        at the next command of every session it opened."""
        assert self.mailbox_id is not None
        if await self.rt.auth.still_member(self.mailbox_id, self.members):
            return True
        await self.rt.audit.record(self.address, "logout", self.remote, "imap", "membership removed")
        self.send(enc.status_response(None, "BYE", "you are no longer a member of this mailbox"))
        await self.flush()
        self.logout = True
        return False

    async def check_access(self) -> bool:
        """Before each command and at each IDLE wake-up: a session opened through a membership ends
        (BYE) once the membership is gone, and the rights on a selected folder that is not wholly
        one's own (a shared folder, or the ORG's own opened through a membership) are read again."""
        if self.members and not await self.still_member():
            return False
        sel = self.selected
        if sel is not None and (self.members or sel.owner != self.mailbox_id):
            await self.recheck_shared_rights()
        return True

    async def recheck_shared_rights(self) -> None:
        """A member's rights on the selected folder, read again: a removed member, or one whose ``r``
        was taken, has the folder closed at once (untagged ``OK [CLOSED]``, audited), not at their
        next SELECT; other rights changes apply from this command on."""
        sel = self.selected
        assert sel is not None and self.mailbox_id is not None
        if sel.owner == self.mailbox_id:
            rights = await accounts.rights_through(self.rt, self.mailbox_id, self.members)
        else:
            access = next(
                (
                    a
                    for a in await accounts.memberships_of(self.rt, self.mailbox_id)
                    if a.mailbox_id == sel.owner
                ),
                None,
            )
            rights = access.rights if access is not None else ""
        if acl.LOOKUP in rights and acl.READ in rights:
            sel.rights = rights
            return
        await self.rt.audit.record(
            self.address, "unselect", self.remote, "imap", f"rights on {sel.name} withdrawn"
        )
        self.deselect()
        self.send(
            enc.status_response(None, "OK", "access to the shared folder withdrawn, it is closed", "CLOSED")
        )

    async def dispatch(self, tag: str, body: CommandBody) -> None:
        """Run one command: state check, handler, pending updates, tagged completion (RFC 9051 §2.2.2)."""
        handler = REGISTRY.get(body.name)
        self.rt.metrics.command(self.service, body.name if handler is not None else "unknown")
        expunges = body.name not in _NO_EXPUNGE_DURING or bool(getattr(body, "uid", False))
        if not await self.check_access():
            return
        if handler is None:
            done = Done("unknown command", status="BAD")
        elif not handler.states & self.state:
            done = Done(f"{body.name} not allowed now", status="BAD")
        else:
            try:
                if self.selected is not None and self.dirty and handler.sync_first:
                    await self.sync(expunges=expunges)  # so that "*" and sequence numbers see new messages
                done = await handler.run(self, tag, body)
            except Fail as exc:
                done = Done(exc.text, exc.code, exc.status)
            except quota.OverQuota as exc:
                done = Done(f"quota exceeded ({exc.resource})", "OVERQUOTA", "NO")
            except MessageUnavailable as exc:
                await self.unavailable([exc], body.name)
                done = Done("a message cannot be read from storage, try again later", "UNAVAILABLE", "NO")
            except StoreError as exc:
                done = Done(str(exc), store_code(exc.code), "NO")
            except Exception as exc:
                if isinstance(exc, OSError) and self._lost(exc):
                    self._closed = True
                    return
                # Anything else, an OSError of a file or the database included, costs the command.
                log.exception("IMAP %s failed for a client at %s", body.name, self.remote)
                done = Done("internal server error", "SERVERBUG", "NO")
        if self._closed:
            return
        if not done.status:
            await self.flush()
            return
        if self.selected is not None and not self.logout:
            await self.sync(expunges=expunges)
        self.rt.metrics.reply(self.service, done.status)
        self.send(enc.tagged(tag, done.status, self.reply_text(done.text), done.code))
        await self.flush()

    def reply_text(self, text: str) -> str:
        """RFC 3501 §9: resp-text is 7-bit until UTF-8 is enabled (RFC 6855, RFC 9051); the folder names a
        reply quotes are then written in modified UTF-7, as this client names them itself."""
        return text if self.utf8 or text.isascii() else mutf7.encode(text)

    # ------------------------------------------------------------------ selected folder updates

    def send_flags_response(self) -> None:
        """``* FLAGS``: the system flags and every keyword of the folder this client was told of."""
        sel = self.selected
        assert sel is not None
        self.send(enc.flags([*SYSTEM_FLAGS, *sorted(sel.keywords)]))

    def send_permanent_flags(self) -> None:
        """``PERMANENTFLAGS``: what STORE may set, new keywords too (``\\*``); nothing under EXAMINE."""
        sel = self.selected
        assert sel is not None
        permanent = [] if sel.readonly else [*SYSTEM_FLAGS, *sorted(sel.keywords), "\\*"]
        # RFC 4314 §4: only the flags these rights let STORE change (\Seen: s, \Deleted: t, others: w).
        permanent = acl.allowed_flags(sel.rights, permanent)
        self.send(enc.status_response(None, "OK", "flags permitted", enc.Code.permanentflags(permanent)))

    def announce_keywords(self, flags: Iterable[str]) -> None:
        """A keyword the client was not told of yet: new FLAGS and PERMANENTFLAGS first.

        RFC 9051 §7.3.5 / RFC 3501 §7.2.6: the client records the folder's flags from FLAGS, and
        strict clients refuse a FETCH showing a keyword that no FLAGS response listed; so the set
        is announced again when it grows, whoever set the keyword (this session, another one,
        APPEND, COPY or delivery), before the response that shows it.
        """
        sel = self.selected
        if sel is None:
            return
        new = {f for f in flags if f not in sel.keywords and f not in _SYSTEM}
        if new:
            sel.keywords |= new
            self.send_flags_response()
            self.send_permanent_flags()

    def flags_item(self, flags: Iterable[str], uid: int) -> bytes:
        """FLAGS value (its new keywords announced first); rev1 clients also see \\Recent (RFC 3501
        §2.3.2, gone in RFC 9051). Called while the FETCH response is built, before it is sent."""
        names = sorted(flags)
        self.announce_keywords(names)
        sel = self.selected
        if not self.rev2 and sel is not None and uid in sel.recent:
            names.append("\\Recent")
        return enc.flag_list(names)

    def send_flags(self, seq: int, m: MessageInfo, *, uid: bool = True) -> None:
        """Unsolicited or STORE FETCH response (RFC 7162 §3.1.4.1: MODSEQ once CONDSTORE is on)."""
        items: list[tuple[str, bytes]] = []
        if uid or self.qresync:
            items.append(("UID", b"%d" % m.uid))
        items.append(("FLAGS", self.flags_item(m.flags, m.uid)))
        if self.condstore:
            items.append(("MODSEQ", b"(%d)" % m.modseq))
        self.send(enc.fetch(seq, items))

    def announce_expunged(self, uids: Iterable[int]) -> None:
        """Drop UIDs from the map and tell the client: VANISHED under QRESYNC, else EXPUNGE (§7.5.1)."""
        sel = self.selected
        assert sel is not None
        gone = sorted({u for u in uids if sel.seq(u)}, reverse=True)
        if not gone:
            return
        for update in sel.contexts.expunged(gone, sel.seq):  # RFC 5267 §4.3.4: before the EXPUNGE
            self.send(update)
        if self.qresync:
            for uid in gone:
                del sel.uids[sel.seq(uid) - 1]
            self.send(enc.vanished(gone))
        else:
            for uid in gone:
                seq = sel.seq(uid)
                del sel.uids[seq - 1]
                self.send(enc.expunge(seq))
        for uid in gone:
            sel.pending.discard(uid)
            sel.recent.discard(uid)

    async def sync(self, *, expunges: bool, force: bool = False) -> None:
        """Bring the client up to date with the folder (RFC 9051 §7.4, §5.2), if anything changed."""
        sel = self.selected
        if sel is None or not (self.dirty or force):
            if sel is not None and expunges and sel.pending:
                self.announce_expunged(list(sel.pending))
            if sel is not None and sel.contexts.backlog:
                await self.update_contexts(())
            return
        self.dirty = False
        try:
            info, changed, vanished = await self.rt.store.changes_since(sel.folder_id, sel.modseq, sel.viewer)
        except StoreError:
            self.send(enc.status_response(None, "BYE", "the selected mailbox was deleted"))
            self.logout = True
            return
        if info.uidvalidity != sel.uidvalidity:
            self.send(enc.status_response(None, "BYE", "the selected mailbox was replaced"))
            self.logout = True
            return
        sel.pending.update(u for u in vanished if sel.seq(u))
        if expunges and sel.pending:
            self.announce_expunged(list(sel.pending))
        last = sel.last_uid
        new: list[int] = []
        for m in changed:
            if m.uid > last:
                new.append(m.uid)
                self.announce_keywords(m.flags)
            elif m.uid not in sel.pending:
                seq = sel.seq(m.uid)
                if seq:
                    self.send_flags(seq, m)
        sel.modseq = max(sel.modseq, info.highestmodseq)
        if new:
            sel.uids.extend(new)
            self.take_recent(sel, new)
            self.send(enc.exists(len(sel.uids)))
            if not self.rev2:
                self.send(enc.recent(len(sel.recent)))
        await self.update_contexts(changed)

    def take_recent(self, sel: Selected, uids: list[int]) -> None:
        """\\Recent for UIDs this session is the first to learn of (RFC 3501 §2.3.2): a read-write
        session claims them, so no later session sees them recent; EXAMINE shows those nobody
        claimed yet without claiming them. An IMAP4rev2 session has no \\Recent (RFC 9051 dropped
        it) and claims nothing, so that the IMAP4rev1 clients of the same mailbox still see it."""
        if self.rev2:
            return
        if sel.readonly:
            mark = self.server.recent_mark(sel.folder_id, sel.uidvalidity)
            sel.recent.update(u for u in uids if u > mark)
        else:
            sel.recent.update(self.server.claim_recent(sel.folder_id, sel.uidvalidity, uids))

    async def update_contexts(self, changed: Iterable[MessageInfo]) -> None:
        """ADDTO/REMOVEFROM for updating contexts (RFC 5267 §4.3.2: after the FETCH or EXISTS)."""
        sel = self.selected
        if sel is not None and sel.contexts:
            for update in await sel.contexts.update(self, changed):
                self.send(update)

    def own_change(self, modseq: int | None, changed: Iterable[MessageInfo] = ()) -> None:
        """After our own write: skip re-announcing it if nobody else wrote in between (modseq + 1).

        Our own notification still marks us dirty; the next ``changes_since`` then starts after it.
        The messages whose flags we ``changed`` still reach the updating contexts.
        """
        sel = self.selected
        if sel is None:
            return
        sel.contexts.saw(changed)
        if modseq is not None and modseq == sel.modseq + 1:
            sel.modseq = modseq
        else:
            self.dirty = True

    # ------------------------------------------------------------------ sequence sets

    def resolve(self, seqset: SequenceSet, uid: bool) -> list[int]:
        """UIDs (ascending) named by a sequence set or UID set, ``$`` included (RFC 5182 §2.1).

        Sequence numbers beyond the message count are a client error (RFC 9051 §9 seq-number);
        UIDs that do not exist are simply ignored (RFC 9051 §6.4.8).
        """
        sel = self.selected
        assert sel is not None
        if seqset.saved:
            saved = sel.saved or []
            numbers = saved if uid else [s for s in (sel.seq(u) for u in saved) if s]
            seqset = SequenceSet(seqset.ranges + SequenceSet.from_numbers(numbers).ranges)
        if uid:
            return seqset.select_uids(sel.uids)
        count = len(sel.uids)
        for lo, hi in seqset.ranges:
            if lo is not None and hi is not None and max(lo, hi) > count:
                raise Fail("BAD", "invalid message sequence number")
        return [sel.uids[i - 1] for i in seqset.iter(count)]

    def acting(self, shared: str = "") -> tuple[str, str]:
        """Who the audit names for an action and the ORG/CAB it was done in as a member (issue 16):
        the person and the ORG of a shared-namespace folder (``shared``), or the person behind a
        session a membership opened and the ORG it opened; else the session's user and ""."""
        if self.members:
            return self.person_address, self.address
        return self.address, shared

    def require_rights(self, rights: str, what: str) -> None:
        """RFC 4314 §4 on the selected folder: ``NO [NOPERM]`` unless its rights hold ``rights``."""
        sel = self.selected
        assert sel is not None
        lacking = acl.missing(sel.rights, rights)
        if lacking:
            raise Fail("NO", f"{what} needs the right(s) {lacking} on {sel.name}", "NOPERM")

    def require_writable(self) -> Selected:
        sel = self.selected
        assert sel is not None
        if sel.readonly:
            raise Fail("NO", "mailbox is read-only (EXAMINE, or too few rights to change it)", "READ-ONLY")
        return sel
