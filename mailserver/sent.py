"""Sent copies (issue 16): what a user submits is kept in their ``\\Sent`` folder, and, for a member
sending as an ORG/CAB mailbox, in that mailbox's ``\\Sent`` too, so the whole team sees what was
answered (``[submission] save_sent``).

Most clients also APPEND their own copy after sending. Both paths ask ``recent_copy`` first: a message
with the same Message-ID stored in that ``\\Sent`` folder within ``[submission] sent_window``, and the
same author, recipients, subject and body (``same_message``), stands for it, so neither order (submit
then APPEND, or APPEND then submit) leaves two copies; a different message that merely reuses the
Message-ID (a mistake, or another member's forgery) is kept beside it and hides nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from mailserver import accounts, quota
from mailserver.db.models import SHARED_TYPES, Message, utcnow
from mailserver.headers import HeaderView, header_end
from mailserver.store.store import FolderInfo, StoreError, Viewer

if TYPE_CHECKING:
    from mailserver.runtime import Runtime

log = logging.getLogger("caducee.sent")

SENT = "\\Sent"


def message_id(data: bytes) -> str | None:
    """The message's Message-ID without angle brackets or folding, or None when it has none."""
    value = HeaderView.parse(data).get("Message-ID")
    if not value:
        return None
    return "".join(value.split()).strip("<>") or None


async def sent_folder(rt: Runtime, mailbox_id: int) -> FolderInfo | None:
    """The mailbox's folder marked ``\\Sent`` (RFC 6154), the first one if several are."""
    return next((f for f in await rt.store.folders(mailbox_id) if f.special_use == SENT), None)


_COMPARED = ("From", "To", "Cc", "Subject")


def same_message(a: bytes, b: bytes) -> bool:
    """Whether two copies are one message as its author wrote it: the fields a reader sees (decoded,
    whitespace folded) and the body alike. Date and Message-ID, which submission may add, are not
    compared, nor trace fields."""

    def key(data: bytes) -> tuple[object, ...]:
        view = HeaderView.parse(data)
        fields = tuple(" ".join((view.get(name) or "").split()) for name in _COMPARED)
        body = data[header_end(data) :].replace(b"\r\n", b"\n").rstrip()
        return fields, body

    return key(a) == key(b)


async def recent_copy(rt: Runtime, folder: FolderInfo, msgid: str, data: bytes) -> int | None:
    """The UID of a copy of ``data`` (Message-ID ``msgid``, ``same_message``) stored in ``folder``
    within ``sent_window``."""
    since = utcnow() - dt.timedelta(seconds=rt.settings.submission.sent_window)
    async with rt.db.read() as session:
        rows = (
            await session.execute(
                select(Message.uid, Message.blob_id).where(
                    Message.folder_id == folder.id, Message.internal_date >= since
                )
            )
        ).all()
    if not rows:
        return None
    metas = await rt.store.blob_metas(blob_id for _uid, blob_id in rows)
    for uid, blob_id in rows:
        stored = (metas[blob_id].get("headers") or {}).get("message_id")
        if stored and stored.strip("<>") == msgid and same_message(await rt.store.read_blob(blob_id), data):
            return int(uid)
    return None


async def copy_owners(rt: Runtime, mailbox_id: int, envelope_from: str, data: bytes) -> list[int]:
    """Whose ``\\Sent`` keeps a submitted message: the sender's, and each shared (ORG/CAB) mailbox it
    was sent as, by the envelope or by the From field (both already checked by ``may_send_as`` and
    ``check_authors``)."""
    owners = [mailbox_id]
    authors = [envelope_from, *accounts.author_addresses(HeaderView.parse(data))]
    for address in dict.fromkeys(a.lower() for a in authors if a):
        shared = await accounts.find_mailbox(rt, address)
        if shared is not None and shared.type in SHARED_TYPES:
            owners.append(shared.id)
    return owners


async def save_copies(rt: Runtime, mailbox_ids: list[int], data: bytes) -> list[tuple[int, int]]:
    """Store ``data`` (read: ``\\Seen``) in each mailbox's ``\\Sent`` unless a recent copy is there;
    returns (mailbox id, UID) for each copy stored. A mailbox without ``\\Sent`` or over quota gets none
    (the message was sent already: the copy never fails the sending). The first mailbox is the
    sender's: in the others (the ORG they sent as) the copy is also read by them as a member, since
    ``\\Seen`` there is each member's own (``[imap] private_flags``)."""
    if not rt.settings.submission.save_sent:
        return []
    msgid = message_id(data)
    stored: list[tuple[int, int]] = []
    private = frozenset(rt.settings.imap.private_flags)
    sender = Viewer(mailbox_ids[0], private) if mailbox_ids and "\\Seen" in private else None
    for mailbox_id in dict.fromkeys(mailbox_ids):
        folder = await sent_folder(rt, mailbox_id)
        if folder is None or (msgid is not None and await recent_copy(rt, folder, msgid, data) is not None):
            continue
        try:
            _validity, (uid,) = await rt.store.append(mailbox_id, folder.name, [(data, {"\\Seen"}, None)])
        except (quota.OverQuota, StoreError) as exc:
            log.warning("no sent copy for mailbox %s: %s", mailbox_id, exc)
            continue
        if sender is not None and mailbox_id != sender.member_id:
            await rt.store.set_flags(folder.id, [uid], "add", ["\\Seen"], viewer=sender)
        stored.append((mailbox_id, uid))
    return stored


async def appended_twice(
    rt: Runtime, mailbox_id: int, folder_name: str, data: bytes
) -> tuple[int, int] | None:
    """An APPEND to ``\\Sent`` of a message submission already kept there: (UIDVALIDITY, UID) of that
    copy, to answer with instead of storing a second; None when the APPEND is to be stored."""
    msgid = message_id(data) if rt.settings.submission.save_sent else None
    if msgid is None:
        return None
    folder = await rt.store.folder(mailbox_id, folder_name)
    if folder.special_use != SENT:
        return None
    uid = await recent_copy(rt, folder, msgid, data)
    return None if uid is None else (folder.uidvalidity, uid)
