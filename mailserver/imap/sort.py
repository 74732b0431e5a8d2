"""IMAP SORT ordering (RFC 5256 §3, RFC 5957 DISPLAYFROM/DISPLAYTO) over cached metadata.

The string keys (addr-mailbox, display names, base subject) are stored by
:func:`mailserver.store.mime.analyze` already folded with i;ascii-casemap, the default
collation of RFC 5256 §3, so sorting compares them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

from .protocol.commands import SortCriterion
from .search import MessageView, SearchError, _aware, _headers

__all__ = ["sent_date", "sort"]


def sent_date(view: MessageView) -> datetime:
    """RFC 5256 §2.2 sent date: the Date header as an instant, else the internal date."""
    value = _headers(view).get("date")
    if value:
        try:
            return _aware(datetime.fromisoformat(value))
        except ValueError:
            pass
    return _aware(view.internal_date)


def _header_key(name: str) -> Callable[[MessageView], Any]:
    return lambda view: _headers(view).get(name) or ""


_KEYS: dict[str, Callable[[MessageView], Any]] = {
    "ARRIVAL": lambda view: _aware(view.internal_date),
    "CC": _header_key("cc_sort"),
    "DATE": sent_date,
    "FROM": _header_key("from_sort"),
    "SIZE": attrgetter("size"),
    "SUBJECT": _header_key("base_subject"),
    "TO": _header_key("to_sort"),
    "DISPLAYFROM": _header_key("display_from"),
    "DISPLAYTO": _header_key("display_to"),
}


def sort(criteria: Sequence[SortCriterion], messages: list[MessageView]) -> list[MessageView]:
    """``messages`` ordered by ``criteria``; REVERSE flips one key and leaves the
    sequence-number tie-break ascending (RFC 5256 §3).

    Python's sort is stable, also with ``reverse=True``, so sorting by the last criterion
    first and the first criterion last yields the lexicographic order of all keys.
    """
    for criterion in criteria:
        if criterion.key not in _KEYS:
            raise SearchError(f"unsupported sort key {criterion.key}")
    out = sorted(messages, key=attrgetter("seq"))
    for criterion in reversed(criteria):
        out.sort(key=_KEYS[criterion.key], reverse=criterion.reverse)
    return out
