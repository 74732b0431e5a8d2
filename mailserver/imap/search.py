"""IMAP SEARCH evaluation (RFC 9051 §6.4.4, RFC 3501 §6.4.4) over cached message metadata.

Pure functions: the session hands over :class:`MessageView` objects and a ``load_raw``
coroutine; nothing here touches sockets or the database.

Fetching and decoding a message is by far the most expensive step, so evaluation runs in
two phases that guarantee ``load_raw`` is called at most once per message, and only for
messages that the cheap keys leave undecided:

1. The key tree is evaluated over sets of message indices with three-valued logic
   (true / false / unknown). Flags, sizes, dates, sequence sets, MODSEQ and the five
   headers cached by :func:`mailserver.store.mime.analyze` (FROM TO CC BCC SUBJECT) are
   decided; HEADER on any other field, BODY and TEXT stay unknown unless the cache already
   answers them.
2. Each message left unknown is loaded and the whole tree is evaluated on it.

String matching (RFC 9051 §6.4.4 "case-insensitive substring"): both sides are folded with
:func:`fold`, an NFKC case fold close to i;unicode-casemap (RFC 5051) but keeping accents
significant ("cafe" does not match "café", "CAFÉ" does; compatibility forms such as
full-width letters or ligatures fold to their plain equivalents). Header values are
unfolded (CRLF removed, whitespace kept: RFC 5322 §2.2.3) and RFC 2047-decoded; the cached
FROM TO CC BCC SUBJECT hold only the first occurrence, other fields match any occurrence.
"""

from __future__ import annotations

import unicodedata
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from mailserver.charsets import decode_text
from mailserver.headers import decode_header
from mailserver.store.mime import address_texts, binary_section, section

from .protocol.commands import (
    AllKey,
    AndKey,
    BodyKey,
    DateField,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SequenceKey,
    SizeKey,
    TextKey,
    WithinKey,
)
from .protocol.sequence import SequenceSet

__all__ = ["CACHED_HEADERS", "MessageView", "SearchError", "fold", "search"]

CACHED_HEADERS = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT"})
"""Header fields whose decoded first occurrence is in ``meta["headers"]``: no load needed."""

_ENVELOPE_FIELDS = {"from": 2, "to": 5, "cc": 6, "bcc": 7}
"""Positions of the address fields in the cached ENVELOPE (RFC 9051 §7.5.2)."""


@dataclass(frozen=True, slots=True)
class MessageView:
    """What the engine needs to know about one message of the selected mailbox."""

    seq: int
    uid: int
    modseq: int
    flags: frozenset[str]
    size: int
    internal_date: datetime
    meta: dict[str, Any]


class SearchError(Exception):
    """A search, sort or thread request the engine cannot evaluate; the text suits a tagged NO/BAD."""


def fold(text: str) -> str:
    """Case- and compatibility-fold ``text`` for substring matching (see the module docstring).

    NFKC runs before the case fold (so "ℌ" becomes "h", not "H") and after it (so the
    fold of a precomposed letter matches its decomposed spelling).
    """
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _headers(view: MessageView) -> dict[str, Any]:
    return view.meta.get("headers") or {}


