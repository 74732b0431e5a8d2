"""Large files by secure link: attachments the operator keeps and replaces by a download link.

One policy for every way in (the API's resumable uploads and inline attachments, SMTP submission, the
patient portal's replies):

- a file is charged to its sender's storage quota (``quota.exceeded`` on the store's limits) from the
  moment it is created, at its full declared size, until it is purged: an unfinished upload
  ``[large_files] upload_expire`` after its creation, a sent one ``keep`` after it was last sent;
- bytes are written to ``[large_files] path`` in bounded chunks and fsync'ed before the offset that
  covers them is recorded (and acknowledged); a file is linked only once complete;
- a file may be downloaded by the recipients of a message that carried its link (and by its owner),
  each download audited with the file and the message;
- ``rewrite`` takes the attachments above ``threshold`` out of a message whose recipients are all on
  this operator and puts in their place a text part with the link (``link_part``); S/MIME messages
  (``multipart/signed``, ``application/pkcs7-mime``) are never rewritten, since that would break the
  signature or cannot be seen into: they pass unchanged, bounded by ``[limits] message_size``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import os
import quopri
import secrets
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, aliased

from mailserver import acl, quota
from mailserver.db.models import Mailbox, Membership, utcnow
from mailserver.headers import HeaderView
from mailserver.large_file_models import LargeFile, LargeFileRecipient
from mailserver.logs import log_event
from mailserver.runtime import Runtime
from mailserver.store import mime

CHUNK = 1024 * 1024  # bytes buffered before one write: the most an upload holds in memory
CHECKPOINT = 16 * CHUNK  # a long PATCH records (fsync + commit) its offset at least this often
SMIME_TYPES = {("multipart", "signed"), ("application", "pkcs7-mime"), ("application", "x-pkcs7-mime")}
HEADER = "X-Caducee-Large-File"


class TooLarge(Exception):
    """Above ``[large_files] max_size``, or more bytes than the upload declared."""


class TooMany(Exception):
    """The mailbox already holds ``[large_files] max_uploads`` files not yet sent."""


class Conflict(Exception):
    """The upload is not in the state the request assumes (offset, busy, already complete or sent);
    ``offset``: what is recorded, when known (tus answers it in ``Upload-Offset``)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


def _root(rt: Runtime) -> Path:
    return Path(rt.settings.large_files.path)


def file_path(rt: Runtime, file_id: str) -> Path:
    """Where a file's bytes are: ids are 32 hex digits, fanned out by their first two."""
    return _root(rt) / file_id[:2] / file_id


def download_url(rt: Runtime, file_id: str) -> str:
    """The link put in messages: the download page on the portal (``[patients] portal_url``)."""
    base = rt.settings.patients.portal_url or f"https://{rt.settings.server.hostname}/"
    return f"{base.rstrip('/')}/fichiers/{file_id}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _unlink(paths: Sequence[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def clean_name(name: str | None) -> str:
    """A file name safe in a header and on a page: no control characters, no directories."""
    cleaned = "".join(" " if ord(c) < 32 or c in "/\\" else c for c in name or "").strip(" .")
    return cleaned[-200:] or "piece-jointe"


def clean_type(value: str | None) -> str:
    value = (value or "").strip().lower()
    if value.count("/") != 1 or any(c in value for c in " \r\n;\"'") or len(value) > 200:
        return "application/octet-stream"
    return value


async def create(rt: Runtime, mailbox_id: int, size: int, filename: str, content_type: str) -> LargeFile:
    """A new, empty upload of ``size`` bytes owned (and charged to) ``mailbox_id``; raises TooLarge,
    TooMany or ``quota.OverQuota``. An empty file is complete at once."""
    if size > rt.settings.large_files.max_size:
        raise TooLarge(f"au plus {rt.settings.large_files.max_size} octets")
    file_id = secrets.token_hex(16)
    path = file_path(rt, file_id)
    await asyncio.to_thread(_create_file, path)
    now = utcnow()
    row = LargeFile(
        id=file_id,
        mailbox_id=mailbox_id,
        filename=clean_name(filename),
        content_type=clean_type(content_type),
        size=size,
        received=0,
        sha256="" if size else hashlib.sha256(b"").hexdigest(),
        state="uploading" if size else "ready",
        created_at=now,
        expires_at=now + dt.timedelta(seconds=rt.settings.large_files.upload_expire),
    )
    try:
        async with rt.db.write() as session:
            mb = await session.get(Mailbox, mailbox_id, with_for_update=True)
            assert mb is not None
            unsent = await session.scalar(
                select(func.count())
                .select_from(LargeFile)
                .where(LargeFile.mailbox_id == mailbox_id, LargeFile.state != "sent")
            )
            if unsent >= rt.settings.large_files.max_uploads:
                raise TooMany(f"au plus {rt.settings.large_files.max_uploads} envois non envoyés par boîte")
            usage = quota.Usage(mb.used_bytes, mb.used_messages)
            if quota.exceeded(usage, await rt.store.limits(session, mb), size, 0):  # type: ignore[arg-type]
                raise quota.OverQuota(mb.address, "STORAGE")
            mb.used_bytes += size
            session.add(row)
    except BaseException:
        await asyncio.to_thread(_unlink, [path])
        raise
    return row


