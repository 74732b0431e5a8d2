"""The IMAP hot path's statements (issue 14): what SELECT, STATUS, FETCH, STORE, EXPUNGE, LIST and
each command's catch-up (``changes_since``) read and write, as SQLAlchemy Core statements built once.

Under the IMAP benchmark's load the server is CPU-bound on its one core, and the ORM (statement
compilation, identity map, row loading into objects) was 36–43 % of its samples. These functions
take the transaction's ``Session`` (so they run inside ``Database.read``/``run_write`` on either
engine, through ``AsyncSession.run_sync`` on PostgreSQL) and work on its connection: the
statements run straight on the DB-API cursor (:class:`~mailserver.db.prepared.Prepared`: sqlite3's, or
SQLAlchemy's asyncpg adapter); rows come back as tuples or the small frozen dataclasses below.
Statements bound to a UID set read the span between its first and last UID and keep the wanted ones
(an IMAP set is nearly always a range), so each has one compiled form. The rules (which messages a
STORE changes, usage, MODSEQ, what a member of a shared mailbox sees of their own private flags)
stay in :mod:`mailserver.store.store`; only the SQL lives here, a member's rows (``member_flags``)
included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from mailserver.db.models import (
    AppPassword,
    AuthFailure,
    Blob,
    Domain,
    Expunged,
    Folder,
    Mailbox,
    MemberFlags,
    Membership,
    Message,
    Subscription,
)
from mailserver.db.prepared import Prepared

_F, _M, _B, _E = Folder.__table__, Message.__table__, Blob.__table__, Expunged.__table__
_MB, _D, _S, _MS = Mailbox.__table__, Domain.__table__, Subscription.__table__, Membership.__table__
_MF = MemberFlags.__table__

# A UID set whose span holds more than this many UIDs beyond the wanted ones is read in chunks by IN.
_SPAN_SLACK = 256
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class FolderInfo:
    id: int
    mailbox_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int


@dataclass(frozen=True, slots=True)
class MessageInfo:
    uid: int
    modseq: int
    flags: frozenset[str]
    size: int
    internal_date: dt.datetime
    blob_id: int


def flags_to_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(set(flags)))


def flags_from_text(value: str) -> frozenset[str]:
    return frozenset(value.split()) if value else frozenset()


# The transaction a function runs in: ``run_write``'s ``Session``, or a connection (``run_core``).
Tx = Session | Connection


def _conn(session: Tx) -> Connection:
    """Functions here take the transaction's ``Session`` (``run_write``'s work) or its connection
    (``run_core``)."""
    return session if isinstance(session, Connection) else session.connection()


# --------------------------------------------------------------------------- folders

_FOLDER_COLUMNS = (
    _F.c.id,
    _F.c.mailbox_id,
    _F.c.name,
    _F.c.special_use,
    _F.c.uidvalidity,
    _F.c.uidnext,
    _F.c.highestmodseq,
)
_FOLDER_BY_ID = Prepared(select(*_FOLDER_COLUMNS).where(_F.c.id == bindparam("id")))
_FOLDER_BY_NAME = Prepared(
    select(*_FOLDER_COLUMNS).where(_F.c.mailbox_id == bindparam("mid"), _F.c.name == bindparam("name"))
)
_FOLDERS_OF = Prepared(select(*_FOLDER_COLUMNS).where(_F.c.mailbox_id == bindparam("mid")))
_SUBSCRIPTIONS_OF = Prepared(select(_S.c.name).where(_S.c.mailbox_id == bindparam("mid")))
_MEMBERSHIPS_OF = Prepared(
    select(_MB.c.id, _MB.c.address, _MS.c.rights)
    .join(_MS, _MS.c.mailbox_id == _MB.c.id)
    .where(_MS.c.member_id == bindparam("mid"))
    .order_by(_MB.c.address)
)


def folder_by_id(session: Tx, folder_id: int) -> FolderInfo | None:
    rows = _FOLDER_BY_ID.rows(_conn(session), {"id": folder_id})
    return FolderInfo(*rows[0]) if rows else None


def folder_by_name(session: Tx, mailbox_id: int, name: str) -> FolderInfo | None:
    rows = _FOLDER_BY_NAME.rows(_conn(session), {"mid": mailbox_id, "name": name})
    return FolderInfo(*rows[0]) if rows else None


def folders_of(session: Tx, mailbox_id: int) -> list[FolderInfo]:
    return [FolderInfo(*row) for row in _FOLDERS_OF.rows(_conn(session), {"mid": mailbox_id})]


def subscriptions_of(session: Tx, mailbox_id: int) -> set[str]:
    return {row[0] for row in _SUBSCRIPTIONS_OF.rows(_conn(session), {"mid": mailbox_id})}


def memberships_of(session: Tx, member_id: int) -> list[tuple[int, str, str]]:
    """(mailbox id, address, rights) of the shared mailboxes ``member_id`` belongs to, by address."""
    return [tuple(row) for row in _MEMBERSHIPS_OF.rows(_conn(session), {"mid": member_id})]  # type: ignore[misc]


# --------------------------------------------------------------------------- messages

_MESSAGE_COLUMNS = (_M.c.uid, _M.c.modseq, _M.c.flags, _M.c.size, _M.c.internal_date, _M.c.blob_id)
_IN_FOLDER = _M.c.folder_id == bindparam("fid")
_SPAN = and_(_IN_FOLDER, _M.c.uid >= bindparam("lo"), _M.c.uid <= bindparam("hi"))
_ALL_MESSAGES = Prepared(select(*_MESSAGE_COLUMNS).where(_IN_FOLDER).order_by(_M.c.uid))
_SPAN_MESSAGES = Prepared(select(*_MESSAGE_COLUMNS).where(_SPAN).order_by(_M.c.uid))
_LISTED_MESSAGES = (
    select(*_MESSAGE_COLUMNS)
    .where(_IN_FOLDER, _M.c.uid.in_(bindparam("uids", expanding=True)))
    .order_by(_M.c.uid)
)
_WITH_META = select(*_MESSAGE_COLUMNS, _B.c.meta).join(_B, _B.c.id == _M.c.blob_id)
_SPAN_WITH_META = Prepared(_WITH_META.where(_SPAN).order_by(_M.c.uid))
_LISTED_WITH_META = _WITH_META.where(_IN_FOLDER, _M.c.uid.in_(bindparam("uids", expanding=True))).order_by(
    _M.c.uid
)
_CHANGED_SINCE = Prepared(
    select(*_MESSAGE_COLUMNS).where(_IN_FOLDER, _M.c.modseq > bindparam("modseq")).order_by(_M.c.uid)
)
_EXPUNGED_SINCE = Prepared(
    select(_E.c.uid)
    .where(_E.c.folder_id == bindparam("fid"), _E.c.modseq > bindparam("modseq"))
    .order_by(_E.c.uid)
)
# The rows a write changes, with their primary key: (id, uid, modseq, flags, size, internal_date, blob_id).
_ROW_COLUMNS = (_M.c.id, *_MESSAGE_COLUMNS)
_SPAN_ROWS = Prepared(select(*_ROW_COLUMNS).where(_SPAN).order_by(_M.c.uid))
_LISTED_ROWS = (
    select(*_ROW_COLUMNS)
    .where(_IN_FOLDER, _M.c.uid.in_(bindparam("uids", expanding=True)))
    .order_by(_M.c.uid)
)
# Rows whose flags name \Deleted (the exact test on the token is the caller's).
_DELETED_ROWS = Prepared(
    select(*_ROW_COLUMNS)
    .where(_IN_FOLDER, _M.c.flags.contains("\\Deleted", autoescape=True))
    .order_by(_M.c.uid)
)


def message_info(row: Sequence[Any]) -> MessageInfo:
    """A ``_MESSAGE_COLUMNS`` row as the protocols see it."""
    uid, modseq, flags, size, internal_date, blob_id = row
    return MessageInfo(uid, modseq, flags_from_text(flags), size, internal_date, blob_id)


def _by_uids(
    conn: Connection, span: Prepared, listed: Any, folder_id: int, uids: Sequence[int], uid_at: int
) -> list[Sequence[Any]]:
    """Rows of ``uids`` (ascending, distinct) in UID order, the UID in column ``uid_at``: one span
    read when the set is nearly a range (what IMAP clients send), else chunks of an IN list."""
    if not uids:
        return []
    lo, hi = uids[0], uids[-1]
    if hi - lo + 1 - len(uids) <= _SPAN_SLACK:
        rows = span.rows(conn, {"fid": folder_id, "lo": lo, "hi": hi})
        if hi - lo + 1 == len(uids):
            return rows
        wanted = set(uids)
        return [r for r in rows if r[uid_at] in wanted]
    out: list[Sequence[Any]] = []
    for i in range(0, len(uids), _CHUNK):
        out.extend(conn.execute(listed, {"fid": folder_id, "uids": list(uids[i : i + _CHUNK])}).all())
    return out


def messages(session: Tx, folder_id: int, uids: Sequence[int]) -> list[MessageInfo]:
    """The messages of ``uids`` (ascending, distinct) that exist, in UID order."""
    rows = _by_uids(_conn(session), _SPAN_MESSAGES, _LISTED_MESSAGES, folder_id, uids, 0)
    return [message_info(r) for r in rows]


def messages_with_metas(session: Tx, folder_id: int, uids: Sequence[int]) -> list[tuple[MessageInfo, str]]:
    """``messages`` with each one's meta JSON (FETCH ENVELOPE, BODYSTRUCTURE, sections): one read."""
    rows = _by_uids(_conn(session), _SPAN_WITH_META, _LISTED_WITH_META, folder_id, uids, 0)
    return [(message_info(r[:6]), r[6]) for r in rows]