def _aware(value: datetime) -> datetime:
    """Internal dates come UTC-aware from the store; a naive one is read as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _unfold(block: bytes) -> str:
    """Header block to text, one field per line: folding removed (RFC 5322 §2.2.3)."""
    return decode_text(block.replace(b"\r\n", b"\n").replace(b"\n ", b" ").replace(b"\n\t", b"\t"))


def _text_parts(meta: dict[str, Any]) -> Iterator[tuple[str, list[int], str | None]]:
    """Yield ``("text", path, charset)`` for text leaves and ``("header", path, None)`` for the
    header of each encapsulated message, with paths numbered as ``section`` resolves them."""
    root = meta.get("bodystructure")
    if root is None:
        return
    stack: list[tuple[dict[str, Any], list[int], bool]] = [(root, [], True)]
    while stack:
        node, path, is_message_body = stack.pop()
        if node["type"] == "multipart":
            # RFC 9051 §6.4.5: children of a multipart are numbered from 1 under its path.
            stack.extend(
                (child, [*path, i], False) for i, child in reversed(list(enumerate(node["parts"], 1)))
            )
            continue
        if is_message_body:
            path = [*path, 1]  # A non-multipart message body is its part 1.
        if "body" in node:
            yield "header", path, None
            stack.append((node["body"], path, True))
        elif node["type"] == "text":
            charset = next((v for k, v in node.get("params") or [] if k == "charset"), None)
            yield "text", path, charset


class _Doc:
    """One loaded message; decoded and folded texts are computed once and shared by all keys."""

    __slots__ = ("_body", "_fields", "_header", "meta", "raw", "view")

    def __init__(self, view: MessageView, raw: bytes) -> None:
        self.view = view
        self.meta = view.meta
        self.raw = raw
        self._header: str | None = None
        self._body: str | None = None
        self._fields: dict[str, list[str]] = {}

    def field(self, name: str) -> list[str]:
        """Folded values of every occurrence of header field ``name`` (RFC 9051: "a header field")."""
        values = self._fields.get(name)
        if values is None:
            block = section(self.raw, self.meta, [], "HEADER.FIELDS", [name])
            lines = _unfold(block).split("\n")
            values = [fold(decode_header(line.partition(":")[2].strip())) for line in lines if line]
            self._fields[name] = values
        return values

    @property
    def header(self) -> str:
        if self._header is None:
            self._header = fold(decode_header(_unfold(section(self.raw, self.meta, [], "HEADER"))))
        return self._header

    @property
    def body(self) -> str:
        """Decoded text parts and encapsulated message headers; other parts are skipped."""
        if self._body is None:
            chunks: list[str] = []
            for kind, path, charset in _text_parts(self.meta):
                if kind == "header":
                    chunks.append(decode_header(_unfold(section(self.raw, self.meta, path, "HEADER"))))
                    continue
                data = binary_section(self.raw, self.meta, path)
                if data is None:  # Unknown transfer encoding: search the bytes as they are.
                    data = section(self.raw, self.meta, path, None)
                chunks.append(decode_text(data, charset))
            self._body = fold("\n".join(chunks))
        return self._body


# --------------------------------------------------------------------------- compiled key tree


Indices = set[int]


class _Node(ABC):
    """A compiled search key. ``needs_raw`` orders siblings so that cheap keys run first."""

    __slots__ = ()
    needs_raw = False

    @abstractmethod
    def decide(self, msgs: list[MessageView], cands: Iterable[int]) -> tuple[Indices, Indices]:
        """Phase 1: split ``cands`` into (true, unknown); the rest is false."""

    @abstractmethod
    def match(self, doc: _Doc) -> bool:
        """Phase 2: the definitive answer for one loaded message."""


class _Cheap(_Node):
    __slots__ = ("pred",)

    def __init__(self, pred: Callable[[MessageView], bool]) -> None:
        self.pred = pred

    def decide(self, msgs: list[MessageView], cands: Iterable[int]) -> tuple[Indices, Indices]:
        pred = self.pred
        if isinstance(cands, range):  # The whole mailbox: skip the indexing.
            return {i for i, m in enumerate(msgs) if pred(m)}, set()
        return {i for i in cands if pred(msgs[i])}, set()

    def match(self, doc: _Doc) -> bool:
        return self.pred(doc.view)


class _All(_Node):
    __slots__ = ()

    def decide(self, msgs: list[MessageView], cands: Iterable[int]) -> tuple[Indices, Indices]:
        return set(cands), set()

    def match(self, doc: _Doc) -> bool:
        return True


class _Raw(_Node):
    """A key that may need the message: ``guess`` answers from the cache (None = unknown)."""

    __slots__ = ("full", "guess")
    needs_raw = True

    def __init__(self, guess: Callable[[MessageView], bool | None], full: Callable[[_Doc], bool]) -> None:
        self.guess = guess
        self.full = full

    def decide(self, msgs: list[MessageView], cands: Iterable[int]) -> tuple[Indices, Indices]:
        true: Indices = set()
        unknown: Indices = set()
        for i in cands:
            answer = self.guess(msgs[i])
            if answer is None:
                unknown.add(i)
            elif answer:
                true.add(i)
        return true, unknown

    def match(self, doc: _Doc) -> bool:
        answer = self.guess(doc.view)
        return self.full(doc) if answer is None else answer


class _And(_Node):
    __slots__ = ("children", "needs_raw")

    def __init__(self, children: list[_Node]) -> None:
        self.children = sorted(children, key=lambda n: n.needs_raw)
        self.needs_raw = any(n.needs_raw for n in children)

    def decide(self, msgs: list[MessageView], cands: Iterable[int]) -> tuple[Indices, Indices]:
        true: Indices = set()
        unknown: Indices = set()
        for n, child in enumerate(self.children):
            if n == 0:
                true, unknown = child.decide(msgs, cands)
                continue
            if not true and not unknown:
                break
            t, u = child.decide(msgs, true | unknown if unknown else true)
            true, unknown = true & t, (unknown & t) | u
        return true, unknown

    def match(self, doc: _Doc) -> bool:
        return all(child.match(doc) for child in self.children)


class _Or(_Node):
    __slots__ = ("left", "needs_raw", "right")

    def __init__(self, left: _Node, right: _Node) -> None:
        self.left, self.right = (right, left) if left.needs_raw and not right.needs_raw else (left, right)
        self.needs_raw = left.needs_raw or right.needs_raw

    def decide(self, msgs: list[MessageView], cands: Iterable[int]) -> tuple[Indices, Indices]:
        cands = set(cands)
        t1, u1 = self.left.decide(msgs, cands)
        t2, u2 = self.right.decide(msgs, cands - t1)
        return t1 | t2, (u1 - t2) | u2

    def match(self, doc: _Doc) -> bool:
        return self.left.match(doc) or self.right.match(doc)


class _Not(_Node):
    __slots__ = ("child", "needs_raw")

    def __init__(self, child: _Node) -> None:
        self.child = child
        self.needs_raw = child.needs_raw

    def decide(self, msgs: list[MessageView], cands: Iterable[int]) -> tuple[Indices, Indices]:
        cands = set(cands)
        t, u = self.child.decide(msgs, cands)
        return cands - t - u, u

    def match(self, doc: _Doc) -> bool:
        return not self.child.match(doc)


# --------------------------------------------------------------------------- leaf compilers


@dataclass(frozen=True, slots=True)
class _Context:
    largest_seq: int
    largest_uid: int
    saved: SequenceSet | None
    recent: set[int]
    now: datetime


def _in_ranges(ranges: list[tuple[int, int]]) -> Callable[[int], bool]:
    """Membership in merged, sorted ranges by bisection: no per-message expansion."""
    starts = [lo for lo, _ in ranges]

    def contains(n: int) -> bool:
        i = bisect_right(starts, n) - 1
        return i >= 0 and n <= ranges[i][1]

    return contains


def _sequence(key: SequenceKey, ctx: _Context) -> _Node:
    """Sequence or UID set; ``*`` is the largest number in use (RFC 9051 §9).

    ``$`` (SEARCHRES, RFC 5182 §2.1) designates the messages of the saved result whatever
    the command; the session keeps that result as UIDs, so ``$`` is always matched on UIDs
    and an absent result matches nothing.
    """
    plain = SequenceSet(key.sequence_set.ranges)
    in_set = _in_ranges(plain.resolve(ctx.largest_uid if key.uid else ctx.largest_seq))
    if key.sequence_set.saved and ctx.saved is not None:
        in_saved = _in_ranges(ctx.saved.resolve(ctx.largest_uid))
        if key.uid:
            return _Cheap(lambda m: in_set(m.uid) or in_saved(m.uid))
        return _Cheap(lambda m: in_set(m.seq) or in_saved(m.uid))
    if key.uid:
        return _Cheap(lambda m: in_set(m.uid))
    return _Cheap(lambda m: in_set(m.seq))


def _flag(key: FlagKey, ctx: _Context) -> _Node:
    """System flags arrive canonical from the parser and the store; keywords compare
    case-insensitively (RFC 9051 §2.3.2). \\Recent comes from the session's ``recent`` UIDs."""
    flag, present = key.flag, key.present
    if flag == "\\Recent":
        recent = ctx.recent
        return _Cheap((lambda m: m.uid in recent) if present else (lambda m: m.uid not in recent))
    if flag.startswith("\\"):
        return _Cheap((lambda m: flag in m.flags) if present else (lambda m: flag not in m.flags))
    lowered = flag.lower()
    seen: dict[frozenset[str], bool] = {}  # Flag sets repeat across a mailbox: fold each once.

    def has(m: MessageView) -> bool:
        answer = seen.get(m.flags)
        if answer is None:
            answer = seen[m.flags] = any(f.lower() == lowered for f in m.flags) == present
        return answer

    return _Cheap(has)


