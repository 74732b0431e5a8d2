"""IMAP SORT ordering (RFC 5256 §3, RFC 5957 DISPLAYFROM/DISPLAYTO) over cached metadata.

String keys are compared in i;unicode-casemap form (RFC 5051), the collation RFC 5256 §7 mandates:
letters sort as their uppercase, so before ``[`` and ``_``, and "Éric" sorts with "Eric", before
"Zoé". :func:`mailserver.store.mime.analyze` computes them at delivery (the address keys from the
ENVELOPE, as RFC 5256 §3 defines them on its address structures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

from mailserver.store.mime import sort_keys

from .protocol.commands import SortCriterion
from .search import MessageView, SearchError, _aware, _headers

__all__ = ["collation_keys", "needs_meta", "sent_date", "sort", "sort_key"]


def collation_keys(view: MessageView) -> dict[str, str]:
    """The cached string keys (``subject``, ``from``, ``to``, ``cc``, ``displayfrom``, ``displayto``);
    a message analysed before they were cached gets them computed now."""
    headers = _headers(view)
    keys = headers.get("sort")
    if keys is None:
        keys = sort_keys(view.meta.get("envelope") or [None] * 10, headers.get("base_subject"))
    return keys


def _string(name: str) -> Callable[[MessageView], str]:
    return lambda view: collation_keys(view)[name]


def sent_date(view: MessageView) -> datetime:
    """RFC 5256 §2.2 sent date: the Date header as an instant, else the internal date."""
    value = _headers(view).get("date")
    if value:
        try:
            return _aware(datetime.fromisoformat(value))
        except ValueError:
            pass
    return _aware(view.internal_date)


_KEYS: dict[str, Callable[[MessageView], Any]] = {
    "ARRIVAL": lambda view: _aware(view.internal_date),
    "CC": _string("cc"),
    "DATE": sent_date,
    "FROM": _string("from"),
    "SIZE": attrgetter("size"),
    "SUBJECT": _string("subject"),
    "TO": _string("to"),
    "DISPLAYFROM": _string("displayfrom"),
    "DISPLAYTO": _string("displayto"),
}


def _check(criteria: Sequence[SortCriterion]) -> None:
    for criterion in criteria:
        if criterion.key not in _KEYS:
            raise SearchError(f"unsupported sort key {criterion.key}")


class _Descending:
    """A key that sorts in reverse (REVERSE on one criterion, RFC 5256 §3)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __lt__(self, other: _Descending) -> bool:
        return other.value < self.value

    __hash__ = None  # type: ignore[assignment]


def sort_key(criteria: Sequence[SortCriterion]) -> Callable[[MessageView], tuple[Any, ...]]:
    """One comparable key per message giving :func:`sort`'s order, the UID last as the tie-break
    (the same order as sequence numbers, and stable across expunges): a SORT context (RFC 5267
    §4.3) keeps its members' keys to place later messages."""
    _check(criteria)
    parts = [(_KEYS[c.key], c.reverse) for c in criteria]

    def key(view: MessageView) -> tuple[Any, ...]:
        return (*(_Descending(get(view)) if reverse else get(view) for get, reverse in parts), view.uid)

    return key


def needs_meta(criteria: Sequence[SortCriterion]) -> bool:
    """Whether these keys read the cached analysis (all but ARRIVAL and SIZE)."""
    return any(c.key not in ("ARRIVAL", "SIZE") for c in criteria)


def sort(criteria: Sequence[SortCriterion], messages: list[MessageView]) -> list[MessageView]:
    """``messages`` ordered by ``criteria``; REVERSE flips one key and leaves the
    sequence-number tie-break ascending (RFC 5256 §3).

    Python's sort is stable, also with ``reverse=True``, so sorting by the last criterion
    first and the first criterion last yields the lexicographic order of all keys.
    """
    _check(criteria)
    out = sorted(messages, key=attrgetter("seq"))
    for criterion in reversed(criteria):
        out.sort(key=_KEYS[criterion.key], reverse=criterion.reverse)
    return out