def all_messages(session: Tx, folder_id: int) -> list[MessageInfo]:
    return [message_info(r) for r in _ALL_MESSAGES.rows(_conn(session), {"fid": folder_id})]


def changed_since(session: Tx, folder_id: int, modseq: int) -> tuple[list[MessageInfo], list[int]]:
    """Messages changed or added after ``modseq``, and the UIDs expunged after it."""
    conn, values = _conn(session), {"fid": folder_id, "modseq": modseq}
    changed = [message_info(r) for r in _CHANGED_SINCE.rows(conn, values)]
    return changed, [row[0] for row in _EXPUNGED_SINCE.rows(conn, values)]


def message_rows(session: Tx, folder_id: int, uids: Sequence[int]) -> list[Sequence[Any]]:
    """For a write: ``_ROW_COLUMNS`` of the messages of ``uids`` (ascending, distinct)."""
    return _by_uids(_conn(session), _SPAN_ROWS, _LISTED_ROWS, folder_id, uids, 1)


def deleted_rows(session: Tx, folder_id: int) -> list[Sequence[Any]]:
    """For EXPUNGE: ``_ROW_COLUMNS`` of the rows whose flags text names ``\\Deleted``."""
    return _DELETED_ROWS.rows(_conn(session), {"fid": folder_id})