async def get(rt: Runtime, file_id: str) -> LargeFile | None:
    if len(file_id) != 32 or any(c not in "0123456789abcdef" for c in file_id):
        return None
    async with rt.db.read() as session:
        return await session.get(LargeFile, file_id)


async def owned(rt: Runtime, mailbox_id: int, file_id: str) -> LargeFile | None:
    """The caller's own file (another mailbox's is as unknown as a missing one)."""
    row = await get(rt, file_id)
    return row if row is not None and row.mailbox_id == mailbox_id else None


async def _record(rt: Runtime, row: LargeFile, start: int, received: int) -> None:
    """Record the offset reached (the bytes before it already fsync'ed); complete: hash, ``ready``."""
    digest = await asyncio.to_thread(_sha256, file_path(rt, row.id)) if received == row.size else ""
    async with rt.db.write() as session:
        current = await session.get(LargeFile, row.id, with_for_update=True)
        if current is None or current.received != start:
            raise Conflict("upload modifié par ailleurs")
        current.received = received
        if digest:
            current.sha256, current.state = digest, "ready"
    row.received = received
    if digest:
        row.sha256, row.state = digest, "ready"


async def receive(rt: Runtime, row: LargeFile, offset: int, chunks: AsyncIterable[bytes]) -> int:
    """Append ``chunks`` at ``offset`` (which must be the recorded one) and return the new offset.

    One writer per upload, whichever process serves it: the file stays locked (``flock``) until the
    PATCH has recorded what it wrote, and a PATCH finding it locked is a Conflict at once, with the
    offset recorded so far (the client asks HEAD again, as tus clients do), never a second writer.
    Buffered at most ``CHUNK`` bytes at a time; every ``CHECKPOINT`` bytes and when the stream ends,
    normally or not (a client that goes away mid-way), what was written is fsync'ed and its offset
    recorded, so a resumed upload continues from the last recorded byte. Bytes past the declared size
    raise TooLarge (those that fit are kept)."""
    try:
        f = await asyncio.to_thread(open, file_path(rt, row.id), "r+b")
    except FileNotFoundError:
        raise Conflict(f"fichier {row.id} supprimé") from None
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = False
        except BlockingIOError:
            busy = True
        fresh = await get(rt, row.id)
        held = fresh.received if fresh else None
        if busy:
            raise Conflict(f"un autre envoi de ce fichier est en cours ; Upload-Offset : {held}", held)
        if fresh is None or fresh.state != "uploading" or offset != fresh.received:
            raise Conflict(f"Upload-Offset attendu : {held or 0}", held)
        row.received = offset
        return await _append(rt, row, f, offset, chunks)
    finally:
        await asyncio.to_thread(f.close)  # and the lock with it, once the offset is recorded


async def _append(rt: Runtime, row: LargeFile, f: BinaryIO, offset: int, chunks: AsyncIterable[bytes]) -> int:
    # Bytes written past the recorded offset by an interrupted request were never acknowledged.
    await asyncio.to_thread(f.truncate, offset)
    f.seek(offset)
    written = recorded = offset
    buf = bytearray()
    try:
        async for chunk in chunks:
            room = row.size - written - len(buf)
            buf += chunk[:room]
            if len(chunk) > room:
                raise TooLarge(f"plus d'octets que Upload-Length ({row.size})")
            if len(buf) >= CHUNK:
                await asyncio.to_thread(f.write, bytes(buf))
                written += len(buf)
                buf.clear()
                if written - recorded >= CHECKPOINT:
                    await asyncio.to_thread(os.fsync, f.fileno())
                    await _record(rt, row, recorded, written)
                    recorded = written
    finally:
        if buf:
            await asyncio.to_thread(f.write, bytes(buf))
            written += len(buf)
        await asyncio.to_thread(os.fsync, f.fileno())
        if written != recorded:
            await asyncio.shield(_record(rt, row, recorded, written))
    return row.received


