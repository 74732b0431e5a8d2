"""IMAP sequence sets (RFC 9051 §9 ``sequence-set``, RFC 5182 ``$``).

A set is kept as the ranges the client sent, with ``*`` unresolved, because its
value depends on the mailbox at execution time (highest sequence number or UID).
Resolution merges ranges so that ``1:1000000000`` never materialises a list.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["STAR", "SequenceSet", "compress"]

STAR = None
"""Marker for ``*`` inside :attr:`SequenceSet.ranges`."""

_MAX_NUMBER = 0xFFFFFFFF  # RFC 9051 §9: nz-number fits in 32 bits.


def _parse_number(text: str) -> int | None:
    if text == "*":
        return STAR
    if not text.isdigit() or not text.isascii() or text[0] == "0":
        raise ValueError(f"invalid sequence number {text!r}")
    value = int(text)
    if value > _MAX_NUMBER:
        raise ValueError(f"sequence number out of range: {text}")
    return value


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed ``sequence-set``.

    ``ranges`` holds ``(first, last)`` pairs exactly as sent (either order, ``None`` for ``*``;
    a single number ``n`` is ``(n, n)``). ``saved`` is true when ``$`` (SEARCHRES, RFC 5182)
    appeared; the session must call :meth:`with_saved` before resolving.
    """

    ranges: tuple[tuple[int | None, int | None], ...]
    saved: bool = False

    @classmethod
    def parse(cls, text: str | bytes) -> SequenceSet:
        """Parse ``1,3:5,7:*`` or ``$``; raise :class:`ValueError` on bad syntax."""
        if isinstance(text, bytes):
            text = text.decode("ascii")
        if not text:
            raise ValueError("empty sequence set")
        ranges: list[tuple[int | None, int | None]] = []
        saved = False
        for item in text.split(","):
            if item == "$":
                saved = True
                continue
            first, sep, last = item.partition(":")
            lo = _parse_number(first)
            ranges.append((lo, _parse_number(last) if sep else lo))
        return cls(tuple(ranges), saved)

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SequenceSet:
        """Build the most compact set covering ``numbers`` (used for response sets)."""
        ranges: list[tuple[int | None, int | None]] = []
        start = prev = None
        for n in sorted(set(numbers)):
            if prev is not None and n == prev + 1:
                prev = n
                continue
            if start is not None:
                ranges.append((start, prev))
            start = prev = n
        if start is not None:
            ranges.append((start, prev))
        return cls(tuple(ranges))

    @property
    def has_star(self) -> bool:
        """True when the set refers to ``*`` and thus depends on the mailbox state."""
        return any(lo is None or hi is None for lo, hi in self.ranges)

    def with_saved(self, saved: SequenceSet | None) -> SequenceSet:
        """Substitute ``$`` with the SEARCHRES result (RFC 5182 §2.1; empty if nothing saved)."""
        if not self.saved:
            return self
        extra = saved.ranges if saved is not None else ()
        return SequenceSet(self.ranges + extra)

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Return sorted, merged, inclusive ranges with ``*`` replaced by ``largest``.

        RFC 9051 §6.4.8: ``n:*`` with ``n`` above ``largest`` still means ``largest:n``; with an
        empty mailbox (``largest == 0``) any range touching ``*`` is empty.
        """
        spans: list[tuple[int, int]] = []
        for lo, hi in self.ranges:
            if lo is None or hi is None:
                if largest <= 0:
                    continue
                lo = largest if lo is None else lo
                hi = largest if hi is None else hi
            if lo > hi:
                lo, hi = hi, lo
            spans.append((lo, hi))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def iter(self, largest: int) -> Iterator[int]:
        """Yield message sequence numbers in ascending order, clipped to ``1..largest``."""
        for lo, hi in self.resolve(largest):
            if lo > largest:
                break
            yield from range(lo, min(hi, largest) + 1)

    def contains(self, number: int, largest: int) -> bool:
        """Membership test without expanding the set."""
        return any(lo <= number <= hi for lo, hi in self.resolve(largest))

    def select_uids(self, uids: Sequence[int]) -> list[int]:
        """Return the members of ``uids`` (sorted ascending) covered by this UID set.

        ``*`` is the highest UID in the mailbox (RFC 9051 §6.4.8); ranges are located by
        bisection, so the cost is proportional to the answer, not to the numeric span.
        """
        if not uids:
            return []
        out: list[int] = []
        for lo, hi in self.resolve(uids[-1]):
            out.extend(uids[bisect_left(uids, lo) : bisect_right(uids, hi)])
        return out

    def __str__(self) -> str:
        parts = []
        for lo, hi in self.ranges:
            a = "*" if lo is None else str(lo)
            parts.append(a if lo == hi else f"{a}:{'*' if hi is None else hi}")
        if self.saved:
            parts.append("$")
        return ",".join(parts)


def compress(numbers: Iterable[int]) -> str:
    """Render numbers as a compact sequence set, e.g. ``[1, 2, 3, 5]`` -> ``1:3,5``."""
    return str(SequenceSet.from_numbers(numbers))