def row_info(row: Sequence[Any], flags: str | None = None, modseq: int | None = None) -> MessageInfo:
    """A ``_ROW_COLUMNS`` row as ``MessageInfo``, with new flags and MODSEQ when given."""
    _id, uid, old_modseq, old_flags, size, internal_date, blob_id = row
    return MessageInfo(
        uid,
        old_modseq if modseq is None else modseq,
        flags_from_text(old_flags if flags is None else flags),
        size,
        internal_date,
        blob_id,
    )


# --------------------------------------------------------------------------- a member's private flags

# A member's row of a message (``[imap] private_flags`` in a shared mailbox), for an outer join.
_OWN_ROW = and_(_MF.c.message_id == _M.c.id, _MF.c.member_id == bindparam("member"))
_OWN_IN_SPAN = Prepared(select(_M.c.uid, _MF.c.flags, _MF.c.modseq).join(_MF, _OWN_ROW).where(_SPAN))
_OWN_CHANGED_SINCE = Prepared(
    select(_M.c.uid)
    .join(_MF, _OWN_ROW)
    .where(_IN_FOLDER, _MF.c.modseq > bindparam("modseq"))
    .order_by(_M.c.uid)
)
_ADD_OWN = Prepared(
    insert(_MF).values(
        message_id=bindparam("o_message"),
        member_id=bindparam("o_member"),
        flags=bindparam("o_flags"),
        modseq=bindparam("o_modseq"),
    )
)
_SET_OWN = Prepared(
    update(_MF)
    .where(_MF.c.message_id == bindparam("o_message"), _MF.c.member_id == bindparam("o_member"))
    .values(flags=bindparam("o_flags"), modseq=bindparam("o_modseq"))
)