async def store_bytes(
    rt: Runtime, mailbox_id: int, filename: str, content_type: str, data: bytes
) -> LargeFile:
    """A complete file from bytes already in memory (an attachment taken out of a message)."""
    row = await create(rt, mailbox_id, len(data), filename, content_type)

    async def one() -> AsyncIterable[bytes]:
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]

    await receive(rt, row, 0, one())
    return row


def link_rows(
    session: Session, rows: Sequence[LargeFile], recipients: Sequence[str], message_id: str, keep: float
) -> None:
    """In the sending transaction: each recipient may download each file; its link lives ``keep``."""
    until = utcnow() + dt.timedelta(seconds=keep)
    for row in rows:
        current = session.get(LargeFile, row.id, with_for_update=True)
        if current is None or current.state not in ("ready", "sent"):
            raise Conflict(f"fichier {row.id} indisponible")
        current.state = "sent"
        current.expires_at = max(current.expires_at, until)
        for address in dict.fromkeys(a.lower() for a in recipients):
            session.add(LargeFileRecipient(file_id=row.id, address=address, message_id=message_id[:998]))


async def attach(rt: Runtime, rows: Sequence[LargeFile], recipients: Sequence[str], message_id: str) -> None:
    """``link_rows`` in a transaction of its own (before the message is committed)."""
    keep = rt.settings.large_files.keep
    await rt.db.run_write(lambda s: link_rows(s, rows, recipients, message_id, keep))


def link_text(rt: Runtime, row: LargeFile, until: dt.datetime) -> str:
    """What the recipient reads in place of the attachment."""
    return (
        f"Pièce jointe volumineuse : {row.filename} ({quota.human_size(row.size)}, {row.content_type}),\n"
        "conservée par votre messagerie. Téléchargez-la en vous identifiant (compte de messagerie\n"
        f"ou portail patient), jusqu'au {until.strftime('%d/%m/%Y')} :\n\n"
        f"{download_url(rt, row.id)}\n\n"
        f"SHA-256 : {row.sha256}\n"
    )


def link_part(rt: Runtime, row: LargeFile, until: dt.datetime) -> bytes:
    """The MIME part that replaces an attachment: text/plain, inline, naming the file in its header."""
    body = quopri.encodestring(link_text(rt, row, until).replace("\n", "\r\n").encode("utf-8"))
    return (
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"Content-Disposition: inline\r\n"
        + f"{HEADER}: {row.id}\r\n\r\n".encode()
        + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    )


def is_smime(data: bytes) -> bool:
    ctype = (HeaderView.parse(data).get("Content-Type") or "").split(";", 1)[0].strip().lower()
    return tuple(ctype.split("/", 1)) in SMIME_TYPES


async def rewrite(
    rt: Runtime, owner_id: int, data: bytes, recipients: Sequence[str] | None
) -> tuple[bytes, list[LargeFile]]:
    """``data`` with every attachment above ``threshold`` kept here and replaced by ``link_part``,
    and the files. With ``recipients`` (all on this operator: the caller checks) the files are linked
    to them for the message's Message-ID now; without, the caller links them in its commit
    (``link_rows``) or drops them (``discard``). Unchanged when nothing is that large or the message is
    S/MIME. Raises ``quota.OverQuota`` when the sender's storage cannot hold the files."""
    from mailserver.portal.service import attachment_parts  # the portal's view of "an attachment"

    threshold = rt.settings.large_files.threshold
    if len(data) <= threshold or is_smime(data):
        return data, []
    meta = mime.analyze(data)
    if meta["bodystructure"]["type"] != "multipart":
        return data, []
    large = []
    for info, path, node in attachment_parts(meta):
        if node["size"] <= threshold or node["part"][0] == 0:
            continue
        body = mime.binary_section(data, meta, path)
        if body is not None and len(body) > threshold:
            large.append((info, node, body))
    if not large:
        return data, []
    rows = []
    try:
        for info, _node, body in large:
            rows.append(await store_bytes(rt, owner_id, info.filename, info.content_type, body))
        if recipients is not None:
            await attach(rt, rows, recipients, HeaderView.parse(data).get("Message-ID") or "")
    except BaseException:
        await discard(rt, [r.id for r in rows])
        raise
    until = utcnow() + dt.timedelta(seconds=rt.settings.large_files.keep)
    out = data
    for (_info, node, _body), row in sorted(zip(large, rows, strict=True), key=lambda p: -p[0][1]["part"][0]):
        start, end = node["part"][0], node["part"][3]
        out = out[:start] + link_part(rt, row, until) + out[end:]
    log_event("large-files-linked", files=len(rows), bytes=sum(r.size for r in rows))
    return out, rows


