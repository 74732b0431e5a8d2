"""STORE and UID STORE (RFC 9051 §6.4.6) with the RFC 7162 §3.1.3 UNCHANGEDSINCE modifier.

Messages modified since UNCHANGEDSINCE are left alone and reported in ``OK [MODIFIED set]`` (sequence
numbers for STORE, UIDs for UID STORE). Without .SILENT every message of the set gets a FETCH with
its current flags; with .SILENT only the MODSEQ of changed messages is reported once CONDSTORE is on
(RFC 7162 §3.1.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mailserver import acl, conversations
from mailserver.audit import as_member
from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import Store, StoreMode
from mailserver.imap.protocol.sequence import compress

if TYPE_CHECKING:
    from mailserver.imap.session import Session

_MODES: dict[StoreMode, Literal["add", "remove", "replace"]] = {
    StoreMode.ADD: "add",
    StoreMode.REMOVE: "remove",
    StoreMode.REPLACE: "replace",
}


@command("STORE", State.SELECTED)
async def store(s: Session, tag: str, cmd: Store) -> Done:
    sel = s.require_writable()
    if "\\Recent" in cmd.flags:
        raise Fail("BAD", "\\Recent cannot be changed by a client")  # RFC 3501 §2.3.2
    if cmd.unchanged_since is not None:
        s.enable("CONDSTORE")
    # RFC 4314 §4: s for \Seen, t for \Deleted, w for the others; a replace may change all three.
    replace_all = acl.SEEN + acl.WRITE + acl.DELETED
    needed = replace_all if cmd.mode == StoreMode.REPLACE else acl.flag_rights(cmd.flags)
    s.require_rights(needed, "STORE")
    uids = s.resolve(cmd.sequence_set, cmd.uid)
    if not uids:
        return Done("STORE completed")
    change = await s.rt.store.set_flags(
        sel.folder_id, uids, _MODES[cmd.mode], cmd.flags, cmd.unchanged_since, sel.viewer
    )
    s.own_change(change.changed[0].modseq if change.changed else None, change.changed)
    if cmd.mode != StoreMode.REMOVE and change.changed:
        s.announce_keywords(cmd.flags)  # even under .SILENT (RFC 9051 §7.3.5)
    if cmd.mode != StoreMode.REMOVE and change.changed and conversations.closes(cmd.flags):
        await conversations.on_flags_changed(s.rt, sel.owner, sel.folder_id, [m.uid for m in change.changed])
    actor, org = s.acting(sel.shared)
    if org and change.changed:  # issue 16: a flag change in an ORG's mailbox names the person
        what = (
            f"uids {compress([m.uid for m in change.changed])} {cmd.mode.value}FLAGS ({' '.join(cmd.flags)})"
        )
        await s.rt.audit.record(
            actor, "flags", s.remote, f"imap STORE {sel.name} {what}", "ok" + as_member(org)
        )
    changed = {m.uid: m for m in change.changed}
    if cmd.silent:
        if s.condstore:
            for m in change.changed:
                seq = sel.seq(m.uid)
                if seq:
                    s.send(enc.fetch(seq, [("UID", b"%d" % m.uid), ("MODSEQ", b"(%d)" % m.modseq)]))
    else:
        skipped = set(change.modified)
        unchanged = [u for u in uids if u not in changed and u not in skipped]
        current = await s.rt.store.messages(sel.folder_id, unchanged, sel.viewer) if unchanged else []
        everything = sorted([*change.changed, *current], key=lambda m: m.uid)
        for m in everything:
            seq = sel.seq(m.uid)
            if seq:
                s.send_flags(seq, m, uid=cmd.uid)
    if change.modified:
        numbers = change.modified if cmd.uid else [sel.seq(u) for u in change.modified if sel.seq(u)]
        return Done("conditional STORE failed for some messages", enc.Code.modified(numbers))
    return Done("STORE completed")
