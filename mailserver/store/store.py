"""The message store: the only code that writes folders, messages, blobs and usage counters.

SMTP delivery, IMAP, the portal, the queue and the quota tools all go through this API.

Invariants (each one has a test in tests/store/):
- Nothing is acknowledged before it is durable: blob files are fsync'ed (``BlobStore.write``) before the
  transaction that references them commits (a small message is in the row that transaction writes),
  and callers answer the client only after these methods return.
- A UID is assigned from ``folder.uidnext`` inside the write transaction and is never reused while the
  folder keeps its UIDVALIDITY; every change to a message or folder raises ``folder.highestmodseq``
  and stamps the changed messages with it (RFC 7162). Expunged UIDs leave a tombstone for VANISHED.
- Usage (``mailbox.used_bytes`` / ``used_messages``) changes in the same transaction as the rows it
  counts. A blob is counted once per mailbox that holds it, however many folders hold a copy.
- The mailbox row is locked first (then folders) in every write, so concurrent writers to one mailbox
  serialise on both engines and a quota can never be overrun by a race.
- Change notifications are published only after commit (NOTIFY inside the transaction on PostgreSQL).
- Whoever makes folders (IMAP CREATE and RENAME, a new mailbox's defaults), names obey
  ``check_folder_name`` and a mailbox's folders and subscriptions never pass ``[limits]
  folders_per_mailbox``: counted inside the write transaction, after the mailbox row lock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Container, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, String, bindparam, cast, delete, exists, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from config.settings import LimitsSettings, QuotaSettings
from mailserver import quota
from mailserver.audit import INSERT_EVENTS, event_row
from mailserver.db.engine import Database, ReadSession, WriteSession, run_core
from mailserver.db.models import (
    Blob,
    Domain,
    Expunged,
    Folder,
    Mailbox,
    MemberFlags,
    Message,
    Subscription,
    utcnow,
)
from mailserver.db.prepared import Prepared
from mailserver.large_file_models import LargeFile
from mailserver.store import mime, queries
from mailserver.store.blobs import BlobStore, WrittenBlob
from mailserver.store.notify import CHANNEL, Notifier
from mailserver.store.queries import FolderCounts, FolderInfo, MessageInfo, flags_from_text, flags_to_text

log = logging.getLogger("caducee.store")

DEFAULT_FOLDERS: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
SEPARATOR = "/"
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})


class StoreError(Exception):
    """A refused store operation; ``code`` is a stable reason the protocols map to their replies."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MessageUnavailable(StoreError):
    """A message whose file cannot be read (missing, unreadable, an I/O error): the storage is at
    fault, not the request. Readers answer "try later" (IMAP ``NO [UNAVAILABLE]``, HTTP 503) and
    report it through :func:`mailserver.storage_faults.report`; ``reason`` is the OS error."""

    def __init__(self, blob_id: int, reason: str) -> None:
        super().__init__("UNAVAILABLE", "the message cannot be read from storage")
        self.blob_id = blob_id
        self.reason = reason


class FolderNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__("NONEXISTENT", f"no folder named {name!r}")


class FolderExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__("ALREADYEXISTS", f"a folder named {name!r} already exists")


@dataclass(frozen=True)
class Viewer:
    """A member reading a shared (ORG/CAB) mailbox: the ``private`` flags they see and change are their
    own (``member_flags``), every other flag is the message's, shared by all (``[imap] private_flags``)."""

    member_id: int
    private: frozenset[str]


@dataclass(frozen=True)
class PreparedBlob:
    """A message ready to be referenced by rows, with its parsed structure: either a file already
    durable on disk (``written.path``), or small enough to go into its row (``inline``, no file), in
    which case the delivery's commit makes it durable."""

    written: WrittenBlob
    meta: dict[str, Any]
    meta_json: str
    inline: bytes | None = None


@dataclass(frozen=True)
class Notice:
    """A quota warning to deliver once the transaction that crossed the level has committed."""

    mailbox_id: int
    address: str
    level: int
    used: int
    limit: int


@dataclass
class DeliveryResult:
    """Per-mailbox outcome of one delivery: the UID, or the quota resource that refused it."""

    uids: dict[int, int] = field(default_factory=dict)
    uidvalidity: dict[int, int] = field(default_factory=dict)  # of the folder each UID belongs to
    over_quota: dict[int, str] = field(default_factory=dict)
    blob_id: int | None = None
    notices: list[Notice] = field(default_factory=list)


# Synchronous: it runs inside the delivery's transaction (see ``Database.run_write``).
InTransaction = Callable[[Session, int, DeliveryResult], None]
_Changed = set[tuple[int, int | None]]
T = TypeVar("T")


@dataclass(frozen=True)
class FlagChange:
    changed: list[MessageInfo]
    modified: list[int]


def normalize_folder(name: str) -> str:
    """INBOX is case-insensitive (RFC 9051 §5.1); other names are kept as given, trailing ``/`` dropped."""
    name = name.rstrip(SEPARATOR)
    head, sep, rest = name.partition(SEPARATOR)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def check_folder_name(name: str, limits: LimitsSettings) -> str:
    """The one rule for a folder name that any path may create or rename to (RFC 9051 §5.1); returns
    it normalised. No empty level, no leading separator, no wildcard (it could never be LISTed
    alone), no control character: ``CANNOT``; longer or deeper than the limits: ``LIMIT`` (RFC 5530)."""
    if not name or any(not part for part in name.split(SEPARATOR)):
        raise StoreError("CANNOT", f"invalid folder name {name!r}")
    name = normalize_folder(name)
    if "*" in name or "%" in name or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise StoreError("CANNOT", "folder names cannot contain wildcards or control characters")
    if len(name.encode("utf-8")) > limits.folder_name_length:
        raise StoreError("LIMIT", f"folder names are limited to {limits.folder_name_length} octets")
    if name.count(SEPARATOR) >= limits.folder_depth:
        raise StoreError("LIMIT", f"folders are limited to {limits.folder_depth} levels")
    return name


def _in_subtree(name: str, root: str) -> bool:
    return name == root or name.startswith(root + SEPARATOR)


def _missing_parents(name: str, existing: Container[str]) -> list[str]:
    """The levels above ``name`` that do not exist yet, outermost first (created with it, §6.3.4)."""
    parts = name.split(SEPARATOR)
    parents = (SEPARATOR.join(parts[:i]) for i in range(1, len(parts)))
    return [p for p in parents if p not in existing]


def _pg_notify(session: Session, changed: _Changed) -> None:
    """PostgreSQL: NOTIFY every process of the changed (mailbox, folder) pairs, sent at commit. The
    payload ``mailbox:folder`` is what ``Notifier.listen_postgres`` parses (``_RESERVE_UIDS_NOTIFY``
    builds the same in SQL)."""
    for mailbox_id, folder_id in changed:
        payload = f"{mailbox_id}:{folder_id if folder_id is not None else ''}"
        session.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})


def drop_blob_ref(session: Session, blob_id: int) -> str | None:
    """Release one reference held outside folders (a finished queue entry) in the caller's
    transaction; returns the file to remove (with ``Store.remove_files``) once that transaction
    committed."""
    blob = session.get(Blob, blob_id, with_for_update=True)
    if blob is None:
        return None
    blob.refcount -= 1
    if blob.refcount > 0:
        return None
    session.delete(blob)
    return blob.path  # None for a message kept in its row: nothing more to remove


def insert_inline_blob(session: Session, data: bytes, refs: int = 1) -> int:
    """A small message the server writes itself (a patient alert), kept in its row, inside the caller's
    transaction: no file to write first, so it can be made in the very commit that decides it."""
    written = WrittenBlob(None, len(data), hashlib.sha256(data).hexdigest())
    meta_json = json.dumps(mime.analyze(data), separators=(",", ":"))
    row = Store._blob_row(PreparedBlob(written, {}, meta_json, inline=data), refs, utcnow())
    return int(session.execute(_INSERT_BLOB, row).scalar_one())


def _receive_reply(result: DeliveryResult, mailbox_id: int) -> str:
    """What a ``receive`` audit event says was answered for one recipient mailbox."""
    if mailbox_id in result.uids:
        return f"delivered uid {result.uids[mailbox_id]}"
    return "452 4.2.2 full"


# Helpers shared by the synchronous transactions (``Store._run_write``) and, through
# ``AsyncSession.run_sync``, by the asynchronous ones.