async def may_download(rt: Runtime, file_id: str, address: str) -> tuple[LargeFile, str, str] | None:
    """(file, Message-ID, shared mailbox) when ``address`` received the file's link, owns it, or belongs
    with the read right to a shared mailbox that received it (the third item names that mailbox, else
    ""), and the link has not expired (even before the daily purge); None otherwise, whether the file
    exists or not."""
    row = await get(rt, file_id)
    if row is None or row.state != "sent" or row.expires_at <= utcnow():
        return None
    address = address.lower()
    async with rt.db.read() as session:
        message_id = (
            await session.execute(
                select(LargeFileRecipient.message_id)
                .where(LargeFileRecipient.file_id == file_id, LargeFileRecipient.address == address)
                .limit(1)
            )
        ).scalar_one_or_none()
        if message_id is not None:
            return row, message_id, ""
        owner = await session.get(Mailbox, row.mailbox_id)
        if owner is not None and owner.address.lower() == address:
            return row, "", ""
        shared, person = aliased(Mailbox), aliased(Mailbox)
        through = (
            await session.execute(
                select(LargeFileRecipient.message_id, shared.address, Membership.rights)
                .join(shared, func.lower(shared.address) == LargeFileRecipient.address)
                .join(Membership, Membership.mailbox_id == shared.id)
                .join(person, person.id == Membership.member_id)
                .where(LargeFileRecipient.file_id == file_id, func.lower(person.address) == address)
            )
        ).all()
    for message_id, shared_address, rights in through:
        if acl.READ in rights:
            return row, message_id, shared_address
    return None


def _drop(session: Session, row: LargeFile) -> None:
    """Delete the row and give its size back to the owner's storage."""
    mb = session.get(Mailbox, row.mailbox_id, with_for_update=True)
    if mb is not None:
        mb.used_bytes = max(0, mb.used_bytes - row.size)
    session.execute(delete(LargeFileRecipient).where(LargeFileRecipient.file_id == row.id))
    session.execute(delete(LargeFile).where(LargeFile.id == row.id))


async def discard(rt: Runtime, file_ids: Sequence[str]) -> None:
    """Drop the files never sent (an upload cancelled, a message refused after its files were
    stored); a file a message links is left to expire."""

    def work(session: Session) -> list[str]:
        dropped = []
        for file_id in file_ids:
            row = session.get(LargeFile, file_id, with_for_update=True)
            if row is not None and row.state != "sent":
                _drop(session, row)
                dropped.append(file_id)
        return dropped

    if file_ids:
        dropped = await rt.db.run_write(work)
        await asyncio.to_thread(_unlink, [file_path(rt, i) for i in dropped])


async def purge(rt: Runtime, now: dt.datetime | None = None) -> int:
    """The daily task: files past ``expires_at`` are deleted and their quota released; audited."""
    now = now or utcnow()
    async with rt.db.read() as session:
        expired = list(
            (
                await session.execute(select(LargeFile).where(LargeFile.expires_at <= now).limit(10000))
            ).scalars()
        )
    for row in expired:

        def work(session: Session, row: LargeFile = row) -> None:
            current = session.get(LargeFile, row.id, with_for_update=True)
            if current is not None and current.expires_at <= now:
                _drop(session, current)

        await rt.db.run_write(work)
        await asyncio.to_thread(_unlink, [file_path(rt, row.id)])
    if expired:
        await rt.audit.record(
            "admin",
            "large-file-purge",
            request=f"expired before {now.isoformat()}",
            response=f"{len(expired)} files, {sum(r.size for r in expired)} bytes",
        )
    log_event("large-files-purged", removed=len(expired))
    return len(expired)
