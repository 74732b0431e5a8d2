"""Authenticated-state folder commands (RFC 9051 §6.3): SELECT/EXAMINE (with RFC 7162 CONDSTORE and
QRESYNC), CREATE (RFC 6154 USE), DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (RFC 5258
LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE), LSUB, NAMESPACE (RFC 2342), STATUS.

Names are UTF-8 in the store and relative to the user's own tree, or to a shared mailbox's under the
shared namespace (``shared.resolve``, each command checking its RFC 4314 rights with ``shared.need``);
there is no other path a client can write that leaves it; which names may be created, and how many,
is the store's rule (``check_folder_name`` and the ``[limits] folder_*`` settings), refused
``NO [CANNOT]`` / ``NO [LIMIT]``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mailserver import acl
from mailserver.audit import as_member
from mailserver.imap import listing, shared
from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import (
    Create,
    Delete,
    Examine,
    List,
    Lsub,
    Rename,
    Select,
    Status,
    Subscribe,
    Unsubscribe,
)
from mailserver.imap.session import SYSTEM_FLAGS, Selected
from mailserver.imap.wildcard import canonical
from mailserver.store.store import SEPARATOR, FolderCounts, FolderInfo, StoreError, normalize_folder

if TYPE_CHECKING:
    from mailserver.imap.session import Session


def check_name(name: str) -> str:
    """A name to create: one trailing ``/`` says the client means to create children under it
    (RFC 9051 §6.3.4) and is dropped; everything else is the store's rule (``check_folder_name``)."""
    return name[:-1] if name.endswith(SEPARATOR) and name != SEPARATOR else name


def _mailbox_id(s: Session) -> int:
    assert s.mailbox_id is not None
    return s.mailbox_id


# --------------------------------------------------------------------------- SELECT / EXAMINE


async def _select(s: Session, cmd: Select | Examine) -> Done:
    if s.selected is not None:
        # RFC 9051 §6.3.2 / RFC 7162 §3.2.11: the old mailbox is closed before the new one opens.
        s.deselect()
        s.send(enc.status_response(None, "OK", "previous mailbox is now closed", "CLOSED"))
    if cmd.qresync is not None and not s.qresync:
        raise Fail("BAD", "QRESYNC parameter without ENABLE QRESYNC")
    if cmd.condstore:
        s.enable("CONDSTORE")
    target = await shared.resolve(s, cmd.mailbox)
    shared.need(target, acl.READ, cmd.name)
    viewer = shared.viewer(s, target.mailbox_id)
    info, messages = await s.rt.store.open_folder(target.mailbox_id, target.folder, viewer)
    name = target.prefix + info.name
    readonly = cmd.readonly or not acl.changes_anything(target.rights)
    sel = Selected(
        info.id,
        name,
        readonly,
        info.uidvalidity,
        info.highestmodseq,
        target.mailbox_id,
        target.rights,
        viewer,
        target.shared,
    )
    s.watch(target.mailbox_id)
    sel.uids.extend(m.uid for m in messages)
    s.take_recent(sel, list(sel.uids))
    await s.server.forget_deleted_folders()
    sel.keywords = {f for m in messages for f in m.flags} - set(SYSTEM_FLAGS)
    s.selected = sel
    s.state = State.SELECTED
    s.send_flags_response()
    s.send(enc.exists(len(sel.uids)))
    if not s.rev2:
        s.send(enc.recent(len(sel.recent)))
        unseen = next((i for i, m in enumerate(messages, 1) if "\\Seen" not in m.flags), 0)
        if unseen:
            s.send(enc.status_response(None, "OK", "first unseen", enc.Code.unseen(unseen)))
    s.send_permanent_flags()
    s.send(enc.status_response(None, "OK", "UIDs valid", enc.Code.uidvalidity(info.uidvalidity)))
    s.send(enc.status_response(None, "OK", "predicted next UID", enc.Code.uidnext(info.uidnext)))
    s.send(enc.status_response(None, "OK", "highest", enc.Code.highestmodseq(info.highestmodseq)))
    if s.rev2:
        s.send(enc.list_response([], SEPARATOR, name, utf8=True))  # RFC 9051 §6.3.2
    del messages
    if cmd.qresync is not None and cmd.qresync.uidvalidity == info.uidvalidity:
        await _qresync(s, sel, cmd.qresync.modseq, cmd.qresync.known_uids)
    return Done(f"{cmd.name} completed", b"READ-ONLY" if readonly else b"READ-WRITE")


