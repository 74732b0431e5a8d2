"""IMAP SORT ordering (RFC 5256 §3, RFC 5957 DISPLAYFROM/DISPLAYTO) over cached metadata.

String keys are compared with i;unicode-casemap (RFC 5051), the collation RFC 5256 §7 mandates:
each character is replaced by its titlecase and canonically decomposed, and the results compare
as code points (the order of their UTF-8 octets). For ASCII this is an uppercase fold, so letters
sort before ``[`` and ``_``; "Éric" sorts with "Eric", before "Zoé".

The address keys are read from the cached ENVELOPE (RFC 5256 §3 defines them on its address
structures); the base subject is the one :func:`mailserver.store.mime.analyze` extracted at delivery.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from operator import attrgetter
from typing import Any

from mailserver.store.mime import decode_header

from .protocol.commands import SortCriterion
from .search import MessageView, SearchError, _aware, _headers

__all__ = ["casemap", "needs_meta", "sent_date", "sort", "sort_key"]

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPED = re.compile(r"\\(.)")
# Envelope positions (RFC 9051 §7.5.2) of the address fields that SORT reads.
_FROM, _TO, _CC = 2, 5, 6


@cache
def _titlecase() -> dict[int, str]:
    """Characters whose simple titlecase mapping differs from themselves (all below U+20000)."""
    return {i: t for i in range(0x20000) if len(t := chr(i).title()) == 1 and t != chr(i)}


def casemap(text: str) -> str:
    """The i;unicode-casemap (RFC 5051 §2) form of ``text``: equal forms are equal under the
    collation, and forms compare (as Python strings) in the collation's order."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFD", text.translate(_titlecase()))


def sent_date(view: MessageView) -> datetime:
    """RFC 5256 §2.2 sent date: the Date header as an instant, else the internal date."""
    value = _headers(view).get("date")
    if value:
        try:
            return _aware(datetime.fromisoformat(value))
        except ValueError:
            pass
    return _aware(view.internal_date)


def _first_address(view: MessageView, field: int) -> list[str | None] | None:
    """The first address structure of an envelope field; a group's start carries its name."""
    envelope = view.meta.get("envelope") or []
    addresses = envelope[field] if len(envelope) > field else None
    return addresses[0] if addresses else None


def _unquoted(local: str) -> str:
    """RFC 9051 §9 addr-mailbox is the local-part "after removing [RFC 5322] quoting"."""
    if '"' not in local:
        return local
    return _QUOTED.sub(lambda m: _ESCAPED.sub(r"\1", m.group(1)), local)


def _mailbox(field: int) -> Callable[[MessageView], str]:
    """RFC 5256 §3 FROM / TO / CC: addr-mailbox of the first address, "" when there is none."""

    def key(view: MessageView) -> str:
        first = _first_address(view, field)
        return casemap(_unquoted(first[2] or "")) if first else ""

    return key


def _display(field: int) -> Callable[[MessageView], str]:
    """RFC 5957 §3 DISPLAYFROM / DISPLAYTO: the decoded display name of the first address, else
    its addr-mailbox "@" addr-host (a group: its name)."""

    def key(view: MessageView) -> str:
        first = _first_address(view, field)
        if first is None:
            return ""
        name, _adl, local, host = first
        shown = decode_header(name).strip() if name else ""
        if not shown:
            local = _unquoted(local or "")
            shown = f"{local}@{host}" if host is not None else local
        return casemap(shown)

    return key


def _subject(view: MessageView) -> str:
    return casemap(_headers(view).get("base_subject") or "")


_KEYS: dict[str, Callable[[MessageView], Any]] = {
    "ARRIVAL": lambda view: _aware(view.internal_date),
    "CC": _mailbox(_CC),
    "DATE": sent_date,
    "FROM": _mailbox(_FROM),
    "SIZE": attrgetter("size"),
    "SUBJECT": _subject,
    "TO": _mailbox(_TO),
    "DISPLAYFROM": _display(_FROM),
    "DISPLAYTO": _display(_TO),
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