def _date(key: DateKey) -> _Node:
    """BEFORE/ON/SINCE disregard time and timezone (RFC 9051 §6.4.4).

    INTERNAL: the day of the internal date in UTC, as the store keeps it. SENT: the day
    written in the Date header, in the sender's own zone (the cached ISO string starts with
    it); a message without a parsable Date header matches no SENT key.
    """
    if key.op not in ("BEFORE", "ON", "SINCE"):
        raise SearchError(f"unknown date comparison {key.op}")
    op = key.op
    if key.field is DateField.SENT:
        day = key.date.isoformat()

        def sent(m: MessageView) -> bool:
            value = _headers(m).get("date")
            if not value:
                return False
            d = value[:10]
            return d < day if op == "BEFORE" else d == day if op == "ON" else d >= day

        return _Cheap(sent)
    start = datetime.combine(key.date, time(), UTC)
    if op == "BEFORE":
        return _internal_between(None, start)
    return _internal_between(start, start + timedelta(days=1) if op == "ON" else None)


def _internal_between(low: datetime | None, high: datetime | None) -> _Node:
    """``low <= internal date < high`` (either bound optional), as an instant."""

    def between(m: MessageView) -> bool:
        when = m.internal_date
        if when.tzinfo is None:  # The store returns aware UTC; read a naive value as UTC.
            when = when.replace(tzinfo=UTC)
        return (low is None or when >= low) and (high is None or when < high)

    return _Cheap(between)