async def _qresync(s: Session, sel: Selected, modseq: int, known: object) -> None:
    """RFC 7162 §3.2.5: VANISHED (EARLIER) for what the client still has, then the changed flags."""
    info, changed, vanished = await s.rt.store.changes_since(sel.folder_id, modseq, sel.viewer)
    if known is not None:
        vanished = known.select_uids(vanished)  # type: ignore[attr-defined]
    if vanished:
        s.send(enc.vanished(vanished, earlier=True))
    for m in changed:
        seq = sel.seq(m.uid)
        if seq:
            s.send_flags(seq, m)
    if info.highestmodseq > sel.modseq:
        s.dirty = True


@command("SELECT", State.AUTH_OR_SELECTED, ("CONDSTORE", "QRESYNC"))
async def select(s: Session, tag: str, cmd: Select) -> Done:
    return await _select(s, cmd)


@command("EXAMINE", State.AUTH_OR_SELECTED)
async def examine(s: Session, tag: str, cmd: Examine) -> Done:
    return await _select(s, cmd)


# --------------------------------------------------------------------------- CREATE / DELETE / RENAME


async def _audit_limit(s: Session, request: str, exc: StoreError) -> None:
    """A folder limit refusal (RFC 5530 LIMIT) is an audit event: who tried to grow past it, how."""
    if exc.code == "LIMIT":
        await s.rt.audit.record(s.address, "limit", s.remote, request, f"NO [LIMIT] {exc}")


@command("CREATE", State.AUTH_OR_SELECTED, ("CREATE-SPECIAL-USE",))
async def create(s: Session, tag: str, cmd: Create) -> Done:
    target = await shared.resolve(s, check_name(cmd.mailbox))
    shared.need(target, acl.CREATE, "CREATE")
    name = target.folder
    if len(cmd.special_use) > 1:
        raise Fail("NO", "only one special-use attribute per mailbox", "USEATTR")
    try:
        await s.rt.store.create_folder(
            target.mailbox_id, name, cmd.special_use[0] if cmd.special_use else None
        )
    except StoreError as exc:
        await _audit_limit(s, f"imap CREATE {name}", exc)
        raise
    actor, org = s.acting(target.shared)
    await s.rt.audit.record(
        actor, "create", s.remote, f"imap CREATE folder {target.display}", "ok" + as_member(org)
    )
    return Done("CREATE completed")


@command("DELETE", State.AUTH_OR_SELECTED)
async def delete(s: Session, tag: str, cmd: Delete) -> Done:
    target = await shared.resolve(s, cmd.mailbox)
    shared.need(target, acl.DELETE, "DELETE")
    name = normalize_folder(target.folder)
    if name == "INBOX":
        raise Fail("NO", "INBOX cannot be deleted", "CANNOT")
    await s.rt.store.delete_folder(target.mailbox_id, name)
    actor, org = s.acting(target.shared)
    request = f"imap DELETE folder {target.display}"
    await s.rt.audit.record(actor, "delete", s.remote, request, "ok" + as_member(org))
    if s.selected is not None and s.selected.name == target.display:
        s.dirty = True
    return Done("DELETE completed")


@command("RENAME", State.AUTH_OR_SELECTED)
async def rename(s: Session, tag: str, cmd: Rename) -> Done:
    old, new = await shared.resolve(s, cmd.old), await shared.resolve(s, check_name(cmd.new))
    shared.need(old, acl.DELETE, "RENAME")
    shared.need(new, acl.CREATE, "RENAME")
    if old.mailbox_id != new.mailbox_id:
        raise Fail("NO", "a folder cannot be renamed into another mailbox", "CANNOT")
    if old.shared and normalize_folder(old.folder) == "INBOX":  # RFC 9051 §6.3.6 would empty it
        raise Fail("NO", "the INBOX of a shared mailbox cannot be renamed: its mail arrives there", "CANNOT")
    try:
        await s.rt.store.rename_folder(old.mailbox_id, old.folder, new.folder)
    except StoreError as exc:
        await _audit_limit(s, f"imap RENAME {cmd.old} {new.display}", exc)
        raise
    actor, org = s.acting(old.shared)
    request = f"imap RENAME folder {old.display} {new.display}"
    await s.rt.audit.record(actor, "rename", s.remote, request, "ok" + as_member(org))
    if s.selected is not None and s.selected.name == old.display:
        s.selected.name = new.display
        s.dirty = True
    return Done("RENAME completed")