def own_flags(session: Tx, folder_id: int, member_id: int, lo: int, hi: int) -> dict[int, tuple[str, int]]:
    """The member's rows of the folder's messages with UIDs ``lo``…``hi``: (flags text, modseq) by UID."""
    rows = _OWN_IN_SPAN.rows(_conn(session), {"fid": folder_id, "member": member_id, "lo": lo, "hi": hi})
    return {uid: (flags, modseq) for uid, flags, modseq in rows}


def own_changed_since(session: Tx, folder_id: int, member_id: int, modseq: int) -> list[int]:
    """UIDs (ascending) of the messages whose private flags the member changed after ``modseq``."""
    values = {"fid": folder_id, "member": member_id, "modseq": modseq}
    return [row[0] for row in _OWN_CHANGED_SINCE.rows(_conn(session), values)]


def set_own_flags(session: Tx, member_id: int, changes: Sequence[tuple[int, str, bool]], modseq: int) -> None:
    """(message id, the member's new flags text, whether their row exists) each, stamped ``modseq``."""

    def values(present: bool) -> list[dict[str, Any]]:
        return [
            {"o_message": mid, "o_member": member_id, "o_flags": text, "o_modseq": modseq}
            for mid, text, had in changes
            if had is present
        ]

    conn = _conn(session)
    _ADD_OWN.many(conn, values(False))
    _SET_OWN.many(conn, values(True))


# --------------------------------------------------------------------------- STATUS


def _has_flag(flags: Any, flag: str) -> Any:
    """The flags text ``flags`` holds ``flag`` as a whole token (flags are space-separated)."""
    return (literal(" ") + flags + " ").contains(f" {flag} ", autoescape=True)


def _count_if(condition: Any, value: Any = 1) -> Any:
    return func.coalesce(func.sum(case((condition, value), else_=0)), 0)


def _status_counts(own_seen: bool) -> Prepared:
    """STATUS's counts; with ``own_seen``, \\Seen is the member's (``member``) from their row (none:
    not seen). \\Deleted is never private (``[imap] private_flags``): always the message's."""
    seen = func.coalesce(_MF.c.flags, "") if own_seen else _M.c.flags
    return Prepared(
        select(
            func.count(),
            _count_if(~_has_flag(seen, "\\Seen")),
            _count_if(_has_flag(_M.c.flags, "\\Deleted")),
            func.coalesce(func.sum(_M.c.size), 0),
            _count_if(_has_flag(_M.c.flags, "\\Deleted"), _M.c.size),
        )
        .select_from(_M.outerjoin(_MF, _OWN_ROW) if own_seen else _M)
        .where(_IN_FOLDER)
    )


