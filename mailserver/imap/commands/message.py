"""Commands that add or remove messages (RFC 9051 §6.3.12, §6.4): APPEND with MULTIAPPEND (RFC 3502)
and APPENDUID (RFC 4315), CHECK, CLOSE, UNSELECT (RFC 3691), EXPUNGE and UID EXPUNGE (RFC 4315),
COPY with COPYUID and MOVE (RFC 6851).

The tagged OK of APPEND/COPY/MOVE is sent only after the store returned, i.e. after commit and
fsync. Expunges are audited ("delete", UIDs and folder, never content).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver import acl, conversations, sent
from mailserver.audit import as_member
from mailserver.imap import shared
from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.catenate import catenate
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import Append, Copy, Expunge, Move
from mailserver.imap.protocol.sequence import compress
from mailserver.store.store import FolderNotFound

if TYPE_CHECKING:
    from mailserver.imap.session import Selected, Session


@command("APPEND", State.AUTH_OR_SELECTED, ("MULTIAPPEND", "UIDPLUS", "CATENATE"))
async def append(s: Session, tag: str, cmd: Append) -> Done:
    limit = s.rt.settings.limits.message_size
    items = []
    for message in cmd.messages:
        if "\\Recent" in message.flags:
            raise Fail("BAD", "\\Recent cannot be set by a client")
        data = message.data
        if message.catenate is not None:
            data = await catenate(s, message.catenate, limit)
        if len(data) > limit:
            raise Fail("NO", f"message larger than APPENDLIMIT {limit}", "TOOBIG")
        items.append((data, message.flags, message.internal_date))
    target = await shared.resolve(s, cmd.mailbox)
    shared.need(target, acl.INSERT, "APPEND")
    viewer = shared.viewer(s, target.mailbox_id)
    private = viewer.private if viewer is not None else frozenset()
    allowed = [acl.allowed_flags(target.rights, flags) for _data, flags, _when in items]
    # A member's private flags (\Seen) are theirs, set once the message exists; the rest is shared.
    items = [
        (data, [f for f in k if f not in private], when)
        for (data, _f, when), k in zip(items, allowed, strict=True)
    ]
    try:
        if (
            len(items) == 1
            and not target.shared
            and (kept := await sent.appended_twice(s.rt, target.mailbox_id, target.folder, items[0][0]))
        ):
            return Done(
                "APPEND completed (already kept by submission)", enc.Code.appenduid(kept[0], [kept[1]])
            )
        uidvalidity, uids = await s.rt.store.append(target.mailbox_id, target.folder, items)
    except FolderNotFound:
        raise Fail("NO", "no such mailbox", "TRYCREATE") from None
    mine = [(uid, [f for f in k if f in private]) for uid, k in zip(uids, allowed, strict=True)]
    if viewer is not None and any(flags for _uid, flags in mine):
        folder = await s.rt.store.folder(target.mailbox_id, target.folder)
        for uid, flags in mine:
            if flags:
                await s.rt.store.set_flags(folder.id, [uid], "add", flags, viewer=viewer)
    if s.selected is not None and s.selected.name == target.display:
        s.dirty = True  # RFC 9051 §6.3.12: the client sees EXISTS before the tagged OK.
    closing = [uid for uid, item in zip(uids, items, strict=True) if conversations.closes(item[1])]
    if closing:
        folder = await s.rt.store.folder(target.mailbox_id, target.folder)
        await conversations.on_flags_changed(s.rt, target.mailbox_id, folder.id, closing)
    return Done("APPEND completed", enc.Code.appenduid(uidvalidity, uids))


@command("CHECK", State.SELECTED)
async def check(s: Session, tag: str, cmd: object) -> Done:
    """RFC 3501 §6.4.1 (gone in rev2): every change is already durable, so just report updates."""
    s.dirty = True
    return Done("CHECK completed")


async def _audit_expunge(s: Session, sel: Selected, uids: list[int]) -> None:
    if uids:
        actor, org = s.acting(sel.shared)
        await s.rt.audit.record(
            actor, "delete", s.remote, f"imap EXPUNGE {sel.name} uids {compress(uids)}", "ok" + as_member(org)
        )


@command("CLOSE", State.SELECTED)
async def close(s: Session, tag: str, cmd: object) -> Done:
    """RFC 9051 §6.4.1: expunge silently (no EXPUNGE responses) unless read-only, then deselect."""
    sel = s.selected
    assert sel is not None
    if not sel.readonly and not acl.missing(sel.rights, acl.EXPUNGE):  # RFC 4314 §4: else no expunge
        gone = await s.rt.store.expunge(sel.folder_id)
        await _audit_expunge(s, sel, gone)
    s.deselect()
    return Done("CLOSE completed")


@command("UNSELECT", State.SELECTED, ("UNSELECT",))
async def unselect(s: Session, tag: str, cmd: object) -> Done:
    s.deselect()
    return Done("UNSELECT completed")


@command("EXPUNGE", State.SELECTED)
async def expunge(s: Session, tag: str, cmd: Expunge) -> Done:
    sel = s.require_writable()
    s.require_rights(acl.EXPUNGE, "EXPUNGE")
    uids = s.resolve(cmd.uid_set, True) if cmd.uid_set is not None else None
    if uids is not None and not uids:
        return Done("EXPUNGE completed")
    gone = await s.rt.store.expunge(sel.folder_id, uids)
    s.announce_expunged(gone)
    s.own_change(None)
    await _audit_expunge(s, sel, gone)
    return Done("EXPUNGE completed")


async def _copy(s: Session, cmd: Copy | Move, move: bool) -> Done:
    sel = s.require_writable() if move else s.selected
    assert sel is not None
    if move:
        s.require_rights(acl.DELETED + acl.EXPUNGE, "MOVE")
    target = await shared.resolve(s, cmd.mailbox)
    shared.need(target, acl.INSERT, cmd.name)
    uids = s.resolve(cmd.sequence_set, cmd.uid)
    if not uids:
        return Done(f"{cmd.name} completed, nothing to do")
    across = target.mailbox_id != sel.owner
    try:
        uidvalidity, pairs = await s.rt.store.copy(
            sel.folder_id,
            uids,
            target.folder,
            move=move,
            into=target.mailbox_id,
            viewer=sel.viewer,
            dest_viewer=shared.viewer(s, target.mailbox_id),
            # RFC 4314 §4: into another mailbox, only the flags the rights there let one set.
            keep=(lambda flags: acl.allowed_flags(target.rights, flags)) if across else None,
        )
    except FolderNotFound:
        raise Fail("NO", "no such mailbox", "TRYCREATE") from None
    if across and pairs:
        actor, org = s.acting(target.shared or sel.shared)
        await s.rt.audit.record(
            actor,
            cmd.name.lower(),
            s.remote,
            f"imap {cmd.name} {sel.name} uids {compress([a for a, _ in pairs])} to {target.display}",
            "ok" + as_member(org),
        )
    code = enc.Code.copyuid(uidvalidity, [a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
    same = target.display == sel.name
    if same:
        s.dirty = True
    if not move:
        return Done("COPY completed", code)
    # RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges of the moved messages.
    if code is not None:
        s.send(enc.status_response(None, "OK", "moved", code))
    s.announce_expunged(a for a, _ in pairs)
    s.own_change(None)
    return Done("MOVE completed")


@command("COPY", State.SELECTED)
async def copy(s: Session, tag: str, cmd: Copy) -> Done:
    return await _copy(s, cmd, move=False)


@command("MOVE", State.SELECTED, ("MOVE",))
async def move(s: Session, tag: str, cmd: Move) -> Done:
    return await _copy(s, cmd, move=True)
