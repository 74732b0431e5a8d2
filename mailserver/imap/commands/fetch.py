"""FETCH and UID FETCH (RFC 9051 §6.4.5, §7.5.2) with BINARY (RFC 3516) and the RFC 7162 MODSEQ item,
CHANGEDSINCE and VANISHED modifiers.

ENVELOPE, BODYSTRUCTURE and section offsets come from the meta computed once at delivery; the raw
message is read only for body sections, one message at a time, and responses are flushed per batch,
so memory stays bounded whatever the sequence set. A non-PEEK body fetch sets \\Seen (unless the
mailbox was opened with EXAMINE) and reports the new FLAGS in the same response (§6.4.5).

A message whose file cannot be read gets no FETCH response; the others are still sent (a client
syncing ``1:*`` is not stopped by one bad file) and the command ends ``NO [UNAVAILABLE]`` (RFC 5530:
try again later), the fault logged and audited once (``mailserver.storage_faults``).

A command that returns content (a body section, RFC822) is one "read" audit event with its UID set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailserver import acl
from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import Fetch, FetchAtt, FetchBinarySize, FetchBody, FetchItem
from mailserver.imap.protocol.sequence import compress
from mailserver.store import mime
from mailserver.store.store import MessageInfo, MessageUnavailable

if TYPE_CHECKING:
    from mailserver.imap.session import Session

_META_ATTS = frozenset({FetchAtt.ENVELOPE, FetchAtt.BODYSTRUCTURE, FetchAtt.BODY})
_RAW_ATTS = frozenset({FetchAtt.RFC822, FetchAtt.RFC822_HEADER, FetchAtt.RFC822_TEXT})
_SEEN_ATTS = frozenset({FetchAtt.RFC822, FetchAtt.RFC822_TEXT})
_BATCH_SMALL = 500
_BATCH_BODIES = 50


def _sets_seen(item: FetchItem) -> bool:
    return (isinstance(item, FetchBody) and not item.peek) or item in _SEEN_ATTS


def _reads_content(item: FetchItem) -> bool:
    """A body section or the whole message: a consultation, audited (RFC822.SIZE, FLAGS are not)."""
    return isinstance(item, FetchBody) or item in _RAW_ATTS


def _needs_raw(item: FetchItem) -> bool:
    return isinstance(item, FetchBody | FetchBinarySize) or item in _RAW_ATTS


def _value(
    s: Session, item: FetchItem, m: MessageInfo, meta: dict[str, Any] | None, raw: bytes | None
) -> bytes:
    utf8 = s.utf8
    if isinstance(item, FetchBody):
        assert raw is not None and meta is not None
        sec = item.section
        if item.binary:
            data = mime.binary_section(raw, meta, list(sec.part))
            if data is None:
                raise Fail("NO", "unknown Content-Transfer-Encoding", "UNKNOWN-CTE")
        else:
            data = mime.section(raw, meta, list(sec.part), sec.text, list(sec.fields))
        if item.partial is not None:
            origin, length = item.partial
            data = data[origin : origin + length]
        return enc.section_data(data, binary=item.binary)
    if isinstance(item, FetchBinarySize):
        assert raw is not None and meta is not None
        size = mime.binary_size(raw, meta, list(item.part))
        if size is None:
            raise Fail("NO", "unknown Content-Transfer-Encoding", "UNKNOWN-CTE")
        return b"%d" % size
    if item is FetchAtt.FLAGS:
        return s.flags_item(m.flags, m.uid)
    if item is FetchAtt.UID:
        return b"%d" % m.uid
    if item is FetchAtt.MODSEQ:
        return b"(%d)" % m.modseq
    if item is FetchAtt.INTERNALDATE:
        return enc.date_time(m.internal_date)
    if item is FetchAtt.RFC822_SIZE:
        return b"%d" % m.size
    if item is FetchAtt.ENVELOPE:
        assert meta is not None
        return enc.encode_envelope(meta["envelope"], utf8=utf8)
    if item is FetchAtt.BODYSTRUCTURE or item is FetchAtt.BODY:
        assert meta is not None
        return enc.encode_bodystructure(meta["bodystructure"], item is FetchAtt.BODYSTRUCTURE, utf8=utf8)
    assert raw is not None and meta is not None
    if item is FetchAtt.RFC822:
        return enc.literal(raw)
    if item is FetchAtt.RFC822_HEADER:
        return enc.literal(mime.section(raw, meta, [], "HEADER"))
    return enc.literal(mime.section(raw, meta, [], "TEXT"))


def _name(item: FetchItem) -> str:
    return item.response_name() if isinstance(item, FetchBody | FetchBinarySize) else str(item)


@command("FETCH", State.SELECTED, ("BINARY",))
async def fetch(s: Session, tag: str, cmd: Fetch) -> Done:
    sel = s.selected
    assert sel is not None
    store = s.rt.store
    if cmd.vanished and not s.qresync:
        raise Fail("BAD", "VANISHED needs ENABLE QRESYNC")  # RFC 7162 §3.2.6
    items = list(cmd.items)
    if cmd.changed_since is not None or FetchAtt.MODSEQ in items:
        s.enable("CONDSTORE")  # RFC 7162 §3.1: CONDSTORE-enabling commands.
        if FetchAtt.MODSEQ not in items:
            items.append(FetchAtt.MODSEQ)  # RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ.
    if cmd.uid and FetchAtt.UID not in items:
        items.insert(0, FetchAtt.UID)  # RFC 9051 §6.4.9: UID FETCH always reports UID.
    uids = s.resolve(cmd.sequence_set, cmd.uid)
    if cmd.vanished and cmd.changed_since is not None:
        _info, _changed, gone = await store.changes_since(sel.folder_id, cmd.changed_since, sel.viewer)
        spans = cmd.sequence_set.resolve(max(sel.last_uid, gone[-1] if gone else 0))
        gone = [u for u in gone if any(lo <= u <= hi for lo, hi in spans)]
        if gone:
            s.send(enc.vanished(gone, earlier=True))
    seen = not sel.readonly and acl.SEEN in sel.rights and any(_sets_seen(i) for i in items)
    if seen and FetchAtt.FLAGS not in items:
        items.append(FetchAtt.FLAGS)
    raw_needed = any(_needs_raw(i) for i in items)
    meta_needed = raw_needed or any(i in _META_ATTS for i in items)
    batch = _BATCH_BODIES if raw_needed else _BATCH_SMALL
    faults: list[MessageUnavailable] = []
    read: list[int] | None = [] if any(_reads_content(i) for i in items) else None
    for start in range(0, len(uids), batch):
        chunk = uids[start : start + batch]
        if meta_needed:
            infos, metas = await store.messages_with_metas(sel.folder_id, chunk, sel.viewer)
        else:
            infos, metas = await store.messages(sel.folder_id, chunk, sel.viewer), {}
        if seen:
            new = [m for m in infos if "\\Seen" not in m.flags]
            lost = await store.unreadable(m.blob_id for m in new) if new else set()
            unseen = [m.uid for m in new if m.blob_id not in lost]  # a body not sent is not seen
            if unseen:
                change = await store.set_flags(sel.folder_id, unseen, "add", ["\\Seen"], viewer=sel.viewer)
                updated = {m.uid: m for m in change.changed}
                infos = [updated.get(m.uid, m) for m in infos]  # (the same blobs: the metas hold)
                s.own_change(change.changed[0].modseq if change.changed else None, change.changed)
        if cmd.changed_since is not None:
            infos = [m for m in infos if m.modseq > cmd.changed_since]
        for m in infos:
            seq = sel.seq(m.uid)
            if not seq:
                continue
            try:
                raw = await store.read_blob(m.blob_id) if raw_needed else None
            except MessageUnavailable as exc:
                faults.append(exc)
                continue
            meta = metas.get(m.blob_id)
            s.send(enc.fetch(seq, [(_name(i), _value(s, i, m, meta, raw)) for i in items]))
            if read is not None:
                read.append(m.uid)
        await s.flush()
    if read:
        actor, org = s.acting(sel.shared)
        await s.rt.audit.read(actor, s.remote, "imap FETCH", f"{sel.name} uids {compress(read)}", org)
    verb = f"{'UID ' if cmd.uid else ''}FETCH"
    if faults:
        await s.unavailable(faults, verb)
        unread = f"{len(faults)} message(s) cannot be read from storage"
        return Done(f"{verb} done for the others; {unread}, try again later", "UNAVAILABLE", "NO")
    return Done(f"{verb} completed")