_STATUS_COUNTS, _OWN_STATUS_COUNTS = _status_counts(False), _status_counts(True)
_UIDS = Prepared(select(_M.c.uid).where(_IN_FOLDER).order_by(_M.c.uid))


@dataclass(frozen=True, slots=True)
class FolderCounts:
    """What STATUS reports of a folder's messages (RFC 9051 §6.3.11, RFC 8438 SIZE, DELETED-STORAGE)."""

    messages: int
    unseen: int
    deleted: int
    size: int
    deleted_size: int


def folder_counts(session: Tx, folder_id: int, seen_by: int | None = None) -> FolderCounts:
    """The folder's counts; UNSEEN by member ``seen_by``'s own \\Seen when given."""
    if seen_by is None:
        (row,) = _STATUS_COUNTS.rows(_conn(session), {"fid": folder_id})
    else:
        (row,) = _OWN_STATUS_COUNTS.rows(_conn(session), {"fid": folder_id, "member": seen_by})
    return FolderCounts(*(int(v) for v in row))


def uids(session: Tx, folder_id: int) -> list[int]:
    return [row[0] for row in _UIDS.rows(_conn(session), {"fid": folder_id})]


# --------------------------------------------------------------------------- blobs

_BLOB_META = Prepared(select(_B.c.meta).where(_B.c.id == bindparam("id")))
_BLOB_CONTENT = Prepared(select(_B.c.path, _B.c.data).where(_B.c.id == bindparam("id")))
_BLOB_METAS = select(_B.c.id, _B.c.meta).where(_B.c.id.in_(bindparam("ids", expanding=True)))


def blob_meta(session: Tx, blob_id: int) -> str | None:
    rows = _BLOB_META.rows(_conn(session), {"id": blob_id})
    return rows[0][0] if rows else None


def blob_metas(session: Tx, blob_ids: Sequence[int]) -> list[tuple[int, str]]:
    """(blob id, meta JSON) of those that exist; one statement when there is one."""
    conn = _conn(session)
    if len(blob_ids) == 1:
        meta = blob_meta(session, blob_ids[0])
        return [] if meta is None else [(blob_ids[0], meta)]
    out: list[tuple[int, str]] = []
    for i in range(0, len(blob_ids), _CHUNK):
        out.extend(tuple(r) for r in conn.execute(_BLOB_METAS, {"ids": list(blob_ids[i : i + _CHUNK])}))  # type: ignore[misc]
    return out


def blob_content(session: Tx, blob_id: int) -> tuple[str | None, bytes | None] | None:
    """(file path, inline bytes) of a blob, None when it does not exist."""
    rows = _BLOB_CONTENT.rows(_conn(session), {"id": blob_id})
    return (rows[0][0], rows[0][1]) if rows else None


# --------------------------------------------------------------------------- writes