def _folder_by_id(session: Session, folder_id: int, lock: bool = False) -> Folder:
    q = select(Folder).where(Folder.id == folder_id)
    if lock:
        q = q.with_for_update()
    f = session.execute(q).scalar_one_or_none()
    if f is None:
        raise StoreError("NONEXISTENT", "the folder no longer exists")
    return f


def _messages(session: Session, folder_id: int, uids: Sequence[int]) -> list[Message]:
    out: list[Message] = []
    for i in range(0, len(uids), 500):
        chunk = uids[i : i + 500]
        rows = session.execute(
            select(Message)
            .where(Message.folder_id == folder_id, Message.uid.in_(chunk))
            .order_by(Message.uid)
        )
        out.extend(rows.scalars())
    return out


def _bump(session: Session, folder: Folder, new_uids: int = 0) -> tuple[int, int]:
    """Raise the folder's HIGHESTMODSEQ (and reserve ``new_uids`` UIDs); returns (first uid, modseq)."""
    first_uid = folder.uidnext
    folder.uidnext += new_uids
    folder.highestmodseq += 1
    session.flush()
    return first_uid, folder.highestmodseq


def _info(m: Message) -> MessageInfo:
    return MessageInfo(m.uid, m.modseq, flags_from_text(m.flags), m.size, m.internal_date, m.blob_id)


def _seen_by(m: MessageInfo, own: tuple[str, int] | None, viewer: Viewer | None) -> MessageInfo:
    """The message as ``viewer`` sees it: their private flags (``own``: their row's flags text and
    modseq, ``queries.own_flags``) instead of the message's, and the later of the message's modseq and
    that of their last private change (what their CHANGEDSINCE compares)."""
    if viewer is None:
        return m
    mine = flags_from_text(own[0]) & viewer.private if own is not None else frozenset()
    flags = (m.flags - viewer.private) | mine
    modseq = max(m.modseq, own[1]) if own is not None else m.modseq
    return MessageInfo(m.uid, modseq, flags, m.size, m.internal_date, m.blob_id)


async def _seen(
    session: ReadSession | WriteSession, folder_id: int, infos: list[MessageInfo], viewer: Viewer | None
) -> list[MessageInfo]:
    """``infos`` (in UID order) as ``viewer`` sees them, their rows read in one statement; as they
    are without a viewer (one's own mailbox: no statement)."""
    if viewer is None or not infos:
        return infos
    own = await run_core(session, queries.own_flags, folder_id, viewer.member_id, infos[0].uid, infos[-1].uid)
    return [_seen_by(m, own.get(m.uid), viewer) for m in infos]


def _apply(
    mode: Literal["add", "remove", "replace"], current: frozenset[str], flags: set[str]
) -> frozenset[str]:
    if mode == "add":
        return current | flags
    if mode == "remove":
        return current - flags
    return frozenset(flags)


def _folder_info(f: Folder) -> FolderInfo:
    return FolderInfo(f.id, f.mailbox_id, f.name, f.special_use, f.uidvalidity, f.uidnext, f.highestmodseq)


@lru_cache(maxsize=4096)
def _meta_cached(blob_id: int, meta: str) -> dict[str, Any]:
    return json.loads(meta)