def _addresses(m: MessageView, name: str) -> str:
    """A reader's view of an address field for a message analysed before it was cached."""
    envelope = m.meta.get("envelope") or [None] * 10
    return address_texts(envelope[_ENVELOPE_FIELDS[name]])


def _header(key: HeaderKey) -> _Node:
    """Substring of the decoded field value; an empty string means "field present".

    FROM TO CC BCC match "the envelope structure's field" (RFC 9051 §6.4.4): the header as
    written, or any of its parsed addresses (so that comments, folding or quoting inside an
    address do not hide it).
    """
    name = key.field.upper()
    needle = fold(key.value)
    if name in CACHED_HEADERS:
        cached = name.lower()
        if not needle:
            return _Cheap(lambda m: _headers(m).get(cached) is not None)
        if cached not in _ENVELOPE_FIELDS:
            return _Cheap(lambda m: needle in fold(_headers(m).get(cached) or ""))
        seen: dict[tuple[str | None, str], bool] = {}  # Correspondents repeat: fold each text once.

        def hit(m: MessageView) -> bool:
            h = _headers(m)
            addresses = h.get("addresses")
            key = (h.get(cached), addresses.get(cached) if addresses is not None else _addresses(m, cached))
            answer = seen.get(key)
            if answer is None:
                answer = seen[key] = needle in fold(f"{key[0] or ''}\n{key[1] or ''}")
            return answer

        return _Cheap(hit)
    if not needle:
        return _Raw(lambda m: None, lambda doc: bool(doc.field(name)))
    return _Raw(lambda m: None, lambda doc: any(needle in v for v in doc.field(name)))


