"""Which names LIST and LSUB return, and what is known about each (RFC 9051 §6.3.9, RFC 5258 §3-5,
RFC 3501 §6.3.9, RFC 6154 §3); the command handlers only turn the rows into responses.

Candidates are the names that satisfy the selection criteria (the existing folders, or the subscribed
names, or the special-use folders) and, where the RFCs return them, the levels above those names:
for a plain LIST, the levels that do not exist (shown ``\\Noselect`` / ``\\NonExistent``); with
RECURSIVEMATCH (and for LSUB, whose ``\\Noselect`` means the same, RFC 3501 §6.3.9), a level whose
descendant satisfies the criteria without matching the patterns (CHILDINFO, RFC 5258 §3.5). Redundant
CHILDINFO is suppressed: a parent all of whose selected descendants are listed anyway is not.

The work is bounded by the folder and subscription limits (``[limits] folders_per_mailbox``,
``folder_depth``) times the patterns, and given back to the event loop every ``_BATCH`` steps
(:func:`paced`), so that other sessions are served while one lists many names.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mailserver.imap.wildcard import Pattern
from mailserver.store.store import SEPARATOR, FolderInfo

__all__ = ["Row", "paced", "rows"]

_BATCH = 200
T = TypeVar("T")


async def paced(items: Iterable[T]) -> AsyncIterator[T]:
    """The items, with a turn of the event loop every ``_BATCH`` of them."""
    for i, item in enumerate(items, 1):
        yield item
        if i % _BATCH == 0:
            await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class Row:
    """One name to list. ``folder`` is None when no folder has the name; ``selected`` when it
    satisfies the selection criteria; ``childinfo`` when a descendant does but is not listed."""

    name: str
    folder: FolderInfo | None
    selected: bool
    subscribed: bool
    has_children: bool
    childinfo: bool


def _with_parents(names: Iterable[str]) -> set[str]:
    """The names and every level above them; a walk up stops at a level already known."""
    out = set(names)
    for name in list(out):
        end = name.rfind(SEPARATOR)
        while end > 0 and name[:end] not in out:
            out.add(name[:end])
            end = name.rfind(SEPARATOR, 0, end)
    return out


def _has_descendant(ordered: Sequence[str], name: str) -> bool:
    """Whether a sorted list holds a name below ``name``: those share a prefix, so are contiguous."""
    prefix = name + SEPARATOR
    i = bisect_left(ordered, prefix)
    return i < len(ordered) and ordered[i].startswith(prefix)


async def rows(
    folders: Iterable[FolderInfo],
    subscriptions: Iterable[str],
    patterns: Sequence[str],
    *,
    subscribed_only: bool = False,
    special_use_only: bool = False,
    recursive: bool = False,
) -> list[Row]:
    """The rows for canonical ``patterns`` (``wildcard.canonical``), in name order; a name matched by
    several patterns is listed once (RFC 5258 §3)."""
    by_name = {f.name: f for f in folders}
    subscribed = set(subscriptions)
    existing = sorted(by_name)
    filtered = subscribed_only or special_use_only
    chosen = subscribed if subscribed_only else set(by_name)
    if special_use_only:
        chosen = {n for n in chosen if n in by_name and by_name[n].special_use}
    candidates = _with_parents(chosen) if recursive or not filtered else chosen
    compiled = [Pattern(p, SEPARATOR) for p in dict.fromkeys(patterns)]
    tries = ((name, pattern) for name in candidates for pattern in compiled)
    matched = {name async for name, pattern in paced(tries) if pattern.match(name)}
    unlisted = sorted(chosen - matched) if recursive else []
    out: list[Row] = []
    for name in sorted(matched):
        selected = name in chosen
        childinfo = recursive and _has_descendant(unlisted, name)
        if filtered and not selected and not childinfo:
            continue
        has_children = _has_descendant(existing, name)
        out.append(Row(name, by_name.get(name), selected, name in subscribed, has_children, childinfo))
    return out
