"""Serialisation of IMAP server responses (RFC 9051 §7 and §9 ``response``).

Everything returns ``bytes`` ready to write, with CRLF where a full response is built.
String helpers pick the cheapest legal form: atom, then quoted, then literal. Octets
that cannot appear in a quoted string (CR, LF, NUL; 8-bit unless UTF8=ACCEPT is
enabled) force a literal, as RFC 9051 §4.3 requires.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from . import mutf7
from .sequence import compress

__all__ = [
    "CRLF",
    "Code",
    "astring",
    "capability",
    "continuation",
    "date_time",
    "enabled",
    "encode_bodystructure",
    "encode_envelope",
    "esearch",
    "exists",
    "expunge",
    "fetch",
    "flag_list",
    "flags",
    "format_datetime",
    "id_response",
    "list_response",
    "literal",
    "mailbox",
    "namespace",
    "nstring",
    "quota",
    "quotaroot",
    "quoted",
    "recent",
    "search",
    "section_data",
    "sequence_set",
    "sort",
    "status",
    "status_response",
    "string",
    "tagged",
    "thread",
    "untagged",
    "vanished",
]

CRLF = b"\r\n"

_ATOM_SAFE = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+\Z')
_ASTRING_SAFE = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+\Z')
_QUOTE_UNSAFE_ASCII = re.compile(rb"[\x00\r\n\x80-\xff]")
_QUOTE_UNSAFE_UTF8 = re.compile(rb"[\x00\r\n]")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Str = str | bytes


def _b(value: Str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


# --- strings (RFC 9051 §4.3) ---------------------------------------------------------------


def literal(data: bytes, *, binary: bool = False) -> bytes:
    """``{n}CRLF data``, or ``~{n}`` literal8 (RFC 3516) when ``binary``."""
    return b"%s{%d}\r\n%s" % (b"~" if binary else b"", len(data), data)


def quoted(value: Str) -> bytes:
    """Quoted string; caller guarantees no CR/LF/NUL (see :func:`string`)."""
    raw = _b(value)
    if b"\\" in raw or b'"' in raw:
        raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + raw + b'"'


def string(value: Str, *, utf8: bool = False) -> bytes:
    """Quoted if legal, else literal. 8-bit is quotable only under UTF8=ACCEPT (RFC 9051 §4.3)."""
    raw = _b(value)
    unsafe = _QUOTE_UNSAFE_UTF8 if utf8 else _QUOTE_UNSAFE_ASCII
    if unsafe.search(raw):
        return literal(raw)
    return quoted(raw)


def astring(value: Str, *, utf8: bool = False) -> bytes:
    raw = _b(value)
    if _ASTRING_SAFE.match(raw):
        return raw
    return string(raw, utf8=utf8)


def nstring(value: Str | None, *, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else string(value, utf8=utf8)


def mailbox(name: str, *, utf8: bool = False) -> bytes:
    """Mailbox name as astring, mUTF-7 encoded unless UTF8=ACCEPT is enabled (RFC 6855 §3)."""
    return astring(name if utf8 else mutf7.encode(name), utf8=utf8)


def flag_list(flag_names: Iterable[str]) -> bytes:
    return b"(" + " ".join(flag_names).encode("ascii") + b")"


def sequence_set(numbers: Iterable[int]) -> bytes:
    """Compressed set for responses, e.g. ``1:3,5`` (COPYUID, VANISHED, ESEARCH ALL)."""
    return compress(numbers).encode("ascii")


def format_datetime(dt: datetime) -> str:
    """RFC 9051 ``date-time`` body: ``dd-Mon-yyyy hh:mm:ss +zzzz`` (naive means UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    offset = dt.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f"{dt.day:02d}-{_MONTHS[dt.month - 1]}-{dt.year:04d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


def date_time(dt: datetime) -> bytes:
    return b'"' + format_datetime(dt).encode("ascii") + b'"'


# --- response codes (RFC 9051 §7.1, RFC 7162, RFC 4315, RFC 5530) ---------------------------


class Code:
    """Response code texts for the ``code`` argument of :func:`tagged` / :func:`untagged`."""

    ALERT = b"ALERT"
    PARSE = b"PARSE"
    READ_ONLY = b"READ-ONLY"
    READ_WRITE = b"READ-WRITE"
    TRYCREATE = b"TRYCREATE"
    NOMODSEQ = b"NOMODSEQ"
    CLOSED = b"CLOSED"
    UIDNOTSTICKY = b"UIDNOTSTICKY"
    OVERQUOTA = b"OVERQUOTA"
    ALREADYEXISTS = b"ALREADYEXISTS"
    NONEXISTENT = b"NONEXISTENT"
    CANNOT = b"CANNOT"
    LIMIT = b"LIMIT"
    AUTHENTICATIONFAILED = b"AUTHENTICATIONFAILED"
    AUTHORIZATIONFAILED = b"AUTHORIZATIONFAILED"
    EXPIRED = b"EXPIRED"
    UNAVAILABLE = b"UNAVAILABLE"
    SERVERBUG = b"SERVERBUG"
    CLIENTBUG = b"CLIENTBUG"
    INUSE = b"INUSE"
    EXPUNGEISSUED = b"EXPUNGEISSUED"
    CONTACTADMIN = b"CONTACTADMIN"
    PRIVACYREQUIRED = b"PRIVACYREQUIRED"
    NOPERM = b"NOPERM"
    USEATTR = b"USEATTR"
    TOOBIG = b"TOOBIG"
    HASCHILDREN = b"HASCHILDREN"
    CORRUPTION = b"CORRUPTION"
    NOTSAVED = b"NOTSAVED"

    @staticmethod
    def capability(caps: Iterable[str]) -> bytes:
        return b"CAPABILITY " + " ".join(caps).encode("ascii")

    @staticmethod
    def permanentflags(flag_names: Iterable[str]) -> bytes:
        return b"PERMANENTFLAGS " + flag_list(flag_names)

    @staticmethod
    def uidnext(n: int) -> bytes:
        return b"UIDNEXT %d" % n

    @staticmethod
    def uidvalidity(n: int) -> bytes:
        return b"UIDVALIDITY %d" % n

    @staticmethod
    def unseen(n: int) -> bytes:
        return b"UNSEEN %d" % n

    @staticmethod
    def highestmodseq(n: int) -> bytes:
        return b"HIGHESTMODSEQ %d" % n

    @staticmethod
    def appenduid(uidvalidity: int, uids: Iterable[int]) -> bytes:
        """RFC 4315 §3; several UIDs after MULTIAPPEND are sent as a set."""
        return b"APPENDUID %d %s" % (uidvalidity, sequence_set(uids))

    @staticmethod
    def copyuid(uidvalidity: int, source: Sequence[int], dest: Sequence[int]) -> bytes:
        """RFC 4315 §3: sets must list UIDs pairwise in the same order, so no reordering."""
        return b"COPYUID %d %s %s" % (uidvalidity, _ordered_set(source), _ordered_set(dest))

    @staticmethod
    def modified(numbers: Iterable[int]) -> bytes:
        return b"MODIFIED " + sequence_set(numbers)

    @staticmethod
    def badcharset(charsets: Iterable[str]) -> bytes:
        return b"BADCHARSET (" + b" ".join(astring(c) for c in charsets) + b")"

    @staticmethod
    def appendlimit(n: int) -> bytes:
        return b"APPENDLIMIT %d" % n


def _ordered_set(numbers: Sequence[int]) -> bytes:
    """Compress runs while keeping the given order (COPYUID source/dest correspondence)."""
    parts: list[bytes] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(parts)


# --- responses ----------------------------------------------------------------------------


def status_response(tag: str | None, status: str, text: str, code: Str | None = None) -> bytes:
    """``tag|* OK|NO|BAD|PREAUTH|BYE [code] text`` (RFC 9051 §7.1).

    CR/LF in ``text`` are blanked so an echoed client value can never inject a response line.
    """
    head = b"*" if tag is None else tag.encode("ascii")
    code_part = b"[" + _b(code) + b"] " if code else b""
    line = _b(text or status).replace(b"\r", b" ").replace(b"\n", b" ")
    return b"%s %s %s%s\r\n" % (head, status.encode("ascii"), code_part, line)


def tagged(tag: str, status: str, text: str, code: Str | None = None) -> bytes:
    return status_response(tag, status, text, code)


def untagged(*parts: bytes) -> bytes:
    """``* part part ...CRLF`` for data responses."""
    return b"* " + b" ".join(parts) + CRLF


def continuation(text: str = "Ready", *, data: bytes | None = None) -> bytes:
    """``+ text`` or, for a SASL challenge, ``+ base64(data)`` (RFC 9051 §7.5)."""
    if data is not None:
        return b"+ " + base64.b64encode(data) + CRLF
    return b"+ " + text.encode("utf-8") + CRLF


def capability(caps: Iterable[str]) -> bytes:
    return untagged(b"CAPABILITY", " ".join(caps).encode("ascii"))


def enabled(caps: Iterable[str]) -> bytes:
    """``* ENABLED`` (RFC 5161); may be empty."""
    return b"* ENABLED" + b"".join(b" " + c.encode("ascii") for c in caps) + CRLF


def flags(flag_names: Iterable[str]) -> bytes:
    return untagged(b"FLAGS", flag_list(flag_names))


def exists(n: int) -> bytes:
    return b"* %d EXISTS\r\n" % n


def recent(n: int) -> bytes:
    return b"* %d RECENT\r\n" % n


def expunge(seq: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % seq


def vanished(uids: Iterable[int], *, earlier: bool = False) -> bytes:
    """RFC 7162 §3.2.10: ``* VANISHED [(EARLIER)] uid-set``."""
    return b"* VANISHED %s%s\r\n" % (b"(EARLIER) " if earlier else b"", sequence_set(uids))


def search(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    """``* SEARCH`` (RFC 3501) with the RFC 7162 ``(MODSEQ n)`` suffix when given."""
    out = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
    if modseq is not None:
        out += b" (MODSEQ %d)" % modseq
    return out + CRLF


def sort(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    out = b"* SORT" + b"".join(b" %d" % n for n in numbers)
    if modseq is not None:
        out += b" (MODSEQ %d)" % modseq
    return out + CRLF


ThreadNode = tuple[int | None, "list[ThreadNode]"]


def _thread_chain(node: ThreadNode) -> bytes:
    parts: list[bytes] = []
    while True:
        num, children = node
        if num is None:
            break
        parts.append(b"%d" % num)
        if len(children) != 1:
            break
        node = children[0]
    out = b" ".join(parts)
    if children:
        nested = b"".join(b"(" + _thread_chain(child) + b")" for child in children)
        out = out + b" " + nested if out else nested
    return out


def thread(roots: Sequence[ThreadNode]) -> bytes:
    """RFC 5256 §4 THREAD response; a node is ``(number or None for a dummy, children)``."""
    lists = b"".join(b"(" + _thread_chain(root) + b")" for root in roots)
    return b"* THREAD" + (b" " + lists if lists else b"") + CRLF


def esearch(
    tag: str | None,
    *,
    uid: bool,
    min: int | None = None,
    max: int | None = None,
    count: int | None = None,
    all: Sequence[int] | None = None,
    partial: tuple[tuple[int, int], Sequence[int]] | None = None,
    modseq: int | None = None,
) -> bytes:
    """RFC 4731 §3.1 ``* ESEARCH (TAG "t") [UID] ...``; ALL omitted when empty (§3.1).

    ALL and PARTIAL (RFC 5267 §4.4: the requested range, then its results or NIL) keep the
    order given: mailbox order for SEARCH, the requested order for SORT (RFC 5267 §3.2 only
    allows ascending ranges, which is what the ordered rendering makes)."""
    out = b"* ESEARCH"
    if tag is not None:
        out += b" (TAG " + quoted(tag) + b")"
    if uid:
        out += b" UID"
    if min is not None:
        out += b" MIN %d" % min
    if max is not None:
        out += b" MAX %d" % max
    if count is not None:
        out += b" COUNT %d" % count
    if all:
        out += b" ALL " + _ordered_set(all)
    if partial is not None:
        (low, high), numbers = partial
        out += b" PARTIAL (%d:%d %s)" % (low, high, _ordered_set(numbers) if numbers else b"NIL")
    if modseq is not None:
        out += b" MODSEQ %d" % modseq
    return out + CRLF


def esearch_update(
    tag: str, *, uid: bool, items: Sequence[tuple[str, Sequence[tuple[int, Sequence[int]]]]]
) -> bytes:
    """RFC 5267 §4.3.3/§4.3.4 ``* ESEARCH (TAG "t") [UID] REMOVEFROM (pos set ...) ADDTO (...)``;
    each set keeps the order given (the requested order)."""
    out = b"* ESEARCH (TAG " + quoted(tag) + b")" + (b" UID" if uid else b"")
    for name, runs in items:
        pairs = b" ".join(b"%d %s" % (position, _ordered_set(numbers)) for position, numbers in runs)
        out += b" " + name.encode("ascii") + b" (" + pairs + b")"
    return out + CRLF


def list_response(
    attributes: Iterable[str],
    delimiter: str | None,
    name: str,
    *,
    utf8: bool = False,
    childinfo: Sequence[str] = (),
    oldname: str | None = None,
    command: str = "LIST",
) -> bytes:
    """``* LIST (attrs) "/" name`` with RFC 5258 CHILDINFO and RFC 9051 OLDNAME extended data."""
    delim = b"NIL" if delimiter is None else quoted(delimiter)
    out = b"* %s %s %s %s" % (command.encode("ascii"), flag_list(attributes), delim, mailbox(name, utf8=utf8))
    extra: list[bytes] = []
    if childinfo:
        extra.append(b'"CHILDINFO" (' + b" ".join(quoted(c) for c in childinfo) + b")")
    if oldname is not None:
        extra.append(b'"OLDNAME" (' + mailbox(oldname, utf8=utf8) + b")")
    if extra:
        out += b" (" + b" ".join(extra) + b")"
    return out + CRLF


def status(name: str, items: Iterable[tuple[str, int]], *, utf8: bool = False) -> bytes:
    body = b" ".join(b"%s %d" % (k.encode("ascii"), v) for k, v in items)
    return b"* STATUS %s (%s)\r\n" % (mailbox(name, utf8=utf8), body)


Namespaces = Sequence[tuple[str, str | None]] | None


def namespace(
    personal: Namespaces, other: Namespaces = None, shared: Namespaces = None, *, utf8: bool = False
) -> bytes:
    """RFC 2342 / RFC 9051 §7.3.4: each argument lists (prefix, delimiter) pairs or None; a prefix is
    a mailbox name, so mUTF-7 unless UTF8=ACCEPT is enabled."""

    def name(prefix: str) -> str:
        return prefix if utf8 else mutf7.encode(prefix)

    def one(spaces: Namespaces) -> bytes:
        if not spaces:
            return b"NIL"
        inner = b"".join(
            b"(" + string(name(prefix), utf8=utf8) + b" " + (b"NIL" if d is None else quoted(d)) + b")"
            for prefix, d in spaces
        )
        return b"(" + inner + b")"

    return b"* NAMESPACE %s %s %s\r\n" % (one(personal), one(other), one(shared))


def id_response(params: Mapping[str, str | None] | None) -> bytes:
    """RFC 2971 §3.2 ``* ID (...)`` or ``* ID NIL``."""
    if not params:
        return b"* ID NIL\r\n"
    body = b" ".join(string(k) + b" " + nstring(v) for k, v in params.items())
    return b"* ID (" + body + b")\r\n"


def quota(root: str, resources: Iterable[tuple[str, int, int]]) -> bytes:
    """RFC 9208 §5.1: resources as (name, usage, limit)."""
    body = b" ".join(b"%s %d %d" % (n.encode("ascii"), u, lim) for n, u, lim in resources)
    return b"* QUOTA %s (%s)\r\n" % (astring(root), body)


def acl(name: str, entries: Iterable[tuple[str, str]], *, utf8: bool = False) -> bytes:
    """RFC 4314 §3.6 ``* ACL mailbox (identifier rights)*``."""
    parts = [mailbox(name, utf8=utf8)]
    for identifier, rights in entries:
        parts += [astring(identifier, utf8=utf8), astring(rights)]
    return b"* ACL " + b" ".join(parts) + CRLF


def listrights(
    name: str, identifier: str, required: str, optional: Iterable[str], *, utf8: bool = False
) -> bytes:
    """RFC 4314 §3.7 ``* LISTRIGHTS mailbox identifier required optional...``."""
    parts = [mailbox(name, utf8=utf8), astring(identifier, utf8=utf8), string(required)]
    return b"* LISTRIGHTS " + b" ".join([*parts, *(astring(r) for r in optional)]) + CRLF


def myrights(name: str, rights: str, *, utf8: bool = False) -> bytes:
    """RFC 4314 §3.8 ``* MYRIGHTS mailbox rights``."""
    return b"* MYRIGHTS " + mailbox(name, utf8=utf8) + b" " + astring(rights) + CRLF


def quotaroot(name: str, roots: Iterable[str], *, utf8: bool = False) -> bytes:
    return b"* QUOTAROOT " + b" ".join([mailbox(name, utf8=utf8), *(astring(r) for r in roots)]) + CRLF


def fetch(seq: int, items: Iterable[tuple[Str, bytes]]) -> bytes:
    """``* seq FETCH (name value ...)``; values are already-encoded bytes."""
    body = b" ".join(_b(name) + b" " + value for name, value in items)
    return b"* %d FETCH (%s)\r\n" % (seq, body)


def section_data(data: bytes | None, *, binary: bool = False) -> bytes:
    """Value of BODY[...]/BINARY[...]: NIL, literal, or literal8 when NUL occurs (RFC 3516 §4.3)."""
    if data is None:
        return b"NIL"
    return literal(data, binary=binary and b"\x00" in data)


# --- ENVELOPE and BODYSTRUCTURE (RFC 9051 §7.5.2) from the store's cached JSON ----------------


def _address_list(addresses: Sequence[Sequence[str | None]] | None, utf8: bool) -> bytes:
    if not addresses:
        return b"NIL"
    return (
        b"("
        + b"".join(b"(" + b" ".join(nstring(f, utf8=utf8) for f in address) + b")" for address in addresses)
        + b")"
    )


def encode_envelope(env: Sequence[Any], *, utf8: bool = False) -> bytes:
    """Render ``[date, subject, from, sender, reply_to, to, cc, bcc, in_reply_to, message_id]``.

    RFC 9051 §7.5.2: missing Sender / Reply-To default to From.
    """
    date_, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = env
    sender = sender or from_
    reply_to = reply_to or from_
    parts = [
        nstring(date_, utf8=utf8),
        nstring(subject, utf8=utf8),
        *(_address_list(a, utf8) for a in (from_, sender, reply_to, to, cc, bcc)),
        nstring(in_reply_to, utf8=utf8),
        nstring(message_id, utf8=utf8),
    ]
    return b"(" + b" ".join(parts) + b")"


def _param(key: str, value: str, utf8: bool) -> bytes:
    """One body parameter; a non-ASCII value goes back to its RFC 2231 form (``name*=utf-8''…``) for
    clients that did not ENABLE UTF8=ACCEPT, as they expect MIME-encoded parameters, not raw 8-bit."""
    if not utf8 and not value.isascii():
        return string(key + "*") + b" " + string("utf-8''" + urllib.parse.quote(value, safe=""))
    return string(key, utf8=utf8) + b" " + string(value, utf8=utf8)


def _params(params: Sequence[Sequence[str]] | None, utf8: bool) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(_param(k, v, utf8) for k, v in params) + b")"


def _disposition(disp: Sequence[Any] | None, utf8: bool) -> bytes:
    if not disp:
        return b"NIL"
    return b"(" + string(disp[0], utf8=utf8) + b" " + _params(disp[1] if len(disp) > 1 else None, utf8) + b")"


def _language(lang: str | Sequence[str] | None, utf8: bool) -> bytes:
    if not lang:
        return b"NIL"
    if isinstance(lang, str):
        return string(lang, utf8=utf8)
    return b"(" + b" ".join(string(x, utf8=utf8) for x in lang) + b")"


def _body(struct: Mapping[str, Any], extensible: bool, utf8: bool) -> bytes:
    mtype = struct["type"]
    subtype = struct["subtype"]
    if mtype.lower() == "multipart":
        out = b"".join(_body(p, extensible, utf8) for p in struct["parts"])
        out += b" " + string(subtype, utf8=utf8)
        if extensible:
            out += b" " + b" ".join(
                (
                    _params(struct.get("params"), utf8),
                    _disposition(struct.get("disposition"), utf8),
                    _language(struct.get("language"), utf8),
                    nstring(struct.get("location"), utf8=utf8),
                )
            )
        return b"(" + out + b")"
    fields = [
        string(mtype, utf8=utf8),
        string(subtype, utf8=utf8),
        _params(struct.get("params"), utf8),
        nstring(struct.get("id"), utf8=utf8),
        nstring(struct.get("description"), utf8=utf8),
        string(struct.get("encoding") or "7BIT", utf8=utf8),
        b"%d" % struct.get("size", 0),
    ]
    lowered = (mtype.lower(), subtype.lower())
    if lowered[0] == "message" and lowered[1] in ("rfc822", "global") and "body" in struct:
        fields.append(encode_envelope(struct["envelope"], utf8=utf8))
        fields.append(_body(struct["body"], extensible, utf8))
        fields.append(b"%d" % struct.get("lines", 0))
    elif lowered[0] == "text":
        fields.append(b"%d" % struct.get("lines", 0))
    if extensible:
        fields.append(nstring(struct.get("md5"), utf8=utf8))
        fields.append(_disposition(struct.get("disposition"), utf8))
        fields.append(_language(struct.get("language"), utf8))
        fields.append(nstring(struct.get("location"), utf8=utf8))
    return b"(" + b" ".join(fields) + b")"


def encode_bodystructure(struct: Mapping[str, Any], extensible: bool, *, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (``extensible=True``) or BODY (non-extensible) value for FETCH."""
    return _body(struct, extensible, utf8)