def _cached_header_hit(m: MessageView, needle: str) -> bool:
    h = _headers(m)
    return any(needle in fold(h.get(name) or "") for name in ("subject", "from", "to", "cc", "bcc"))


def _body(key: BodyKey) -> _Node:
    """RFC 9051 §6.4.4 BODY: decoded text parts only; a message without any cannot match."""
    needle = fold(key.value)

    def guess(m: MessageView) -> bool | None:
        return None if any(True for _ in _text_parts(m.meta)) else False

    return _Raw(guess, lambda doc: needle in doc.body)


def _text(key: TextKey) -> _Node:
    """TEXT = header or body; a hit in the cached headers needs no load."""
    needle = fold(key.value)
    return _Raw(
        lambda m: True if _cached_header_hit(m, needle) else None,
        lambda doc: needle in doc.header or needle in doc.body,
    )


def _compile(key: SearchKey, ctx: _Context) -> _Node:
    match key:
        case AllKey():
            return _All()
        case AndKey(keys=keys):
            return _And([_compile(k, ctx) for k in keys])
        case OrKey(left=left, right=right):
            return _Or(_compile(left, ctx), _compile(right, ctx))
        case NotKey(key=inner):
            return _Not(_compile(inner, ctx))
        case FlagKey():
            return _flag(key, ctx)
        case HeaderKey():
            return _header(key)
        case BodyKey():
            return _body(key)
        case TextKey():
            return _text(key)
        case DateKey():
            return _date(key)
        case SizeKey(op="LARGER", size=size):
            return _Cheap(lambda m: m.size > size)
        case SizeKey(op="SMALLER", size=size):
            return _Cheap(lambda m: m.size < size)
        case SequenceKey():
            return _sequence(key, ctx)
        case ModSeqKey(modseq=modseq):
            # RFC 7162 §3.1.5: per-flag entries share the message's mod-sequence here.
            return _Cheap(lambda m: m.modseq >= modseq)
        case WithinKey(older=older, seconds=seconds):
            # RFC 5032 §3: OLDER is strictly more than the interval ago, YOUNGER within it.
            cutoff = ctx.now - timedelta(seconds=seconds)
            return _internal_between(None, cutoff) if older else _internal_between(cutoff, None)
    raise SearchError(f"unsupported search key {type(key).__name__}")


async def search(
    key: SearchKey,
    messages: list[MessageView],
    *,
    load_raw: Callable[[MessageView], Awaitable[bytes | None]],
    largest_seq: int,
    largest_uid: int,
    saved: SequenceSet | None,
    recent: set[int],
    now: datetime | None = None,
) -> list[MessageView]:
    """Messages of ``messages`` matching ``key``, in their original order.

    ``saved`` is the SEARCHRES result as UIDs, ``recent`` the UIDs that are \\Recent in this
    session; ``now`` (default: current time) anchors OLDER/YOUNGER. ``load_raw`` is awaited
    at most once per message, only for messages the cached data cannot decide; when it returns
    None (the message cannot be read) the message is left out, whatever the key.
    """
    ctx = _Context(largest_seq, largest_uid, saved, recent, now or datetime.now(UTC))
    root = _compile(key, ctx)
    true, unknown = root.decide(messages, range(len(messages)))
    for i in sorted(unknown):
        view = messages[i]
        raw = await load_raw(view)
        if raw is not None and root.match(_Doc(view, raw)):
            true.add(i)
    return [messages[i] for i in sorted(true)]