# The folder row, locked on PostgreSQL (on SQLite the transaction holds the database's write lock).
_LOCK_FOLDER = Prepared(
    select(_F.c.mailbox_id, _F.c.highestmodseq).where(_F.c.id == bindparam("id")).with_for_update()
)
_BUMP_FOLDER = Prepared(
    update(_F)
    .where(_F.c.id == bindparam("folder"))
    .values(highestmodseq=_F.c.highestmodseq + 1)
    .returning(_F.c.highestmodseq)
)
_SET_FLAGS = Prepared(
    update(_M)
    .where(_M.c.id == bindparam("mid"))
    .values(flags=bindparam("new_flags"), modseq=bindparam("new_modseq"))
)
_ADD_EXPUNGED = Prepared(
    insert(_E).values(folder_id=bindparam("e_folder"), uid=bindparam("e_uid"), modseq=bindparam("e_modseq"))
)
_DELETE_MESSAGE = Prepared(delete(_M).where(_M.c.id == bindparam("mid")))
# The mailbox row and its domain's quotas, locked: every write that changes usage takes it first.
_LOCK_MAILBOX = Prepared(
    select(
        _MB.c.address,
        _MB.c.used_bytes,
        _MB.c.used_messages,
        _MB.c.quota_warned,
        _MB.c.quota_storage,
        _MB.c.quota_messages,
        _D.c.quota_storage,
        _D.c.quota_messages,
    )
    .join(_D, _D.c.id == _MB.c.domain_id)
    .where(_MB.c.id == bindparam("id"))
    .with_for_update(of=_MB)
)
_SET_USAGE = Prepared(
    update(_MB)
    .where(_MB.c.id == bindparam("mbid"))
    .values(used_bytes=bindparam("b"), used_messages=bindparam("n"), quota_warned=bindparam("w"))
)
_LOCK_BLOB = Prepared(
    select(_B.c.refcount, _B.c.path, _B.c.size).where(_B.c.id == bindparam("id")).with_for_update()
)
_SET_REFCOUNT = Prepared(update(_B).where(_B.c.id == bindparam("blob")).values(refcount=bindparam("refs")))
_DELETE_BLOB = Prepared(delete(_B).where(_B.c.id == bindparam("blob")))
_HOLDS_BLOB = Prepared(
    select(
        exists().where(
            _M.c.blob_id == bindparam("blob"),
            _M.c.folder_id == _F.c.id,
            _F.c.mailbox_id == bindparam("mbid"),
        )
    )
)


def lock_folder(session: Tx, folder_id: int) -> tuple[int, int] | None:
    """(mailbox id, HIGHESTMODSEQ) of the folder, its row locked; None when it is gone."""
    rows = _LOCK_FOLDER.rows(_conn(session), {"id": folder_id})
    return (rows[0][0], rows[0][1]) if rows else None


def bump_folder(session: Tx, folder_id: int) -> int:
    """Raise the folder's HIGHESTMODSEQ; returns the new one (the changed messages' MODSEQ)."""
    return int(_BUMP_FOLDER.rows(_conn(session), {"folder": folder_id})[0][0])


def set_flags(session: Tx, changes: Sequence[tuple[int, str]], modseq: int) -> None:
    """(message id, new flags text) each, stamped ``modseq``: one statement, executed per message."""
    _SET_FLAGS.many(
        _conn(session), [{"mid": mid, "new_flags": text, "new_modseq": modseq} for mid, text in changes]
    )


def lock_mailbox(session: Tx, mailbox_id: int) -> Sequence[Any] | None:
    """(address, used bytes, used messages, warned level, mailbox quotas ×2, domain quotas ×2)."""
    rows = _LOCK_MAILBOX.rows(_conn(session), {"id": mailbox_id})
    return rows[0] if rows else None


def set_usage(session: Tx, mailbox_id: int, used_bytes: int, used_messages: int, warned: int) -> None:
    _SET_USAGE.many(_conn(session), [{"mbid": mailbox_id, "b": used_bytes, "n": used_messages, "w": warned}])


def remove_messages(session: Tx, folder_id: int, rows: Sequence[Sequence[Any]], modseq: int) -> None:
    """Delete these ``_ROW_COLUMNS`` rows, leaving a tombstone at ``modseq`` for each (VANISHED)."""
    conn = _conn(session)
    _ADD_EXPUNGED.many(conn, [{"e_folder": folder_id, "e_uid": r[1], "e_modseq": modseq} for r in rows])
    _DELETE_MESSAGE.many(conn, [{"mid": r[0]} for r in rows])


def holds_blob(session: Tx, mailbox_id: int, blob_id: int) -> bool:
    return bool(_HOLDS_BLOB.rows(_conn(session), {"blob": blob_id, "mbid": mailbox_id})[0][0])