@command("SUBSCRIBE", State.AUTH_OR_SELECTED)
async def subscribe(s: Session, tag: str, cmd: Subscribe) -> Done:
    if (await shared.resolve(s, cmd.mailbox)).shared:
        return Done("SUBSCRIBE completed (shared folders are always subscribed)")
    try:
        await s.rt.store.subscribe(_mailbox_id(s), cmd.mailbox, True)
    except StoreError as exc:
        await _audit_limit(s, f"imap SUBSCRIBE {cmd.mailbox}", exc)
        raise
    return Done("SUBSCRIBE completed")


@command("UNSUBSCRIBE", State.AUTH_OR_SELECTED)
async def unsubscribe(s: Session, tag: str, cmd: Unsubscribe) -> Done:
    if cmd.mailbox.startswith(shared.prefix(s)):
        return Done("UNSUBSCRIBE completed (shared folders are always subscribed)")
    await s.rt.store.subscribe(_mailbox_id(s), cmd.mailbox, False)
    return Done("UNSUBSCRIBE completed")


# --------------------------------------------------------------------------- LIST / LSUB


def _nonexistent(s: Session, cmd: List) -> str:
    """RFC 5258 §3: ``\\NonExistent`` (implying ``\\Noselect``) where LIST-EXTENDED is in use, else
    the ``\\Noselect`` that RFC 3501 §6.3.8 gives to a level of hierarchy that is not a mailbox."""
    return "\\NonExistent" if cmd.extended or s.rev2 else "\\Noselect"


def _attributes(s: Session, cmd: List, row: listing.Row) -> list[str]:
    attrs = [] if row.folder is not None else [_nonexistent(s, cmd)]
    if row.folder is not None or row.has_children:
        attrs.append("\\HasChildren" if row.has_children else "\\HasNoChildren")
    if row.subscribed and ("SUBSCRIBED" in cmd.selection or cmd.returns.subscribed):
        attrs.append("\\Subscribed")
    if row.folder is not None and row.folder.special_use:
        attrs.append(row.folder.special_use)
    return attrs


async def _listing(s: Session) -> tuple[list[FolderInfo], set[str], dict[int, str]]:
    """One's own folders and subscriptions, then each visible shared mailbox's folders under the
    shared namespace (always subscribed), with the rights held on those (by folder id)."""
    folders, subscriptions = await s.rt.store.listing(_mailbox_id(s))
    rights: dict[int, str] = {}
    for access in await shared.visible(s):
        root = shared.prefix(s) + access.address + SEPARATOR
        theirs, _ = await s.rt.store.listing(access.mailbox_id)
        for f in theirs:
            folders.append(dataclasses.replace(f, name=root + f.name))
            subscriptions.add(root + f.name)
            rights[f.id] = access.rights
    return folders, subscriptions, rights


@command("LIST", State.AUTH_OR_SELECTED, ("LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE"))
async def list_(s: Session, tag: str, cmd: List) -> Done:
    if not cmd.extended and cmd.patterns == ("",):
        # RFC 9051 §6.3.9: an empty pattern asks for the hierarchy delimiter and root.
        s.send(enc.list_response(["\\Noselect"], SEPARATOR, "", utf8=s.utf8))
        return Done("LIST completed")
    folders, subscriptions, rights = await _listing(s)
    criteria = [opt for opt in ("SUBSCRIBED", "SPECIAL-USE") if opt in cmd.selection]
    rows = await listing.rows(
        folders,
        subscriptions,
        [canonical(cmd.reference, p, SEPARATOR) for p in cmd.patterns],
        subscribed_only="SUBSCRIBED" in cmd.selection,
        special_use_only="SPECIAL-USE" in cmd.selection,
        recursive="RECURSIVEMATCH" in cmd.selection,
    )
    async for row in listing.paced(rows):
        childinfo = criteria if row.childinfo else []
        attrs = _attributes(s, cmd, row)
        s.send(enc.list_response(attrs, SEPARATOR, row.name, utf8=s.utf8, childinfo=childinfo))
        readable = row.folder is not None and not acl.missing(rights.get(row.folder.id, acl.OWNER), acl.READ)
        if cmd.returns.status is not None and row.folder is not None and row.selected and readable:
            # RFC 5819 §2: right after its LIST line.
            await _status(s, row.folder, cmd.returns.status, row.name)
    return Done("LIST completed")