class Store:
    """Folders, messages and usage of every mailbox; see the module docstring for the invariants."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        notifier: Notifier,
        quotas: QuotaSettings,
        inline_max: int = 0,
        limits: LimitsSettings | None = None,
    ) -> None:
        self.db = db
        # [limits] folder_name_length, folder_depth, folders_per_mailbox (the last bounds the
        # subscription list too, which outlives folders); read at each call, like every limit.
        self.folder_limits = limits or LimitsSettings()
        self.blobs = blobs
        self.notifier = notifier
        self.default_storage = quotas.default_storage
        self.default_messages = quotas.default_messages
        self.warn_levels = sorted(quotas.warn_percent)
        self.inline_max = inline_max
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- transactions and notification

    @asynccontextmanager
    async def _write(
        self, *, brief: bool = False
    ) -> AsyncIterator[tuple[WriteSession, set[tuple[int, int | None]]]]:
        """A write transaction that publishes the (mailbox, folder) pairs it changed after commit;
        ``brief`` for work bounded by one command (see ``Database.write``)."""
        changed: set[tuple[int, int | None]] = set()
        async with self.db.write(brief=brief) as session:
            yield session, changed
            if self.db.kind == "postgresql":
                await session.run_sync(_pg_notify, changed)
        self._publish(changed)

    async def _run_write(self, work: Callable[[Session, _Changed], T], *, brief: bool = False) -> T:
        """``_write`` for synchronous code (``Database.run_write``: one thread hop on SQLite, only for
        the COMMIT if ``brief``); ``work`` adds the (mailbox, folder) pairs it changes to the set it
        is given."""
        kind = self.db.kind

        def transaction(session: Session) -> tuple[T, _Changed]:
            changed: _Changed = set()
            result = work(session, changed)
            if kind == "postgresql":
                _pg_notify(session, changed)
            return result, changed

        result, changed = await self.db.run_write(transaction, brief=brief)
        self._publish(changed)
        return result

    def _publish(self, changed: set[tuple[int, int | None]]) -> None:
        """After commit, on SQLite: tell this process's IMAP sessions (PostgreSQL's NOTIFY, sent inside
        the transaction, reaches every process through the notifier's LISTEN)."""
        if self.db.kind != "postgresql":
            for mailbox_id, folder_id in changed:
                self.notifier.publish(mailbox_id, folder_id)

    async def _lock_mailbox(self, session: AsyncSession, mailbox_id: int) -> Mailbox:
        mb = (
            await session.execute(select(Mailbox).where(Mailbox.id == mailbox_id).with_for_update())
        ).scalar_one_or_none()
        if mb is None:
            raise StoreError("NONEXISTENT", f"no mailbox with id {mailbox_id}")
        return mb

    async def _folder(self, session: AsyncSession, mailbox_id: int, name: str, lock: bool = False) -> Folder:
        q = select(Folder).where(Folder.mailbox_id == mailbox_id, Folder.name == normalize_folder(name))
        if lock:
            q = q.with_for_update()
        f = (await session.execute(q)).scalar_one_or_none()
        if f is None:
            raise FolderNotFound(name)
        return f

    # ----------------------------------------------------------------- usage accounting

    @property
    def default_limits(self) -> quota.Limits:
        return quota.Limits(self.default_storage, self.default_messages)

    async def limits(self, session: AsyncSession, mb: Mailbox) -> quota.Limits:
        dom = await session.get(Domain, mb.domain_id)
        return quota.effective_limits(
            mb.quota_storage,
            mb.quota_messages,
            dom.quota_storage if dom else None,
            dom.quota_messages if dom else None,
            self.default_storage,
            self.default_messages,
        )

    async def _holds_blob(self, session: AsyncSession, mailbox_id: int, blob_id: int) -> bool:
        q = select(
            exists().where(
                Message.blob_id == blob_id, Message.folder_id == Folder.id, Folder.mailbox_id == mailbox_id
            )
        )
        return bool((await session.execute(q)).scalar())

    async def _charge(
        self, session: AsyncSession, mb: Mailbox, blobs: Sequence[tuple[int, int]], check: bool = True
    ) -> None:
        """Count ``blobs`` ((blob id, size) about to be added to ``mb``) against its usage and quota."""
        new_bytes = 0
        seen: set[int] = set()
        for blob_id, size in blobs:
            if blob_id in seen:
                continue
            seen.add(blob_id)
            if not await self._holds_blob(session, mb.id, blob_id):
                new_bytes += size
        if check:
            resource = quota.exceeded(
                quota.Usage(mb.used_bytes, mb.used_messages),
                await self.limits(session, mb),
                new_bytes,
                len(blobs),
            )
            if resource:
                raise quota.OverQuota(mb.address, resource)
        mb.used_bytes += new_bytes
        mb.used_messages += len(blobs)

    async def _release(self, session: AsyncSession, mb: Mailbox, removed: Sequence[Message]) -> list[str]:
        """Account for rows already deleted from ``mb``; drop unreferenced blobs. Returns files to delete."""
        mb.used_messages -= len(removed)
        to_delete: list[str] = []
        for blob_id in {m.blob_id for m in removed}:
            count = sum(1 for m in removed if m.blob_id == blob_id)
            blob = await session.get(Blob, blob_id, with_for_update=True)
            if blob is None:
                continue
            if not await self._holds_blob(session, mb.id, blob_id):
                mb.used_bytes -= blob.size
            blob.refcount -= count
            if blob.refcount <= 0:
                if blob.path is not None:
                    to_delete.append(blob.path)
                await session.delete(blob)
        await session.flush()
        return to_delete

    async def _remove_files(self, paths: list[str]) -> None:
        if paths:
            await asyncio.to_thread(lambda: [self.blobs.remove(p) for p in paths])

    # ----------------------------------------------------------------- blobs

    async def prepare(self, data: bytes) -> PreparedBlob:
        """Analyse ``data`` once and, unless it is small enough to live in its row (``inline_max``),
        write it durably as a file (off the event loop); not yet visible to anyone.

        Small messages skip the file: creating, writing and fsync'ing a file and its directory costs
        more than the same bytes in the row the delivery commits anyway (SQLite's "35 % faster than
        the filesystem" measurement, https://www.sqlite.org/fasterthanfs.html), and on PostgreSQL
        they are then shared by every node without a shared filesystem.
        """
        inline = len(data) <= self.inline_max

        def work() -> PreparedBlob:
            meta = mime.analyze(data)
            meta_json = json.dumps(meta, separators=(",", ":"))
            if inline:
                written = WrittenBlob(None, len(data), hashlib.sha256(data).hexdigest())
                return PreparedBlob(written, meta, meta_json, inline=data)
            return PreparedBlob(self.blobs.write(data), meta, meta_json)

        # A small message costs microseconds to analyse: no trip to a worker thread for it.
        return work() if inline else await asyncio.to_thread(work)

    async def discard(self, prepared: PreparedBlob) -> None:
        """Remove a prepared blob that no row references (an aborted delivery)."""
        if prepared.written.path is not None:
            await asyncio.to_thread(self.blobs.remove, prepared.written.path)

    @staticmethod
    def _blob_row(prepared: PreparedBlob, refs: int, now: dt.datetime) -> dict[str, Any]:
        w = prepared.written
        return {
            "path": w.path,
            "data": prepared.inline,
            "size": w.size,
            "sha256": w.sha256,
            "refcount": refs,
            "meta": prepared.meta_json,
            "created_at": now,
        }

    async def _insert_blob(self, session: AsyncSession, prepared: PreparedBlob, refs: int) -> int:
        return int(
            (await session.execute(_INSERT_BLOB, self._blob_row(prepared, refs, utcnow()))).scalar_one()
        )

    async def add_blob_refs(self, session: AsyncSession, blob_id: int, count: int) -> None:
        """Other owners of a blob (the outbound queue) take references inside the caller's transaction."""
        await session.execute(update(Blob).where(Blob.id == blob_id).values(refcount=Blob.refcount + count))

    async def remove_files(self, paths: list[str]) -> None:
        """Delete blob files whose rows are gone (after the commit that removed them)."""
        await self._remove_files(paths)

    async def read_blob(self, blob_id: int) -> bytes:
        """The message's bytes; :class:`MessageUnavailable` when its file cannot be read."""
        found = await self.db.read_one(queries.blob_content, blob_id)
        if found is None:
            raise StoreError("NONEXISTENT", f"no blob {blob_id}")
        path, data = found
        if data is not None:
            return bytes(data)
        try:
            return await asyncio.to_thread(self.blobs.read, path)
        except OSError as exc:
            raise MessageUnavailable(blob_id, f"{type(exc).__name__}: {exc}") from exc

    async def unreadable(self, blob_ids: Iterable[int]) -> set[int]:
        """The blobs among these whose file is missing now: FETCH does not mark them \\Seen, since
        their body will not be sent (a file lost later still fails its read, as it must)."""
        ids = list(set(blob_ids))
        if not ids:
            return set()
        files = select(Blob.id, Blob.path).where(Blob.id.in_(ids), Blob.path.is_not(None))
        async with self.db.read() as session:
            rows = (await session.execute(files)).all()
        if not rows:
            return set()
        return await asyncio.to_thread(lambda: {i for i, path in rows if not self.blobs.exists(path)})

    async def blob_meta(self, blob_id: int) -> dict[str, Any]:
        """The analysis made at delivery (envelope, body structure, offsets, header fields)."""
        meta = await self.db.read_one(queries.blob_meta, blob_id)
        if meta is None:
            raise StoreError("NONEXISTENT", f"no blob {blob_id}")
        return _meta_cached(blob_id, meta)

    async def blob_metas(self, blob_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        ids = list(set(blob_ids))
        if not ids:
            return {}
        rows = await self.db.read_one(queries.blob_metas, ids)  # a blob's analysis never changes
        return {blob_id: _meta_cached(blob_id, meta) for blob_id, meta in rows}

    # ----------------------------------------------------------------- delivery (SMTP, portal)

    async def deliver(
        self,
        prepared: PreparedBlob,
        mailbox_ids: Sequence[int],
        folder: str = "INBOX",
        flags: Iterable[str] = (),
        extra_refs: int = 0,
        in_transaction: InTransaction | None = None,
        enforce_quota: bool = True,
        trace: tuple[str, str] | None = None,
        internal_date: dt.datetime | None = None,
    ) -> DeliveryResult:
        """Put one durable blob into ``folder`` of each mailbox (``internal_date``: now by default).

        A mailbox over quota is refused alone (``over_quota``), the others still receive the message.
        ``extra_refs`` references are kept for other owners (outbound queue entries) and
        ``in_transaction(session, blob_id, result)`` lets them write their rows (queue entries) in the
        same commit. ``trace`` = (remote address, request) adds a ``receive`` audit event per mailbox
        (its UID, or the quota refusal) in that commit too, for the whole batch in one statement.
        The blob file is removed if, in the end, nothing references it.
        ``enforce_quota=False`` is only for the server's own notices (a quota warning must reach a
        nearly full mailbox).

        Group commit: deliveries that arrive while a commit is in flight are committed together in the
        next transaction, each inside its own savepoint, so one fsync serves many messages and one
        failing delivery never affects another.
        """
        request = _Pending(
            prepared,
            tuple(sorted(set(mailbox_ids))),
            folder,
            flags_to_text(flags),
            extra_refs,
            in_transaction,
            enforce_quota,
            trace,
            internal_date,
            asyncio.get_running_loop().create_future(),
        )
        self._pending.append(request)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        result = await asyncio.shield(request.done)
        await self._send_notices(result.notices)
        return result

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:_BATCH], self._pending[_BATCH:]
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        """Commit a batch in one transaction: all deliveries together in a few statements, or, when
        one of them fails (a folder or mailbox gone, a hook's error), again one savepoint each. The
        transaction is synchronous code run by ``Database.run_write``; brief: at most ``_BATCH``
        deliveries, a few indexed statements each."""

        def together(session: Session, changed: _Changed) -> list[DeliveryResult | BaseException]:
            return self._deliver_together(session, changed, batch)

        def one_by_one(session: Session, changed: _Changed) -> list[DeliveryResult | BaseException]:
            outcomes: list[DeliveryResult | BaseException] = []
            for request in batch:
                touched: _Changed = set()
                try:
                    with session.begin_nested():
                        (outcome,) = self._deliver_together(session, touched, [request])
                except Exception as exc:
                    outcome = exc
                else:
                    changed |= touched
                outcomes.append(outcome)
            return outcomes

        try:
            outcomes = await self._run_write(together, brief=True)
        except Exception as exc:  # a vanished folder, a hook's refusal...: one savepoint per delivery
            log.debug("group commit of %d deliveries redone one by one: %s", len(batch), exc)
            try:
                outcomes = await self._run_write(one_by_one, brief=True)
            except Exception as exc:
                outcomes = [exc] * len(batch)
        for request, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, DeliveryResult) and outcome.blob_id is not None:
                request.done.set_result(outcome)
                continue
            try:  # before the caller hears: it may look for the file, or reuse its name
                await self.discard(request.prepared)
            except OSError as exc:  # an orphan file is harmless (store check --gc); a stuck caller is not
                log.warning("could not remove unreferenced blob %s: %s", request.prepared.written.path, exc)
            finally:
                if isinstance(outcome, _NothingToKeep):
                    request.done.set_result(outcome.result)
                else:
                    request.done.set_exception(outcome)

    def _deliver_together(
        self, session: Session, changed: _Changed, batch: list[_Pending]
    ) -> list[DeliveryResult | BaseException]:
        """Every delivery of the batch with one statement per step, whatever the batch size: lock the
        recipients, reserve UIDs per folder, insert blobs, messages and usage. Quotas are checked in
        order against running totals, so the batch cannot overrun a limit either. A vanished mailbox or
        folder, or a hook's error, raises: the caller then redoes each delivery in its own savepoint."""
        conn = session.connection()  # Core statements only: no ORM bookkeeping on the hot path
        ids = sorted({m for r in batch for m in r.mailbox_ids})
        rows = {row[0]: row for row in conn.execute(_LOCK_RECIPIENTS, {"ids": ids}).all()}
        if len(rows) != len(ids):
            raise StoreError("NONEXISTENT", "a recipient mailbox no longer exists")
        usage = {mid: [row[2], row[3], row[6]] for mid, row in rows.items()}  # bytes, messages, warned
        results: list[DeliveryResult | BaseException] = []
        accepted: list[list[int]] = []
        for request in batch:
            result, size, taken = DeliveryResult(), request.prepared.written.size, []
            for mid in request.mailbox_ids:
                _mid, address, _u, _c, mq_s, mq_m, _w, dq_s, dq_m = rows[mid]
                limits = quota.effective_limits(
                    mq_s, mq_m, dq_s, dq_m, self.default_storage, self.default_messages
                )
                used, count, warned = usage[mid]
                if request.enforce_quota:
                    resource = quota.exceeded(quota.Usage(used, count), limits, size, 1)
                    if resource:
                        result.over_quota[mid] = resource
                        continue
                    level = quota.warning_level(used + size, limits, self.warn_levels)
                    if level > warned:
                        result.notices.append(Notice(mid, address, level, used + size, limits.storage))
                    usage[mid][2] = level
                usage[mid][0], usage[mid][1] = used + size, count + 1
                taken.append(mid)
            if len(taken) + request.extra_refs == 0:
                results.append(_NothingToKeep(result))
            else:
                results.append(result)
            accepted.append(taken)
        # Reserve consecutive UIDs per (mailbox, folder), in batch order.
        wanted: dict[tuple[int, str], int] = {}
        for request, taken in zip(batch, accepted, strict=True):
            for mid in taken:
                key = (mid, normalize_folder(request.folder))
                wanted[key] = wanted.get(key, 0) + 1
        next_uid: dict[tuple[int, str], tuple[int, int, int, int]] = {}
        notify_here = conn.dialect.name == "postgresql"
        reserve = _RESERVE_UIDS_NOTIFY if notify_here else _RESERVE_UIDS
        for (mid, folder), n in wanted.items():
            bumped = next(iter(reserve.rows(conn, {"mid": mid, "folder": folder, "n": n})), None)
            if bumped is None:
                raise FolderNotFound(folder)
            folder_id, uidnext, modseq, uidvalidity = bumped[:4]
            next_uid[(mid, folder)] = (folder_id, uidnext - n, modseq, uidvalidity)
            if not notify_here:  # (on PostgreSQL ``changed`` only drives the NOTIFY, sent above)
                changed.add((mid, folder_id))
        kept = [(i, r) for i, r in enumerate(batch) if isinstance(results[i], DeliveryResult)]
        if not kept:
            return results
        now = utcnow()
        blob_rows = [self._blob_row(r.prepared, len(accepted[i]) + r.extra_refs, now) for i, r in kept]
        blob_ids = _ADD_BLOB.returned(conn, blob_rows)
        messages = []
        for (i, request), blob_id in zip(kept, blob_ids, strict=True):
            result = results[i]
            assert isinstance(result, DeliveryResult)
            result.blob_id = blob_id
            for mid in accepted[i]:
                key = (mid, normalize_folder(request.folder))
                folder_id, uid, modseq, uidvalidity = next_uid[key]
                next_uid[key] = (folder_id, uid + 1, modseq, uidvalidity)
                result.uids[mid], result.uidvalidity[mid] = uid, uidvalidity
                messages.append(
                    {
                        "folder_id": folder_id,
                        "uid": uid,
                        "modseq": modseq,
                        "blob_id": blob_id,
                        "flags": request.flags,
                        "internal_date": request.internal_date or now,
                        "size": request.prepared.written.size,
                    }
                )
        if messages:
            _ADD_MESSAGES.many(conn, messages)
            touched = sorted({mid for taken in accepted for mid in taken})
            _SET_USAGE.many(
                conn, [{"mid": m, "b": usage[m][0], "n": usage[m][1], "w": usage[m][2]} for m in touched]
            )
        events = []
        for i, request in kept:
            result = results[i]
            assert isinstance(result, DeliveryResult)
            if request.trace is not None:
                remote, asked = request.trace
                for mid in request.mailbox_ids:
                    reply = _receive_reply(result, mid)
                    events.append(event_row(rows[mid][1], "receive", remote, asked, reply))
        if events:
            INSERT_EVENTS.many(conn, events)
        for i, request in kept:
            if request.in_transaction is not None:
                result = results[i]
                assert isinstance(result, DeliveryResult)
                request.in_transaction(session, result.blob_id or 0, result)
        return results

    # ----------------------------------------------------------------- quota warnings

    async def _warning_due(self, session: AsyncSession, mb: Mailbox) -> Notice | None:
        """In the transaction that changed usage: the notice to send, if a warning level was crossed.

        ``mailbox.quota_warned`` remembers the highest level already announced; it goes back down when
        usage falls below a level, so the next crossing warns again, and a notice is never repeated
        while usage stays above its level.
        """
        if not self.warn_levels:
            return None
        limits = await self.limits(session, mb)
        level = quota.warning_level(mb.used_bytes, limits, self.warn_levels)
        due = (
            Notice(mb.id, mb.address, level, mb.used_bytes, limits.storage)
            if level > mb.quota_warned
            else None
        )
        mb.quota_warned = level
        return due

    async def _send_notices(self, notices: Iterable[Notice | None]) -> None:
        for n in notices:
            if n is not None:
                data = quota.warning_message(n.address, n.level, n.used, n.limit)
                await self.deliver(await self.prepare(data), [n.mailbox_id], enforce_quota=False)

    async def update_quota_warning(self, mailbox_id: int) -> None:
        """Re-evaluate the warning state after a limit changed (``caducee quota set``)."""
        async with self.db.write() as session:
            notice = await self._warning_due(session, await self._lock_mailbox(session, mailbox_id))
        await self._send_notices([notice])

    # ----------------------------------------------------------------- mailboxes and folders

    async def create_default_folders(self, session: AsyncSession, mb: Mailbox) -> None:
        """Called in the transaction that creates the mailbox; the folders start subscribed."""
        for name, special in DEFAULT_FOLDERS:
            await self._new_folder(session, mb, name, special)
        await self._subscribe_new(session, mb.id, [name for name, _special in DEFAULT_FOLDERS])

    async def _new_folder(self, session: AsyncSession, mb: Mailbox, name: str, special: str | None) -> Folder:
        mb.last_uidvalidity = max(int(time.time()), mb.last_uidvalidity + 1)
        f = Folder(
            mailbox_id=mb.id,
            name=name,
            special_use=special,
            uidvalidity=mb.last_uidvalidity,
            uidnext=1,
            highestmodseq=1,
            created_at=utcnow(),
        )
        session.add(f)
        await session.flush()
        return f

    async def _folder_names(self, session: AsyncSession, mailbox_id: int) -> set[str]:
        return set(
            (await session.execute(select(Folder.name).where(Folder.mailbox_id == mailbox_id))).scalars()
        )

    async def _subscription_names(self, session: AsyncSession, mailbox_id: int) -> set[str]:
        rows = await session.execute(select(Subscription.name).where(Subscription.mailbox_id == mailbox_id))
        return set(rows.scalars())

    async def _subscribe_new(self, session: AsyncSession, mailbox_id: int, names: Iterable[str]) -> None:
        """New folders start subscribed, as long as the subscription list has room (it is bounded like
        the folders, and names of deleted folders stay in it: RFC 3501 §6.3.6)."""
        have = await self._subscription_names(session, mailbox_id)
        room = self.folder_limits.folders_per_mailbox - len(have)
        new = [n for n in dict.fromkeys(names) if n not in have][: max(room, 0)]
        if new:
            await session.execute(insert(Subscription), [{"mailbox_id": mailbox_id, "name": n} for n in new])

    def _check_count(self, existing: int, adding: int) -> None:
        """Inside the write transaction, after the mailbox row lock: concurrent CREATEs serialise here."""
        limit = self.folder_limits.folders_per_mailbox
        if adding and existing + adding > limit:
            raise StoreError("LIMIT", f"a mailbox holds at most {limit} folders")

    async def folders(self, mailbox_id: int) -> list[FolderInfo]:
        found = await self.db.read_one(queries.folders_of, mailbox_id)
        return sorted(found, key=lambda f: f.name)

    async def existing_folders(self, folder_ids: Iterable[int]) -> set[int]:
        """Which of these folders still exist (IMAP forgets what it keeps in memory for the others)."""
        ids = sorted(set(folder_ids))
        found: set[int] = set()
        async with self.db.read() as session:
            for i in range(0, len(ids), 500):
                rows = await session.execute(select(Folder.id).where(Folder.id.in_(ids[i : i + 500])))
                found.update(rows.scalars())
        return found

    async def listing(self, mailbox_id: int) -> tuple[list[FolderInfo], set[str]]:
        """The folders and the subscribed names (RFC 9051 §6.3.9 LIST), read in one transaction; columns,
        not ORM objects: up to ``folders_per_mailbox`` of them, read on the event loop on SQLite."""
        async with self.db.read() as session:
            folders = await run_core(session, queries.folders_of, mailbox_id)
            return folders, await run_core(session, queries.subscriptions_of, mailbox_id)

    async def folder(self, mailbox_id: int, name: str) -> FolderInfo:
        f = await self.db.read_one(queries.folder_by_name, mailbox_id, normalize_folder(name))
        if f is None:
            raise FolderNotFound(name)
        return f

    async def folder_by_id(self, folder_id: int) -> FolderInfo:
        f = await self.db.read_one(queries.folder_by_id, folder_id)
        if f is None:
            raise StoreError("NONEXISTENT", "the folder no longer exists")
        return f

    async def open_folder(
        self, mailbox_id: int, name: str, viewer: Viewer | None = None
    ) -> tuple[FolderInfo, list[MessageInfo]]:
        """SELECT/EXAMINE: the folder named ``name`` and all its messages in UID order (as ``viewer``
        sees them), one snapshot."""
        async with self.db.read() as session:
            f = await run_core(session, queries.folder_by_name, mailbox_id, normalize_folder(name))
            if f is None:
                raise FolderNotFound(name)
            return f, await _seen(session, f.id, await run_core(session, queries.all_messages, f.id), viewer)

    async def status(
        self,
        mailbox_id: int,
        name: str | None,
        folder_id: int = 0,
        uids: bool = False,
        viewer: Viewer | None = None,
    ) -> tuple[FolderInfo, FolderCounts, list[int]]:
        """STATUS: the folder (by ``name`` in the mailbox, else by ``folder_id``), what it counts (by
        the database, not by loading its messages; UNSEEN by ``viewer``'s own \\Seen when it is one of
        their private flags) and, when asked (RECENT), its UIDs; one snapshot."""
        async with self.db.read() as session:
            if name is not None:
                f = await run_core(session, queries.folder_by_name, mailbox_id, normalize_folder(name))
                if f is None:
                    raise FolderNotFound(name)
            else:
                f = await run_core(session, queries.folder_by_id, folder_id)
                if f is None:
                    raise StoreError("NONEXISTENT", "the folder no longer exists")
            seen_by = viewer.member_id if viewer is not None and "\\Seen" in viewer.private else None
            counts = await run_core(session, queries.folder_counts, f.id, seen_by)
            return f, counts, (await run_core(session, queries.uids, f.id) if uids else [])

    async def create_folder(self, mailbox_id: int, name: str, special_use: str | None = None) -> FolderInfo:
        """Create ``name`` and any missing parents (RFC 9051 §6.3.4); existing name → FolderExists.
        The parents count against ``folders_per_mailbox`` too."""
        name = check_folder_name(name, self.folder_limits)
        async with self._write(brief=True) as (session, changed):
            mb = await self._lock_mailbox(session, mailbox_id)
            existing = await self._folder_names(session, mailbox_id)
            if name in existing:
                raise FolderExists(name)
            parents = _missing_parents(name, existing)
            self._check_count(len(existing), len(parents) + 1)
            for parent in parents:
                await self._new_folder(session, mb, parent, None)
            f = await self._new_folder(session, mb, name, special_use)
            await self._subscribe_new(session, mailbox_id, [*parents, name])
            changed.add((mailbox_id, None))
            return _folder_info(f)

    async def delete_folder(self, mailbox_id: int, name: str) -> None:
        """Delete a folder and its messages (usage freed at once); its children stay (RFC 9051 §6.3.5),
        and so does its subscription (RFC 3501 §6.3.6)."""
        name = normalize_folder(name)
        if name == "INBOX":
            raise StoreError("CANNOT", "INBOX cannot be deleted")
        async with self._write() as (session, changed):
            mb = await self._lock_mailbox(session, mailbox_id)
            f = await self._folder(session, mailbox_id, name, lock=True)
            msgs = list((await session.execute(select(Message).where(Message.folder_id == f.id))).scalars())
            await session.execute(delete(Message).where(Message.folder_id == f.id))
            await session.execute(delete(Expunged).where(Expunged.folder_id == f.id))
            await session.delete(f)
            await session.flush()
            paths = await self._release(session, mb, msgs)
            await self._warning_due(session, mb)
            changed.add((mailbox_id, None))
            changed.add((mailbox_id, f.id))
        await self._remove_files(paths)

    async def rename_folder(self, mailbox_id: int, old: str, new: str) -> None:
        """Rename a folder and its children, and their subscriptions; renaming INBOX moves its messages
        out (RFC 9051 §6.3.6). Every new name obeys the limits, created parents count as folders."""
        old, new = normalize_folder(old), check_folder_name(new, self.folder_limits)
        if new == old or new.startswith(old + SEPARATOR):
            raise StoreError("CANNOT", "a folder cannot be renamed into itself")
        async with self._write() as (session, changed):
            mb = await self._lock_mailbox(session, mailbox_id)
            all_folders = {
                f.name: f
                for f in (
                    await session.execute(select(Folder).where(Folder.mailbox_id == mailbox_id))
                ).scalars()
            }
            if old not in all_folders:
                raise FolderNotFound(old)
            if new in all_folders:
                raise FolderExists(new)
            moved = [] if old == "INBOX" else [n for n in all_folders if _in_subtree(n, old)]
            for fname in moved:
                target = check_folder_name(new + fname[len(old) :], self.folder_limits)
                if target in all_folders:
                    raise FolderExists(target)
            parents = [p for p in _missing_parents(new, all_folders) if p != old]
            self._check_count(len(all_folders), len(parents) + (1 if old == "INBOX" else 0))
            for parent in parents:
                all_folders[parent] = await self._new_folder(session, mb, parent, None)
            if old == "INBOX":
                await self._move_all_out_of_inbox(session, mb, all_folders["INBOX"], new)
            for fname in moved:
                # UIDVALIDITY is kept: it is unique within the mailbox, so (name, UIDVALIDITY, UID)
                # still names one message forever (RFC 9051 §2.3.1.1).
                f = all_folders[fname]
                f.name = new + fname[len(old) :]
                changed.add((mailbox_id, f.id))
            await self._rename_subscriptions(session, mailbox_id, old, new)
            await self._subscribe_new(session, mailbox_id, [*parents, new] if old == "INBOX" else parents)
            changed.add((mailbox_id, None))

    async def _rename_subscriptions(self, session: AsyncSession, mailbox_id: int, old: str, new: str) -> None:
        """The subscriptions of a renamed subtree follow it (INBOX's stay: INBOX is not renamed)."""
        if old == "INBOX":
            return
        have = await self._subscription_names(session, mailbox_id)
        moving = [n for n in have if _in_subtree(n, old)]
        if not moving:
            return
        await session.execute(
            delete(Subscription).where(Subscription.mailbox_id == mailbox_id, Subscription.name.in_(moving))
        )
        renamed = {new + n[len(old) :] for n in moving} - have
        if renamed:
            await session.execute(
                insert(Subscription), [{"mailbox_id": mailbox_id, "name": n} for n in renamed]
            )

    async def _move_all_out_of_inbox(
        self, session: AsyncSession, mb: Mailbox, inbox: Folder, new: str
    ) -> None:
        target = await self._new_folder(session, mb, new, None)
        msgs = list(
            (
                await session.execute(
                    select(Message).where(Message.folder_id == inbox.id).order_by(Message.uid)
                )
            ).scalars()
        )
        if not msgs:
            return
        first, modseq = await session.run_sync(_bump, target, len(msgs))
        _, expunge_modseq = await session.run_sync(_bump, inbox)
        for i, m in enumerate(msgs):
            session.add(Expunged(folder_id=inbox.id, uid=m.uid, modseq=expunge_modseq))
            m.folder_id, m.uid, m.modseq = target.id, first + i, modseq
        await session.flush()

    async def subscribe(self, mailbox_id: int, name: str, subscribed: bool) -> None:
        """SUBSCRIBE (an existing folder, while the list has room) or UNSUBSCRIBE (a subscribed name,
        even of a deleted folder; an existing folder that is not subscribed is fine) (RFC 9051 §6.3.7-8)."""
        name = normalize_folder(name)
        async with self._write(brief=True) as (session, changed):
            await self._lock_mailbox(session, mailbox_id)
            have = await self._subscription_names(session, mailbox_id)
            if subscribed:
                await self._folder(session, mailbox_id, name)
                if name not in have:
                    if len(have) >= self.folder_limits.folders_per_mailbox:
                        raise StoreError(
                            "LIMIT", f"at most {self.folder_limits.folders_per_mailbox} subscriptions"
                        )
                    await session.execute(insert(Subscription), [{"mailbox_id": mailbox_id, "name": name}])
            elif name in have:
                await session.execute(
                    delete(Subscription).where(
                        Subscription.mailbox_id == mailbox_id, Subscription.name == name
                    )
                )
            else:
                await self._folder(session, mailbox_id, name)
            changed.add((mailbox_id, None))

    # ----------------------------------------------------------------- messages

    async def snapshot(
        self, folder_id: int, viewer: Viewer | None = None
    ) -> tuple[FolderInfo, list[MessageInfo]]:
        """The folder and all its messages in UID order (as ``viewer`` sees them), read in one
        consistent transaction."""
        async with self.db.read() as session:
            f = await run_core(session, queries.folder_by_id, folder_id)
            if f is None:
                raise StoreError("NONEXISTENT", "the folder no longer exists")
            return f, await _seen(
                session, folder_id, await run_core(session, queries.all_messages, folder_id), viewer
            )

    async def messages(
        self, folder_id: int, uids: Iterable[int], viewer: Viewer | None = None
    ) -> list[MessageInfo]:
        """The current state of some messages in UID order (IMAP FETCH/STORE read only what they need),
        as ``viewer`` sees them."""
        if viewer is None:  # one statement per span of UIDs, each message's row read once
            return await self.db.read_one(queries.messages, folder_id, sorted(set(uids)))
        async with self.db.read() as session:
            infos = await run_core(session, queries.messages, folder_id, sorted(set(uids)))
            return await _seen(session, folder_id, infos, viewer)

    async def messages_with_metas(
        self, folder_id: int, uids: Iterable[int], viewer: Viewer | None = None
    ) -> tuple[list[MessageInfo], dict[int, dict[str, Any]]]:
        """``messages`` and ``blob_metas`` of them in one read (IMAP FETCH of envelopes or bodies)."""
        if viewer is None:  # one statement per span of UIDs, each message's row read once
            rows = await self.db.read_one(queries.messages_with_metas, folder_id, sorted(set(uids)))
            return [m for m, _ in rows], {m.blob_id: _meta_cached(m.blob_id, meta) for m, meta in rows}
        async with self.db.read() as session:
            rows = await run_core(session, queries.messages_with_metas, folder_id, sorted(set(uids)))
            infos = await _seen(session, folder_id, [m for m, _ in rows], viewer)
        return infos, {m.blob_id: _meta_cached(m.blob_id, meta) for m, meta in rows}

    async def changes_since(
        self, folder_id: int, modseq: int, viewer: Viewer | None = None
    ) -> tuple[FolderInfo, list[MessageInfo], list[int]]:
        """Messages changed or added after ``modseq`` and UIDs expunged after it (CONDSTORE/QRESYNC).
        Every change to a folder's messages raises its HIGHESTMODSEQ: when that has not moved there is
        nothing more to read (an IMAP NOOP's usual answer). With a ``viewer``, also the messages whose
        private flags that member changed after ``modseq``, and not those another member changed (a
        private change leaves the message's own modseq alone). Whether it moved is asked alone first,
        outside a transaction (``read_one``): the usual answer, after every command, is no."""
        f = await self.db.read_one(queries.folder_by_id, folder_id)
        if f is not None and f.highestmodseq <= modseq:
            return f, [], []
        async with self.db.read() as session:
            f = await run_core(session, queries.folder_by_id, folder_id)
            if f is None:
                raise StoreError("NONEXISTENT", "the folder no longer exists")
            if f.highestmodseq <= modseq:
                return f, [], []
            changed, gone = await run_core(session, queries.changed_since, folder_id, modseq)
            if viewer is not None:
                have = {m.uid for m in changed}
                mine = await run_core(session, queries.own_changed_since, folder_id, viewer.member_id, modseq)
                extra = [uid for uid in mine if uid not in have]
                if extra:
                    more = await run_core(session, queries.messages, folder_id, extra)
                    changed = sorted([*changed, *more], key=lambda m: m.uid)
                changed = await _seen(session, folder_id, changed, viewer)
            return f, changed, gone

    async def append(
        self, mailbox_id: int, folder: str, items: Sequence[tuple[bytes, Iterable[str], dt.datetime | None]]
    ) -> tuple[int, list[int]]:
        """Append messages (MULTIAPPEND: all or none); returns (UIDVALIDITY, UIDs) for APPENDUID.

        One message (the usual APPEND: a draft, a sent copy) joins the delivery group commit."""
        if len(items) == 1:
            data, flags, date = items[0]
            result = await self.deliver(
                await self.prepare(data), [mailbox_id], folder, flags, internal_date=date
            )
            if mailbox_id in result.over_quota:
                raise quota.OverQuota(await self._address(mailbox_id), result.over_quota[mailbox_id])
            return result.uidvalidity[mailbox_id], [result.uids[mailbox_id]]
        prepared = [await self.prepare(data) for data, _f, _d in items]
        try:
            async with self._write(brief=True) as (session, changed):
                mb = await self._lock_mailbox(session, mailbox_id)
                f = await self._folder(session, mailbox_id, folder, lock=True)
                blob_ids = [await self._insert_blob(session, p, 1) for p in prepared]
                await self._charge(
                    session, mb, [(b, p.written.size) for b, p in zip(blob_ids, prepared, strict=True)]
                )
                notice = await self._warning_due(session, mb)
                first, modseq = await session.run_sync(_bump, f, len(items))
                for i, ((_data, flags, date), p, b) in enumerate(zip(items, prepared, blob_ids, strict=True)):
                    session.add(
                        Message(
                            folder_id=f.id,
                            uid=first + i,
                            modseq=modseq,
                            blob_id=b,
                            flags=flags_to_text(flags),
                            internal_date=date or utcnow(),
                            size=p.written.size,
                        )
                    )
                changed.add((mailbox_id, f.id))
                outcome = f.uidvalidity, list(range(first, first + len(items)))
        except BaseException:
            for p in prepared:
                await self.discard(p)
            raise
        await self._send_notices([notice])
        return outcome

    async def _address(self, mailbox_id: int) -> str:
        async with self.db.read() as session:
            return (
                await session.execute(select(Mailbox.address).where(Mailbox.id == mailbox_id))
            ).scalar_one()

    async def copy(
        self,
        folder_id: int,
        uids: Iterable[int],
        dest: str,
        move: bool = False,
        *,
        into: int | None = None,
        viewer: Viewer | None = None,
        dest_viewer: Viewer | None = None,
        keep: Callable[[frozenset[str]], Iterable[str]] | None = None,
    ) -> tuple[int, list[tuple[int, int]]]:
        """COPY or MOVE (RFC 6851: atomic, the source UIDs are expunged in the same transaction), into
        another folder or the same one, of the source's mailbox or of mailbox ``into`` (between one's
        own folders and a shared mailbox's: the quota counted there, both mailbox rows locked in id
        order).

        ``viewer`` / ``dest_viewer``: the member copying, when the source / destination is a shared
        mailbox; the private flags they see go with the copy as theirs (or, into their own mailbox, as
        the message's). ``keep`` filters the flags a copy into another mailbox keeps (RFC 4314 §4).
        Returns (destination UIDVALIDITY, [(source uid, destination uid)]) for COPYUID. Brief for up
        to ``_BRIEF_STORE`` messages.
        """
        wanted = sorted(set(uids))
        async with self._write(brief=len(wanted) <= _BRIEF_STORE) as (session, changed):
            src = await session.run_sync(_folder_by_id, folder_id)
            target = into if into is not None else src.mailbox_id
            across = target != src.mailbox_id
            locked = {i: await self._lock_mailbox(session, i) for i in sorted({src.mailbox_id, target})}
            mb, dst_mb = locked[src.mailbox_id], locked[target]
            src = await session.run_sync(_folder_by_id, folder_id, True)
            dst = await self._folder(session, target, dest, lock=True)
            msgs = await session.run_sync(_messages, folder_id, wanted)
            if not msgs:
                return dst.uidvalidity, []
            if not move or across:
                await self._charge(session, dst_mb, [(m.blob_id, m.size) for m in msgs])
            notice = await self._warning_due(session, dst_mb)
            # Into the source folder itself (``dst`` is then ``src``), MOVE renumbers the messages
            # with new UIDs and leaves tombstones for the old ones: COPY + EXPUNGE (RFC 6851 §3.3).
            first, modseq = await session.run_sync(_bump, dst, len(msgs))
            pairs = []
            paths: list[str] = []
            if move and not across:
                _, src_modseq = await session.run_sync(_bump, src)
                for i, m in enumerate(msgs):
                    session.add(Expunged(folder_id=src.id, uid=m.uid, modseq=src_modseq))
                    pairs.append((m.uid, first + i))
                    m.folder_id, m.uid, m.modseq = dst.id, first + i, modseq  # member rows follow the id
                changed.add((mb.id, src.id))
            else:
                own = (
                    await run_core(
                        session, queries.own_flags, folder_id, viewer.member_id, wanted[0], wanted[-1]
                    )
                    if viewer is not None
                    else {}
                )
                private = dest_viewer.private if dest_viewer is not None else frozenset()
                copies: list[tuple[Message, frozenset[str]]] = []
                for i, m in enumerate(msgs):
                    if across:
                        seen = _seen_by(_info(m), own.get(m.uid), viewer).flags
                        seen = frozenset(keep(seen)) if keep is not None else seen
                        shared_text, mine = flags_to_text(seen - private), seen & private
                    else:  # the message's flags as they are, the copier's private ones as theirs
                        row = own.get(m.uid)
                        shared_text, mine = (
                            m.flags,
                            flags_from_text(row[0]) & private if row else frozenset(),
                        )
                    new = Message(
                        folder_id=dst.id,
                        uid=first + i,
                        modseq=modseq,
                        blob_id=m.blob_id,
                        flags=shared_text,
                        internal_date=m.internal_date,
                        size=m.size,
                    )
                    session.add(new)
                    copies.append((new, mine))
                    pairs.append((m.uid, first + i))
                for blob_id in {m.blob_id for m in msgs}:
                    await self.add_blob_refs(session, blob_id, sum(1 for m in msgs if m.blob_id == blob_id))
                await session.flush()
                if dest_viewer is not None:
                    for new, mine in copies:
                        if mine:
                            session.add(
                                MemberFlags(
                                    message_id=new.id,
                                    member_id=dest_viewer.member_id,
                                    flags=flags_to_text(mine),
                                    modseq=modseq,
                                )
                            )
                if move:  # across mailboxes: the copies hold their own references, the source is freed
                    paths = await self._remove_messages(session, mb, src, msgs)
                    await self._warning_due(session, mb)
                    changed.add((mb.id, src.id))
            changed.add((dst_mb.id, dst.id))
            await session.flush()
            outcome = dst.uidvalidity, pairs
        await self._remove_files(paths)
        await self._send_notices([notice])
        return outcome

    async def set_flags(
        self,
        folder_id: int,
        uids: Iterable[int],
        mode: Literal["add", "remove", "replace"],
        flags: Iterable[str],
        unchangedsince: int | None = None,
        viewer: Viewer | None = None,
    ) -> FlagChange:
        """STORE flags; messages modified after ``unchangedsince`` are left alone (RFC 7162 §3.1.3).
        A STORE of up to ``_BRIEF_STORE`` messages (a client marking what it read) is a brief
        transaction; ``1:*`` on a large folder runs in the writer thread.

        With a ``viewer`` (a member in a shared mailbox) their private flags change in their own rows,
        stamped with the folder's next modseq, and the message's modseq moves only when a shared flag
        does: the other members are not told of a change that is not theirs."""
        wanted = sorted(set(uids))
        flag_set = set(flags)
        private = viewer.private if viewer is not None else frozenset()

        def work(session: Session, changed: _Changed) -> FlagChange:
            # Flags change no usage: the folder's row lock alone orders concurrent STOREs.
            conn = session.connection()
            locked = queries.lock_folder(conn, folder_id)
            if locked is None:
                raise StoreError("NONEXISTENT", "the folder no longer exists")
            modified: list[int] = []
            rows = queries.message_rows(conn, folder_id, wanted)
            own = (
                queries.own_flags(conn, folder_id, viewer.member_id, wanted[0], wanted[-1])
                if viewer is not None and rows
                else {}
            )
            # (row, the message's new flags text, the member's new private flags text; None: unchanged)
            todo: list[tuple[Sequence[Any], str | None, str | None]] = []
            for row in rows:
                uid, mine_row = row[1], own.get(row[1])
                if (
                    unchangedsince is not None
                    and _seen_by(queries.row_info(row), mine_row, viewer).modseq > unchangedsince
                ):
                    modified.append(uid)
                    continue
                shared = flags_from_text(row[3])
                # The ORG's own value of a private flag stays in the message, untouched by members.
                new_shared = _apply(mode, shared - private, flag_set - private) | (shared & private)
                mine = flags_from_text(mine_row[0]) & private if mine_row is not None else frozenset()
                new_mine = _apply(mode, mine, flag_set & private)
                if new_shared != shared or new_mine != mine:
                    todo.append(
                        (
                            row,
                            flags_to_text(new_shared) if new_shared != shared else None,
                            flags_to_text(new_mine) if new_mine != mine else None,
                        )
                    )
            if not todo:
                return FlagChange([], modified)
            modseq = queries.bump_folder(conn, folder_id)
            queries.set_flags(conn, [(row[0], text) for row, text, _ in todo if text is not None], modseq)
            if viewer is not None:
                ours = [(row[0], text, row[1] in own) for row, _, text in todo if text is not None]
                queries.set_own_flags(conn, viewer.member_id, ours, modseq)
            changed.add((locked[0], folder_id))
            return FlagChange(
                [
                    _seen_by(
                        queries.row_info(row, new_shared, None if new_shared is None else modseq),
                        own.get(row[1]) if new_mine is None else (new_mine, modseq),
                        viewer,
                    )
                    for row, new_shared, new_mine in todo
                ],
                modified,
            )

        return await self._run_write(work, brief=len(wanted) <= _BRIEF_STORE)

    async def expunge(self, folder_id: int, uids: Iterable[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (only among ``uids`` when given, RFC 4315 UID EXPUNGE);
        brief when ``uids`` names at most ``_BRIEF_STORE`` messages."""
        wanted = sorted(set(uids)) if uids is not None else None
        if wanted is None:  # brief when few messages are flagged (read first; only a cost bound)
            async with self.db.read() as session:
                brief = len(await run_core(session, queries.deleted_rows, folder_id)) <= _BRIEF_STORE
        else:
            brief = len(wanted) <= _BRIEF_STORE

        def work(session: Session, changed: _Changed) -> tuple[list[int], list[str]]:
            conn = session.connection()
            f = queries.folder_by_id(conn, folder_id)
            if f is None:
                raise StoreError("NONEXISTENT", "the folder no longer exists")
            mb = queries.lock_mailbox(conn, f.mailbox_id)  # the mailbox first, then the folder
            if mb is None or queries.lock_folder(conn, folder_id) is None:
                raise StoreError("NONEXISTENT", "the folder no longer exists")
            candidates = (  # without a UID set, the database narrows to rows naming the flag
                queries.message_rows(conn, folder_id, wanted)
                if wanted is not None
                else queries.deleted_rows(conn, folder_id)
            )
            gone = [r for r in candidates if "\\Deleted" in flags_from_text(r[3])]
            if not gone:
                return [], []
            modseq = queries.bump_folder(conn, folder_id)
            queries.remove_messages(conn, folder_id, gone, modseq)
            paths = self._release_rows(conn, f.mailbox_id, mb, gone)
            changed.add((f.mailbox_id, folder_id))
            return [r[1] for r in gone], paths

        gone, paths = await self._run_write(work, brief=brief)
        await self._remove_files(paths)
        return gone

    async def _remove_messages(
        self, session: AsyncSession, mb: Mailbox, f: Folder, gone: list[Message]
    ) -> list[str]:
        """Expunge these ORM rows (a MOVE out of the mailbox); ``_release_rows`` for EXPUNGE's Core rows."""
        _, modseq = await session.run_sync(_bump, f)
        for m in gone:
            session.add(Expunged(folder_id=f.id, uid=m.uid, modseq=modseq))
        ids = [m.id for m in gone]
        for i in range(0, len(ids), 500):
            await session.execute(delete(Message).where(Message.id.in_(ids[i : i + 500])))
        await session.flush()
        return await self._release(session, mb, gone)

    def _release_rows(
        self, conn: Connection, mailbox_id: int, mb: Sequence[Any], removed: Sequence[Sequence[Any]]
    ) -> list[str]:
        """``_release`` for message rows already deleted (``queries.remove_messages``) from the mailbox
        locked as ``mb`` (``queries.lock_mailbox``): usage, references, the warning level lowered.
        Returns the files to delete after commit."""
        _address, used_bytes, used_messages, _warned, mq_s, mq_m, dq_s, dq_m = mb
        used_messages -= len(removed)
        counts: dict[int, int] = {}
        for row in removed:
            counts[row[6]] = counts.get(row[6], 0) + 1
        to_delete: list[str] = []
        for blob_id, count in counts.items():
            released = queries.release_blob(conn, blob_id, count)
            if released is None:
                continue
            size, path, gone = released
            if not queries.holds_blob(conn, mailbox_id, blob_id):
                used_bytes -= size
            if gone and path is not None:
                to_delete.append(path)
        limits = quota.effective_limits(mq_s, mq_m, dq_s, dq_m, self.default_storage, self.default_messages)
        warned = quota.warning_level(used_bytes, limits, self.warn_levels) if self.warn_levels else _warned
        queries.set_usage(conn, mailbox_id, used_bytes, used_messages, warned)
        return to_delete

    async def usage(self, mailbox_id: int) -> tuple[quota.Usage, quota.Limits]:
        async with self.db.read() as session:
            mb = await session.get(Mailbox, mailbox_id)
            if mb is None:
                raise StoreError("NONEXISTENT", f"no mailbox with id {mailbox_id}")
            return quota.Usage(mb.used_bytes, mb.used_messages), await self.limits(session, mb)

    async def recount(self, mailbox_id: int) -> tuple[quota.Usage, quota.Usage]:
        """Rebuild usage from the rows; returns (stored before, recomputed) so drift can be reported."""
        async with self._write() as (session, _changed):
            mb = await self._lock_mailbox(session, mailbox_id)
            before = quota.Usage(mb.used_bytes, mb.used_messages)
            in_mailbox = (
                select(Message.blob_id, Message.size).join(Folder).where(Folder.mailbox_id == mailbox_id)
            )
            count = (
                await session.execute(select(func.count()).select_from(in_mailbox.subquery()))
            ).scalar_one()
            distinct = select(Message.blob_id).join(Folder).where(Folder.mailbox_id == mailbox_id).distinct()
            size = (
                await session.execute(
                    select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.id.in_(distinct))
                )
            ).scalar_one()
            # Large files sent by link count for their sender until they expire (mailserver/large_files.py).
            size += (
                await session.execute(
                    select(func.coalesce(func.sum(LargeFile.size), 0)).where(
                        LargeFile.mailbox_id == mailbox_id
                    )
                )
            ).scalar_one()
            mb.used_bytes, mb.used_messages = int(size), int(count)
            return before, quota.Usage(int(size), int(count))

    async def collect_orphans(self, older_than: float = 3600.0, dry_run: bool = False) -> list[str]:
        """Remove blob files no row references (left by a crash between write and commit).

        Only files older than ``older_than`` seconds are touched: a younger one may belong to a delivery
        whose transaction has not committed yet.
        """
        async with self.db.read() as session:
            known = set((await session.execute(select(Blob.path).where(Blob.path.is_not(None)))).scalars())
        cutoff = time.time() - older_than

        def sweep() -> list[str]:
            found = []
            for rel in self.blobs.all_paths():
                path = self.blobs.root / rel
                if rel not in known and path.stat().st_mtime < cutoff:
                    found.append(rel)
                    if not dry_run:
                        self.blobs.remove(rel)
            return found

        return await asyncio.to_thread(sweep)

    async def missing_blobs(self) -> list[str]:
        """Rows whose file is missing: must always be empty (files are durable before rows commit)."""
        async with self.db.read() as session:
            paths = list((await session.execute(select(Blob.path).where(Blob.path.is_not(None)))).scalars())
        return await asyncio.to_thread(lambda: [p for p in paths if not self.blobs.exists(p)])

    async def delete_mailbox_content(self, session: AsyncSession, mailbox_id: int) -> list[str]:
        """In the caller's transaction, drop every folder and message; returns the files to delete."""
        mb = await self._lock_mailbox(session, mailbox_id)
        folder_ids = list(
            (await session.execute(select(Folder.id).where(Folder.mailbox_id == mailbox_id))).scalars()
        )
        msgs = list(
            (await session.execute(select(Message).where(Message.folder_id.in_(folder_ids)))).scalars()
        )
        await session.execute(delete(Message).where(Message.folder_id.in_(folder_ids)))
        await session.execute(delete(Expunged).where(Expunged.folder_id.in_(folder_ids)))
        await session.execute(delete(Folder).where(Folder.mailbox_id == mailbox_id))
        await session.execute(delete(Subscription).where(Subscription.mailbox_id == mailbox_id))
        await session.flush()
        return await self._release(session, mb, msgs)


class _NothingToKeep(Exception):
    """Internal: every recipient was refused, so the delivery's savepoint is rolled back."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__("no recipient accepted the message")
        self.result = result


@dataclass
class _Pending:
    """A delivery waiting for the next group commit."""

    prepared: PreparedBlob
    mailbox_ids: tuple[int, ...]
    folder: str
    flags: str
    extra_refs: int
    in_transaction: InTransaction | None
    enforce_quota: bool
    trace: tuple[str, str] | None
    internal_date: dt.datetime | None
    done: asyncio.Future[DeliveryResult]


_BATCH = 64
_BRIEF_STORE = 100

# The delivery hot path's statements, built once (SQLAlchemy then reuses their compiled form).
_LOCK_RECIPIENTS = (
    select(
        Mailbox.id,
        Mailbox.address,
        Mailbox.used_bytes,
        Mailbox.used_messages,
        Mailbox.quota_storage,
        Mailbox.quota_messages,
        Mailbox.quota_warned,
        Domain.quota_storage,
        Domain.quota_messages,
    )
    .join(Domain, Domain.id == Mailbox.domain_id)
    .where(Mailbox.id.in_(bindparam("ids", expanding=True)))
    .order_by(Mailbox.id)
    .with_for_update(of=Mailbox)
)
_BLOB_COLUMNS = ("path", "data", "size", "sha256", "refcount", "meta", "created_at")
_INSERT_BLOB = (
    insert(Blob.__table__)
    .values({c: bindparam(c) for c in _BLOB_COLUMNS})
    .returning(Blob.id, sort_by_parameter_order=True)
)
_ADD_BLOB = Prepared(_INSERT_BLOB)
_MESSAGE_COLUMNS = ("folder_id", "uid", "modseq", "blob_id", "flags", "internal_date", "size")
_ADD_MESSAGES = Prepared(insert(Message.__table__).values({c: bindparam(c) for c in _MESSAGE_COLUMNS}))
_RESERVE = (
    update(Folder.__table__)
    .where(Folder.mailbox_id == bindparam("mid"), Folder.name == bindparam("folder"))
    .values(uidnext=Folder.uidnext + bindparam("n"), highestmodseq=Folder.highestmodseq + 1)
)
_RESERVE_UIDS = Prepared(
    _RESERVE.returning(Folder.id, Folder.uidnext, Folder.highestmodseq, Folder.uidvalidity)
)
# PostgreSQL: the same UPDATE sends the folder's NOTIFY (at commit), one round trip fewer per batch;
# its payload is ``_pg_notify``'s, ``mailbox:folder``.
_RESERVE_UIDS_NOTIFY = Prepared(
    _RESERVE.returning(
        Folder.id,
        Folder.uidnext,
        Folder.highestmodseq,
        Folder.uidvalidity,
        func.pg_notify(CHANNEL, cast(Folder.mailbox_id, String) + ":" + cast(Folder.id, String)),
    )
)
_SET_USAGE = Prepared(
    update(Mailbox.__table__)
    .where(Mailbox.id == bindparam("mid"))
    .values(used_bytes=bindparam("b"), used_messages=bindparam("n"), quota_warned=bindparam("w"))
)
