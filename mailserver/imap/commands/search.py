"""SEARCH, SORT and THREAD glue (RFC 9051 §6.4.4, RFC 4731 ESEARCH, RFC 5182 SEARCHRES, RFC 5256).

The evaluation engine (``mailserver.imap.search`` / ``sort`` / ``thread``) is pure; this module
builds its :class:`MessageView` list for the messages the client knows (in sequence order), with
metas fetched in batches, and renders the answer: ``* SEARCH`` for IMAP4rev1 clients without
RETURN, ``* ESEARCH`` otherwise (RFC 9051 §7.3.4 only has ESEARCH).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.protocol import SequenceSet
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import (
    AndKey,
    ModSeqKey,
    NotKey,
    OrKey,
    Search,
    SearchKey,
    Sort,
    Thread,
)
from mailserver.imap.search import MessageView, SearchError, search
from mailserver.imap.sort import sort
from mailserver.imap.thread import thread

if TYPE_CHECKING:
    from mailserver.imap.session import Session

_META_BATCH = 500


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
    _info, messages = await s.rt.store.snapshot(sel.folder_id)
    known = [(sel.seq(m.uid), m) for m in messages]
    known = [(seq, m) for seq, m in known if seq]
    views: list[MessageView] = []
    for start in range(0, len(known), _META_BATCH):
        chunk = known[start : start + _META_BATCH]
        metas = await s.rt.store.blob_metas(m.blob_id for _, m in chunk)
        views.extend(
            MessageView(seq, m.uid, m.modseq, m.flags, m.size, m.internal_date, metas.get(m.blob_id, {}))
            for seq, m in chunk
        )
    return views, {m.uid: m.blob_id for _, m in known}


async def _matching(s: Session, key: SearchKey) -> list[MessageView]:
    sel = s.selected
    assert sel is not None
    views, blobs = await _views(s)

    async def load_raw(view: MessageView) -> bytes:
        return await s.rt.store.read_blob(blobs[view.uid])

    saved = SequenceSet.from_numbers(sel.saved) if sel.saved is not None else None
    try:
        return await search(
            key,
            views,
            load_raw=load_raw,
            largest_seq=len(sel.uids),
            largest_uid=sel.last_uid,
            saved=saved,
            recent=sel.recent,
        )
    except SearchError as exc:
        raise Fail("NO", str(exc)) from None


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
    try:
        found = await _matching(s, cmd.criteria)
    except Fail:
        if returns is not None and "SAVE" in returns:
            sel.saved = []  # RFC 5182 §2.1: a failed SAVE search empties $.
        raise
    numbers = [v.uid if cmd.uid else v.seq for v in found]
    highest = max((v.modseq for v in found), default=None) if modseq else None
    if returns is None:
        s.send(enc.search(numbers, modseq=highest))
        return Done(f"{'UID ' if cmd.uid else ''}SEARCH completed")
    wanted = set(returns) or {"ALL"}
    if "SAVE" in wanted:
        # RFC 5182 §2.4: with MIN and/or MAX only, only those are saved.
        if wanted & {"MIN", "MAX"} and not wanted & {"ALL", "COUNT"}:
            picks = ([found[0]] if "MIN" in wanted else []) + ([found[-1]] if "MAX" in wanted else [])
            sel.saved = sorted({v.uid for v in picks}) if found else []
        else:
            sel.saved = [v.uid for v in found]
        wanted.discard("SAVE")
        if not wanted:
            return Done(f"{'UID ' if cmd.uid else ''}SEARCH completed, result saved")
    s.send(_esearch(tag, cmd.uid, wanted, cmd.partial, numbers, highest))
    return Done(f"{'UID ' if cmd.uid else ''}SEARCH completed")


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
    found = await _matching(s, cmd.search)
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
    return Done(f"{'UID ' if cmd.uid else ''}SORT completed")


@command("THREAD", State.SELECTED, ("THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT"))
async def thread_(s: Session, tag: str, cmd: Thread) -> Done:
    found = await _matching(s, cmd.search)
    try:
        roots = thread(cmd.algorithm, found, use_uid=cmd.uid)
    except SearchError as exc:
        raise Fail("NO", str(exc)) from None
    s.send(enc.thread(roots))
    return Done(f"{'UID ' if cmd.uid else ''}THREAD completed")