@command("LSUB", State.AUTH_OR_SELECTED)
async def lsub(s: Session, tag: str, cmd: Lsub) -> Done:
    """RFC 3501 §6.3.9 (deprecated in RFC 9051 but still answered for rev1 clients): the subscribed
    names; an unsubscribed level above one that the pattern does not reach (``%``) is ``\\Noselect``."""
    if cmd.pattern is None:
        return Done("LSUB completed")
    folders, subscriptions, _ = await _listing(s)
    pattern = canonical(cmd.reference, cmd.pattern, SEPARATOR)
    rows = await listing.rows(folders, subscriptions, [pattern], subscribed_only=True, recursive=True)
    async for row in listing.paced(rows):
        attrs = [] if row.selected else ["\\Noselect"]
        s.send(enc.list_response(attrs, SEPARATOR, row.name, utf8=s.utf8, command="LSUB"))
    return Done("LSUB completed")


@command("NAMESPACE", State.AUTH_OR_SELECTED, ("NAMESPACE",))
async def namespace(s: Session, tag: str, cmd: object) -> Done:
    """RFC 2342: one personal namespace, no other users', and the shared one (``[imap] shared_prefix``)."""
    s.send(enc.namespace([("", SEPARATOR)], None, [(shared.prefix(s), SEPARATOR)], utf8=s.utf8))
    return Done("NAMESPACE completed")


# --------------------------------------------------------------------------- STATUS


def _status_value(s: Session, item: str, folder: FolderInfo, counts: FolderCounts, uids: list[int]) -> int:
    if item == "MESSAGES":
        return counts.messages
    if item == "UIDNEXT":
        return folder.uidnext
    if item == "UIDVALIDITY":
        return folder.uidvalidity
    if item == "UNSEEN":
        return counts.unseen
    if item == "DELETED":
        return counts.deleted
    if item == "SIZE":
        return counts.size
    if item == "DELETED-STORAGE":
        return counts.deleted_size
    if item == "RECENT":
        sel = s.selected
        if sel is not None and sel.folder_id == folder.id and sel.uidvalidity == folder.uidvalidity:
            return len(sel.recent)  # RFC 3501 §6.3.10: those \Recent here, claimed by this session
        return s.server.recent_count(folder.id, folder.uidvalidity, uids)
    if item == "HIGHESTMODSEQ":
        s.enable("CONDSTORE")  # RFC 7162 §3.1: STATUS HIGHESTMODSEQ is a CONDSTORE-enabling command.
        return folder.highestmodseq
    if item == "APPENDLIMIT":
        return s.rt.settings.limits.message_size
    raise Fail("BAD", f"unknown STATUS item {item}")


async def _status(s: Session, target: shared.Target | FolderInfo, items: tuple[str, ...], name: str) -> None:
    """One STATUS response for a folder a command named (``target``) or LIST found; the store counts
    the messages (``Store.status``, UNSEEN by the member's own \\Seen in a shared mailbox), the UIDs
    are read only for RECENT."""
    recent = "RECENT" in items
    store, viewer = s.rt.store, shared.viewer(s, target.mailbox_id)
    if isinstance(target, shared.Target):
        info, counts, uids = await store.status(target.mailbox_id, target.folder, uids=recent, viewer=viewer)
        name = target.prefix + info.name
    else:
        info, counts, uids = await store.status(
            target.mailbox_id, None, target.id, uids=recent, viewer=viewer
        )
    values = [(item, _status_value(s, item, info, counts, uids)) for item in items]
    s.send(enc.status(name, values, utf8=s.utf8))


@command("STATUS", State.AUTH_OR_SELECTED, ("STATUS=SIZE",))
async def status(s: Session, tag: str, cmd: Status) -> Done:
    target = await shared.resolve(s, cmd.mailbox)
    shared.need(target, acl.READ, "STATUS")
    await _status(s, target, cmd.items, "")
    return Done("STATUS completed")
