"""Updating SEARCH and SORT contexts (RFC 5267 §4.3, CONTEXT=SEARCH and CONTEXT=SORT).

A ``RETURN (UPDATE)`` searching command leaves a :class:`Context` on the selected folder: its
search program (sequence numbers, ``*`` and ``$`` frozen to UIDs when the command ran, as RFC 5267
§4.3 and the RFC 3501 errata require) and its results as the client holds them. Each time the
session tells the client about changes, the messages that changed are re-evaluated and the
difference is sent as ``* ESEARCH (TAG "t") [UID] REMOVEFROM (...) ADDTO (...)``:

- after the FETCH or EXISTS that announced a change (RFC 5267 §4.3.2), so that new sequence numbers
  are valid (§4.3.3); REMOVEFROM for expunged messages just before the EXPUNGE/VANISHED (§4.3.4);
- only the messages ``changes_since`` (or our own STORE) reported are evaluated, never the folder;
- SEARCH results stay in mailbox order and use context position 0 (§4.3.3); SORT results keep
  every member's sort key, so an addition goes to its sorted position and removals name theirs.

Contexts per session are limited by ``[limits] imap_update_contexts``; beyond it the command still
answers, with ``* NO [NOUPDATE "tag"]`` (§4.3.1). They end with CANCELUPDATE or the selection.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import (
    AndKey,
    BodyKey,
    DateKey,
    HeaderKey,
    NotKey,
    OrKey,
    SearchKey,
    SequenceKey,
    SortCriterion,
    TextKey,
)
from mailserver.imap.protocol.sequence import SequenceSet
from mailserver.imap.search import MessageView, search
from mailserver.imap.sort import needs_meta as sort_needs_meta
from mailserver.imap.sort import sort_key
from mailserver.store.store import MessageInfo, MessageUnavailable

if TYPE_CHECKING:
    from mailserver.imap.session import Selected, Session

__all__ = ["Context", "Contexts", "evaluate", "freeze", "load_views"]

_BATCH = 500
Position = tuple[int, list[int]]  # (context position, UIDs in the requested order)


async def load_views(
    s: Session, known: Sequence[tuple[int, MessageInfo]], with_meta: bool = True
) -> list[MessageView]:
    """Engine views of (sequence number, message) pairs, their cached analysis read in batches."""
    views: list[MessageView] = []
    for start in range(0, len(known), _BATCH):
        chunk = known[start : start + _BATCH]
        metas = await s.rt.store.blob_metas(m.blob_id for _, m in chunk) if with_meta else {}
        views.extend(
            MessageView(seq, m.uid, m.modseq, m.flags, m.size, m.internal_date, metas.get(m.blob_id, {}))
            for seq, m in chunk
        )
    return views


async def evaluate(
    s: Session,
    key: SearchKey,
    views: list[MessageView],
    blobs: dict[int, int],
    saved: SequenceSet | None,
    request: str = "SEARCH",
) -> tuple[list[MessageView], set[int]]:
    """The views matching ``key`` in the selected folder's state, and the UIDs left undecided
    because their message could not be read; ``blobs`` maps UID to blob for the keys that need the
    message itself. Raises :class:`SearchError`.

    A message the storage cannot give back is left out, and the command still completes: the
    client is warned first with an untagged ``* NO [UNAVAILABLE]`` (RFC 9051 §7.1.2: an untagged NO
    is a warning, the command can still succeed; RFC 5530 UNAVAILABLE: try again later), and the
    fault is logged and audited once for the command. A tagged NO instead would cost every other
    match of the folder: imapclient raises on it and imaplib, Thunderbird or K-9 drop the results,
    so one unreadable file would make SEARCH (and SORT, THREAD, an updating context) useless for
    the whole folder. Clients that show server warnings show this one; the others still get what
    could be read, and an unreadable message is never reported as matching (nor, for an updating
    context, as no longer matching).
    """
    sel = s.selected
    assert sel is not None
    faults: list[MessageUnavailable] = []
    skipped: set[int] = set()

    async def load_raw(view: MessageView) -> bytes | None:
        try:
            return await s.rt.store.read_blob(blobs[view.uid])
        except MessageUnavailable as exc:
            faults.append(exc)
            skipped.add(view.uid)
            return None

    found = await search(
        key,
        views,
        load_raw=load_raw,
        largest_seq=len(sel.uids),
        largest_uid=sel.last_uid,
        saved=saved,
        recent=sel.recent,
    )
    if faults:
        text = f"{len(skipped)} message(s) could not be read from storage and were left out; try again later"
        s.send(enc.status_response(None, "NO", text, "UNAVAILABLE"))
        await s.unavailable(faults, request)
    return found, skipped


def freeze(key: SearchKey, sel: Selected) -> SearchKey:
    """``key`` with every sequence set resolved now: message numbers and ``$`` become the UIDs they
    designate, ``*`` the highest UID; later messages are not designated by them."""
    match key:
        case SequenceKey(sequence_set=seqset, uid=uid):
            plain = SequenceSet(seqset.ranges)
            if uid:
                uids = SequenceSet(tuple(plain.resolve(sel.last_uid)))
            else:
                uids = SequenceSet.from_numbers(sel.uids[n - 1] for n in plain.iter(len(sel.uids)))
            if seqset.saved and sel.saved:
                uids = SequenceSet(uids.ranges + SequenceSet.from_numbers(sel.saved).ranges)
            return SequenceKey(uids, uid=True)
        case AndKey(keys=keys):
            return AndKey(tuple(freeze(k, sel) for k in keys))
        case OrKey(left=left, right=right):
            return OrKey(freeze(left, sel), freeze(right, sel))
        case NotKey(key=inner):
            return NotKey(freeze(inner, sel))
    return key


def _needs_meta(key: SearchKey) -> bool:
    """Whether evaluating ``key`` reads more than flags, sizes, dates and numbers."""
    match key:
        case AndKey(keys=keys):
            return any(_needs_meta(k) for k in keys)
        case OrKey(left=left, right=right):
            return _needs_meta(left) or _needs_meta(right)
        case NotKey(key=inner):
            return _needs_meta(inner)
    return isinstance(key, HeaderKey | BodyKey | TextKey | DateKey)


@dataclass(slots=True)
class Context:
    """One updating context; ``uid`` says whether the client gets UIDs or sequence numbers.

    SEARCH (``order`` None): ``members`` holds the matching UIDs ascending. SORT: ``keys`` holds the
    members' sort keys in the requested order (the UID last, as the tie-break) and ``by_uid`` finds
    a member's key; ``members`` stays empty.
    """

    tag: str
    uid: bool
    criteria: SearchKey
    order: Callable[[MessageView], tuple[Any, ...]] | None
    needs_meta: bool
    members: array[int]
    keys: list[tuple[Any, ...]]
    by_uid: dict[int, tuple[Any, ...]]

    def __contains__(self, uid: int) -> bool:
        if self.order is None:
            i = bisect_left(self.members, uid)
            return i < len(self.members) and self.members[i] == uid
        return uid in self.by_uid

    def remove(self, uid: int) -> int:
        """Drop a member; its 1-based context position before removal (0 for SEARCH)."""
        if self.order is None:
            del self.members[bisect_left(self.members, uid)]
            return 0
        i = bisect_left(self.keys, self.by_uid.pop(uid))
        del self.keys[i]
        return i + 1

    def add(self, view: MessageView) -> int:
        """Insert a member; its 1-based context position after insertion (0 for SEARCH)."""
        if self.order is None:
            insort(self.members, view.uid)
            return 0
        key = self.by_uid[view.uid] = self.order(view)
        i = bisect_left(self.keys, key)
        self.keys.insert(i, key)
        return i + 1


def _runs(changes: list[tuple[int, int]], removing: bool) -> list[Position]:
    """Group (position, UID) changes made one after the other into (position, UIDs) runs: a
    removal at the same position, or an insertion just after the previous one, extends a run."""
    runs: list[Position] = []
    for position, uid in changes:
        if runs:
            last, members = runs[-1]
            if position == last + (0 if removing or not last else len(members)):
                members.append(uid)
                continue
        runs.append((position, [uid]))
    return runs


class Contexts:
    """The updating contexts of the selected folder, and our own changes waiting to be evaluated."""

    __slots__ = ("active", "backlog")

    def __init__(self) -> None:
        self.active: dict[str, Context] = {}
        self.backlog: dict[int, MessageInfo] = {}

    def __bool__(self) -> bool:
        return bool(self.active)

    def create(
        self,
        tag: str,
        uid: bool,
        criteria: SearchKey,
        sel: Selected,
        results: Sequence[MessageView],
        order: Sequence[SortCriterion] | None,
    ) -> None:
        """Keep ``results`` (in the requested order) of a searching command that asked for UPDATE."""
        key = sort_key(order) if order is not None else None
        keys = [key(v) for v in results] if key else []
        self.active[tag] = Context(
            tag=tag,
            uid=uid,
            criteria=freeze(criteria, sel),
            order=key,
            needs_meta=_needs_meta(criteria) or (order is not None and sort_needs_meta(order)),
            members=array("I", [] if key else sorted(v.uid for v in results)),
            keys=keys,
            by_uid={k[-1]: k for k in keys},
        )

    def cancel(self, tags: Iterable[str]) -> None:
        for tag in tags:
            self.active.pop(tag, None)

    def saw(self, messages: Iterable[MessageInfo]) -> None:
        """Our own flag changes (STORE, FETCH setting \\Seen): evaluated at the next update."""
        if self.active:
            self.backlog.update((m.uid, m) for m in messages)

    def expunged(self, uids: Iterable[int], number: Callable[[int], int]) -> list[bytes]:
        """REMOVEFROM for members about to be announced as expunged (numbers still valid)."""
        gone = sorted(set(uids))
        out = []
        for ctx in self.active.values():
            removed = [(ctx.remove(u), u) for u in gone if u in ctx]
            if removed:
                out.append(_response(ctx, [("REMOVEFROM", _runs(removed, True))], number))
        for u in gone:
            self.backlog.pop(u, None)
        return out

    async def update(self, s: Session, changed: Iterable[MessageInfo]) -> list[bytes]:
        """ADDTO/REMOVEFROM for messages that changed or arrived (all known to the client now)."""
        sel = s.selected
        assert sel is not None
        seen = {m.uid: m for m in changed}
        seen.update(self.backlog)
        self.backlog.clear()
        if not self.active or not seen:
            return []
        infos = [(sel.seq(u), seen[u]) for u in sorted(seen) if sel.seq(u) and u not in sel.pending]
        views = await load_views(s, infos, any(ctx.needs_meta for ctx in self.active.values()))
        blobs = {m.uid: m.blob_id for _, m in infos}
        out = []
        for ctx in self.active.values():
            matching, unread = await evaluate(s, ctx.criteria, views, blobs, None, "RETURN (UPDATE)")
            now = {v.uid for v in matching} | unread  # an unreadable member stays one
            removed = [(ctx.remove(v.uid), v.uid) for v in views if v.uid in ctx and v.uid not in now]
            added = [(ctx.add(v), v.uid) for v in matching if v.uid not in ctx]
            items = []
            if removed:
                items.append(("REMOVEFROM", _runs(removed, True)))
            if added:
                items.append(("ADDTO", _runs(added, False)))
            if items:
                out.append(_response(ctx, items, sel.seq))
        return out


def _response(ctx: Context, items: list[tuple[str, list[Position]]], number: Callable[[int], int]) -> bytes:
    if not ctx.uid:
        items = [(name, [(pos, [number(u) for u in uids]) for pos, uids in runs]) for name, runs in items]
    return enc.esearch_update(ctx.tag, uid=ctx.uid, items=items)