def release_blob(session: Tx, blob_id: int, count: int) -> tuple[int, str | None, bool] | None:
    """Drop ``count`` references to a blob (its row locked); (its size, its file, whether it is gone
    now); None when there was no such blob."""
    rows = _LOCK_BLOB.rows(_conn(session), {"id": blob_id})
    if not rows:
        return None
    refcount, path, size = rows[0]
    refcount -= count
    if refcount <= 0:
        _DELETE_BLOB.many(_conn(session), [{"blob": blob_id}])
    else:
        _SET_REFCOUNT.many(_conn(session), [{"blob": blob_id, "refs": refcount}])
    return int(size), path, refcount <= 0


# --------------------------------------------------------------------------- logins (credential cache hits)

_AP, _AF = AppPassword.__table__, AuthFailure.__table__


@dataclass(frozen=True, slots=True)
class LoginMailbox:
    """The columns of a mailbox a login reads (named as on ``Mailbox``, which ``allows`` also takes)."""

    id: int
    address: str
    password_hash: str | None
    enabled: bool
    type: str
    rpps: str | None
    auth_methods: str | None
    last_login_at: dt.datetime | None
    inactive_notice_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class LoginAppPassword:
    id: int
    password_hash: str


_LOGIN_MAILBOX = Prepared(
    select(
        _MB.c.id,
        _MB.c.address,
        _MB.c.password_hash,
        _MB.c.enabled,
        _MB.c.type,
        _MB.c.rpps,
        _MB.c.auth_methods,
        _MB.c.last_login_at,
        _MB.c.inactive_notice_at,
    ).where(_MB.c.address == bindparam("address"))
)
_APP_PASSWORDS = Prepared(select(_AP.c.id, _AP.c.password_hash).where(_AP.c.mailbox_id == bindparam("mbid")))
_ACTIVE_LOCKS = Prepared(
    select(_AF.c.key).where(
        _AF.c.key.in_([bindparam("k1"), bindparam("k2")]),
        _AF.c.locked_until.is_not(None),
        _AF.c.locked_until > bindparam("now"),
    )
)
# The account's counter cleared, unless a lock-out is set on it (another node's, re-checked here).
_CLEAR_ACCOUNT = Prepared(
    delete(_AF).where(
        _AF.c.key == bindparam("account"),
        or_(_AF.c.locked_until.is_(None), _AF.c.locked_until <= bindparam("now")),
    )
)
_STAMP_LOGIN = Prepared(
    update(_MB)
    .where(_MB.c.id == bindparam("mbid"))
    .values(last_login_at=bindparam("at"), inactive_notice_at=None)
)
_STAMP_APP_PASSWORD = Prepared(
    update(_AP).where(_AP.c.id == bindparam("app")).values(last_used_at=bindparam("at"))
)


def login_mailbox(session: Tx, address: str) -> LoginMailbox | None:
    rows = _LOGIN_MAILBOX.rows(_conn(session), {"address": address})
    return LoginMailbox(*rows[0]) if rows else None


def app_passwords(session: Tx, mailbox_id: int) -> list[LoginAppPassword]:
    return [LoginAppPassword(*row) for row in _APP_PASSWORDS.rows(_conn(session), {"mbid": mailbox_id})]


def active_locks(session: Tx, keys: tuple[str, str], now: dt.datetime) -> bool:
    """Whether either lock-out counter is locked now."""
    return bool(_ACTIVE_LOCKS.rows(_conn(session), {"k1": keys[0], "k2": keys[1], "now": now}))


def clear_account(session: Tx, account_key: str, now: dt.datetime) -> None:
    _CLEAR_ACCOUNT.many(_conn(session), [{"account": account_key, "now": now}])


def stamp_login(session: Tx, mailbox_id: int, now: dt.datetime) -> None:
    _STAMP_LOGIN.many(_conn(session), [{"mbid": mailbox_id, "at": now}])


def stamp_app_password(session: Tx, app_id: int, now: dt.datetime) -> None:
    _STAMP_APP_PASSWORD.many(_conn(session), [{"app": app_id, "at": now}])
