"""SEARCH, SORT and THREAD glue (RFC 9051 §6.4.4, RFC 4731 ESEARCH, RFC 5182 SEARCHRES, RFC 5256,
RFC 5267 ESORT and CONTEXT).

The evaluation engine (``mailserver.imap.search`` / ``sort`` / ``thread``) is pure; this module
builds its :class:`MessageView` list for the messages the client knows (in sequence order), with
metas fetched in batches, and renders the answer: ``* SEARCH`` for IMAP4rev1 clients without
RETURN, ``* ESEARCH`` otherwise (RFC 9051 §7.3.4 only has ESEARCH), also for SORT RETURN. A
RETURN (UPDATE) leaves an updating context (:mod:`mailserver.imap.contexts`) on the folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.contexts import evaluate, load_views
from mailserver.imap.protocol import SequenceSet
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import (
    AndKey,
    CancelUpdate,
    ModSeqKey,
    NotKey,
    OrKey,
    Search,
    SearchKey,
    Sort,
    SortCriterion,
    Thread,
)
from mailserver.imap.search import MessageView, SearchError
from mailserver.imap.sort import sort
from mailserver.imap.thread import thread

if TYPE_CHECKING:
    from mailserver.imap.session import Session


def _uses_modseq(key: SearchKey) -> bool:
    if isinstance(key, ModSeqKey):
        return True
    if isinstance(key, AndKey):
        return any(_uses_modseq(k) for k in key.keys)
    if isinstance(key, OrKey):
        return _uses_modseq(key.left) or _uses_modseq(key.right)
    if isinstance(key, NotKey):
        return _uses_modseq(key.key)
    return False


async def _views(s: Session) -> tuple[list[MessageView], dict[int, int]]:
    """Every message the client knows and the store still has, with its meta; and uid → blob id."""
    sel = s.selected
    assert sel is not None
    _info, messages = await s.rt.store.snapshot(sel.folder_id, sel.viewer)
    known = [(sel.seq(m.uid), m) for m in messages]
    known = [(seq, m) for seq, m in known if seq]
    return await load_views(s, known), {m.uid: m.blob_id for _, m in known}


async def _matching(s: Session, key: SearchKey, request: str) -> list[MessageView]:
    """The matches; messages whose file cannot be read are left out, with a warning (``evaluate``)."""
    sel = s.selected
    assert sel is not None
    views, blobs = await _views(s)
    saved = SequenceSet.from_numbers(sel.saved) if sel.saved is not None else None
    try:
        found, _unreadable = await evaluate(s, key, views, blobs, saved, request)
    except SearchError as exc:
        raise Fail("NO", str(exc)) from None
    return found


def _returned(found: list[MessageView], wanted: set[str]) -> list[MessageView]:
    """The messages a RETURN reports: with MIN and/or MAX but neither ALL nor COUNT only those two,
    else every match. Their highest mod-sequence is the MODSEQ result (RFC 4731 §3.2) and SAVE keeps
    just them (RFC 5182 §2.4)."""
    if not found or not wanted & {"MIN", "MAX"} or wanted & {"ALL", "COUNT"}:
        return found
    return ([found[0]] if "MIN" in wanted else []) + ([found[-1]] if "MAX" in wanted else [])


@command("SEARCH", State.SELECTED, ("ESEARCH", "SEARCHRES", "WITHIN"))
async def search_(s: Session, tag: str, cmd: Search) -> Done:
    sel = s.selected
    assert sel is not None
    modseq = _uses_modseq(cmd.criteria)
    if modseq:
        s.enable("CONDSTORE")  # RFC 7162 §3.1.5
    returns = cmd.returns
    if returns is None and s.rev2:
        returns = ("ALL",)  # RFC 9051 §6.4.4: IMAP4rev2 answers ESEARCH only.
    _reject_reused_tag(s, tag, returns)
    try:
        found = await _matching(s, cmd.criteria, "UID SEARCH" if cmd.uid else "SEARCH")
    except Fail:
        if returns is not None and "SAVE" in returns:
            sel.saved = []  # RFC 5182 §2.1: a failed SAVE search empties $.
        raise
    numbers = [v.uid if cmd.uid else v.seq for v in found]
    wanted = set(returns or ()) or {"ALL"}
    returned = _returned(found, wanted)
    highest = max((v.modseq for v in returned), default=None) if modseq else None
    if returns is None:
        s.send(enc.search(numbers, modseq=highest))
        return Done(f"{'UID ' if cmd.uid else ''}SEARCH completed")
    if "SAVE" in wanted:
        sel.saved = sorted({v.uid for v in returned})
        wanted.discard("SAVE")
        if not wanted:
            return Done(f"{'UID ' if cmd.uid else ''}SEARCH completed, result saved")
    s.send(_esearch(tag, cmd.uid, wanted, cmd.partial, numbers, highest))
    if "UPDATE" in wanted:
        await _keep(s, tag, cmd.uid, cmd.criteria, found, None)
    return Done(f"{'UID ' if cmd.uid else ''}SEARCH completed")


def _reject_reused_tag(s: Session, tag: str, returns: tuple[str, ...] | None) -> None:
    """RFC 5267 §4.3: UPDATE with the tag of a live updating context is a BAD."""
    sel = s.selected
    assert sel is not None
    if returns is not None and "UPDATE" in returns and tag in sel.contexts.active:
        raise Fail("BAD", f"tag {tag} already names an updating context")


async def _keep(
    s: Session,
    tag: str,
    uid: bool,
    criteria: SearchKey,
    results: list[MessageView],
    order: tuple[SortCriterion, ...] | None,
) -> None:
    """Open an updating context for these results, or say NOUPDATE at the limit (RFC 5267 §4.3.1)."""
    sel = s.selected
    assert sel is not None
    limit = s.rt.settings.limits.imap_update_contexts
    if len(sel.contexts.active) >= limit:
        s.send(enc.status_response(None, "NO", f"at most {limit} updating contexts", f'NOUPDATE "{tag}"'))
        await s.rt.audit.record(s.address, "limit", s.remote, f"imap {tag} RETURN (UPDATE)", "NOUPDATE")
        return
    sel.contexts.create(tag, uid, criteria, sel, results, order)


def _esearch(
    tag: str,
    uid: bool,
    wanted: set[str],
    partial: tuple[int, int] | None,
    numbers: list[int],
    modseq: int | None,
) -> bytes:
    """The ESEARCH answer for ``numbers`` in the requested order: mailbox order for SEARCH, the
    sort order for SORT, where MIN and MAX are the first and last sorted (RFC 5267 §3.1)."""
    return enc.esearch(
        tag,
        uid=uid,
        min=numbers[0] if numbers and "MIN" in wanted else None,
        max=numbers[-1] if numbers and "MAX" in wanted else None,
        count=len(numbers) if "COUNT" in wanted else None,
        all=numbers if "ALL" in wanted else None,
        # RFC 5267 §4.4: positions from 1; a range past the end yields what there is.
        partial=(partial, numbers[partial[0] - 1 : partial[1]]) if partial is not None else None,
        modseq=modseq,
    )


@command("SORT", State.SELECTED, ("SORT", "SORT=DISPLAY", "ESORT"))
async def sort_(s: Session, tag: str, cmd: Sort) -> Done:
    _reject_reused_tag(s, tag, cmd.returns)
    found = await _matching(s, cmd.search, "UID SORT" if cmd.uid else "SORT")
    try:
        ordered = sort(cmd.criteria, found)
    except SearchError as exc:
        raise Fail("NO", str(exc)) from None
    modseq = max((v.modseq for v in found), default=None) if _uses_modseq(cmd.search) else None
    numbers = [v.uid if cmd.uid else v.seq for v in ordered]
    if cmd.returns is None:
        s.send(enc.sort(numbers, modseq=modseq))
    else:  # RFC 5267 §3: ESORT answers with ESEARCH, in the sort order.
        s.send(_esearch(tag, cmd.uid, set(cmd.returns), cmd.partial, numbers, modseq))
        if "UPDATE" in cmd.returns:
            await _keep(s, tag, cmd.uid, cmd.search, ordered, cmd.criteria)
    return Done(f"{'UID ' if cmd.uid else ''}SORT completed")


@command("CANCELUPDATE", State.SELECTED, ("CONTEXT=SEARCH", "CONTEXT=SORT"))
async def cancelupdate(s: Session, tag: str, cmd: CancelUpdate) -> Done:
    """RFC 5267 §4.3.5: no more updates for these contexts (unknown tags have none anyway)."""
    sel = s.selected
    assert sel is not None
    sel.contexts.cancel(cmd.tags)
    return Done("CANCELUPDATE completed, no further updates")


@command("THREAD", State.SELECTED, ("THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT"))
async def thread_(s: Session, tag: str, cmd: Thread) -> Done:
    found = await _matching(s, cmd.search, "UID THREAD" if cmd.uid else "THREAD")
    try:
        roots = thread(cmd.algorithm, found, use_uid=cmd.uid)
    except SearchError as exc:
        raise Fail("NO", str(exc)) from None
    s.send(enc.thread(roots))
    return Done(f"{'UID ' if cmd.uid else ''}THREAD completed")
