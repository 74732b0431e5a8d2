"""One-shot MIME analysis of a raw RFC 5322 message for the IMAP server.

`analyze` runs once at delivery; its JSON-serialisable result is stored next to the
blob so that FETCH (ENVELOPE, BODYSTRUCTURE, BODY[...], BINARY[...]), SEARCH, SORT
and THREAD never parse the message again.  Part boundaries are located on the raw
bytes (not through `email.parser`) so that every offset is exact, whatever the line
endings (CRLF or bare LF) and however broken the message is.

Offsets: every body-structure node carries ``"part": [header_start, header_end,
body_start, body_end]``.  ``raw[header_start:header_end]`` are the header fields
without the blank separator line, ``raw[header_start:body_start]`` is the header
including it (the IMAP HEADER / MIME section), ``raw[body_start:body_end]`` is the
body.  When there is no blank line the whole entity is header and the body is empty
(``header_end == body_start == body_end``).

Nonexistent sections yield ``b""``: RFC 9051 §6.4.5 leaves the reply unspecified and
servers in practice (Dovecot, Cyrus) answer with an empty string rather than NO.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC
from email.message import Message
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any

from mailserver.charsets import decode_text
from mailserver.headers import MAX_HEADER_SCAN, HeaderView, decode_header, find_header_end, split_fields

__all__ = [
    "MAX_DEPTH",
    "MAX_HEADER_SCAN",
    "MAX_PARTS",
    "addr_specs",
    "address_texts",
    "analyze",
    "base_subject",
    "binary_section",
    "binary_size",
    "casemap",
    "parse_addresses",
    "section",
    "section_exists",
    "sort_keys",
]

MAX_DEPTH = 32
"""Nesting deeper than this (multipart or message/rfc822) is reported as an opaque leaf."""

MAX_PARTS = 10_000
"""Beyond this many body parts, remaining multipart bodies are no longer split."""

_DEFAULT_PARAMS = [["charset", "us-ascii"]]
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_DELIM_AT_START = re.compile(rb"(--)?[ \t]*(?=\r\n|\n|\Z)")  # lookahead: the EOL may start the next one
_MSG_ID = re.compile(r"<[^<>]*>")
_WSP_RUN = re.compile(r"[ \t\r\n]+")
_QUOTED_LOCAL = re.compile(r'"((?:[^"\\]|\\.)*)"')
_QUOTED_PAIR = re.compile(r"\\(.)")
_ADDRESS_FIELDS = {"from": 2, "to": 5, "cc": 6, "bcc": 7}  # their ENVELOPE positions (RFC 9051 §7.5.2)
_B64_JUNK = bytes(c for c in range(256) if not (chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/")))
_IDENTITY_CTE = {"7BIT", "8BIT", "BINARY"}
_MESSAGE_SUBTYPES = {"rfc822", "global"}


# --------------------------------------------------------------------------- text helpers


# --------------------------------------------------------------------------- MIME header values


def _params(header: str, value: str) -> tuple[str, list[list[str]] | None]:
    """Leading token and parameters of a Content-Type/-Disposition value, RFC 2231 decoded."""
    msg = Message()
    try:
        msg[header] = value
        raw_params = msg.get_params(header=header) or []
    except Exception:  # hostile parameter syntax: keep the token, drop the params
        return value.split(";", 1)[0].strip(), None
    if not raw_params:
        return "", None
    head = raw_params[0][0].strip()
    params = [
        [name.lower(), _rfc2231(val) if isinstance(val, tuple) else val] for name, val in raw_params[1:]
    ]
    return head, params or None


def _rfc2231(value: tuple[str | None, str | None, str]) -> str:
    """An RFC 2231 ``name*=charset'lang'%xx`` value: its octets (one per character, as the stdlib's
    ``collapse_rfc2231_value`` reads them) decoded by the one charset rule."""
    charset, _language, text = value
    return decode_text(bytes(text, "raw-unicode-escape"), charset)


def _content_type(
    fields: Mapping[str, str], default: tuple[str, str]
) -> tuple[str, str, list[list[str]] | None]:
    """RFC 2045 §5.2: absent → context default; syntactically invalid → text/plain; charset=us-ascii."""
    value = fields.get("content-type")
    if value is None:
        params = _DEFAULT_PARAMS if default == ("text", "plain") else None
        return default[0], default[1], [list(p) for p in params] if params else None
    head, params = _params("content-type", value)
    maintype, _, subtype = head.partition("/")
    maintype, subtype = maintype.strip().lower(), subtype.strip().lower()
    if not (_TOKEN.match(maintype) and _TOKEN.match(subtype)):
        return "text", "plain", [list(p) for p in _DEFAULT_PARAMS]
    return maintype, subtype, params


def _disposition(fields: Mapping[str, str]) -> list[Any] | None:
    """RFC 2183 disposition as [type, params]; None when absent or empty."""
    value = fields.get("content-disposition")
    if not value:
        return None
    head, params = _params("content-disposition", value)
    if not head:
        return None
    return [head.lower(), params]


def _language(fields: Mapping[str, str]) -> list[str] | None:
    """RFC 3282 Content-Language: comma-separated tags."""
    value = fields.get("content-language")
    if not value:
        return None
    tags = [t.strip() for t in re.sub(r"\([^()]*\)", "", value).split(",")]
    return [t for t in tags if t] or None


def _squeezed(fields: Mapping[str, str], name: str) -> str | None:
    """Content-Location (RFC 2557 §4.1) may be folded anywhere: drop all whitespace."""
    value = fields.get(name)
    return None if value is None else _WSP_RUN.sub("", value)


def _count_lines(raw: bytes, start: int, end: int) -> int:
    """Text lines: LF count plus a final unterminated line, as an IMAP client would display."""
    if start >= end:
        return 0
    return raw.count(b"\n", start, end) + (raw[end - 1] != 0x0A)


# --------------------------------------------------------------------------- addresses (RFC 5322 §3.4)


_SPECIALS = '()<>[]:;@\\,."'


def _tokens(value: str) -> list[tuple[str, str]]:
    """Tokenise an address list into (kind, text): 'q' quoted (unquoted text), 'c' comment,
    'd' domain literal, 'a' atom, or the special character itself."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch in " \t\r\n":
            i += 1
        elif ch == '"':
            j, buf = i + 1, []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(value[j])
                j += 1
            out.append(("q", "".join(buf)))
            i = j + 1
        elif ch == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                c = value[j]
                if c == "\\" and j + 1 < n:
                    j += 1
                    c = value[j]
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if not depth:
                        break
                buf.append(c)
                j += 1
            out.append(("c", "".join(buf)))
            i = j + 1
        elif ch == "[":
            j = value.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("d", value[i:j]))
            i = j
        elif ch in _SPECIALS:
            out.append((ch, ch))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in " \t\r\n":
                j += 1
            out.append(("a", value[i:j]))
            i = j
    return out


def _phrase(tokens: list[tuple[str, str]]) -> str | None:
    """Display name: words joined by one space, quotes removed, encoded words left encoded."""
    words = [text for kind, text in tokens if kind in ("a", "q", ".")]
    name = " ".join(words).replace(" . ", ". ").strip()
    return name or None


def _addr_spec(tokens: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Split addr-spec tokens into (local-part, domain); quoted local parts keep their quotes."""
    parts: list[str] = []
    for kind, text in tokens:
        if kind == "c":
            continue
        parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"' if kind == "q" else text)
    spec = "".join(parts)
    local, at, domain = spec.rpartition("@")
    if not at:
        return (spec or None), None
    return (local or None), (domain or None)


def _mailbox(name: str | None, adl: str | None, spec: list[tuple[str, str]]) -> list[str | None] | None:
    local, domain = _addr_spec(spec)
    if local is None and domain is None:
        return None
    # RFC 9051 §7.5.2: a NIL host means group syntax, so a bare word must not look like one.
    return [name, adl, local or "MISSING_MAILBOX", domain or "MISSING_DOMAIN"]


def parse_addresses(value: str | None) -> list[list[str | None]] | None:
    """ENVELOPE address list (RFC 9051 §7.5.2), tolerant of broken syntax; None when empty."""
    if value is None:
        return None
    out: list[list[str | None]] = []
    tokens = _tokens(value)
    pending: list[tuple[str, str]] = []
    in_group = False
    i = 0

    def flush() -> None:
        comments = [text for kind, text in pending if kind == "c"]
        words = [t for t in pending if t[0] != "c"]
        entry = _mailbox(comments[-1].strip() or None if comments else None, None, words)
        if entry is not None:
            out.append(entry)
        pending.clear()

    while i < len(tokens):
        kind = tokens[i][0]
        if kind == ":" and not in_group and "@" not in [k for k, _ in pending]:
            out.append([None, None, _phrase(pending) or "", None])
            pending.clear()
            in_group = True
        elif kind == "<":
            name = _phrase(pending)
            pending.clear()
            j = i + 1
            inner: list[tuple[str, str]] = []
            while j < len(tokens) and tokens[j][0] != ">":
                inner.append(tokens[j])
                j += 1
            adl = None
            colon = next((k for k, t in enumerate(inner) if t[0] == ":"), None)
            if colon is not None and inner and inner[0][0] == "@":  # obs-route (RFC 5322 §4.4)
                adl = "".join(t for k, t in inner[:colon] if k != "c")
                inner = inner[colon + 1 :]
            entry = _mailbox(name, adl, inner)
            if entry is not None:
                out.append(entry)
            i = j
            while i + 1 < len(tokens) and tokens[i + 1][0] == "c":  # trailing comment after '>'
                i += 1
        elif kind == ",":
            flush()
        elif kind == ";":
            flush()
            if in_group:
                out.append([None, None, None, None])
                in_group = False
        else:
            pending.append(tokens[i])
        i += 1
    flush()
    if in_group:
        out.append([None, None, None, None])
    return out or None


def addr_specs(value: str | None) -> list[str]:
    """The ``local@domain`` of every mailbox of an address list (group members too) as ENVELOPE shows
    them; a mailbox missing its local part or domain (RFC 9051 ``MISSING_*``) gives only what it has."""
    return [
        "@".join(p for p in (local, domain) if p and not p.startswith("MISSING_"))
        for _name, _adl, local, domain in parse_addresses(value) or []
        if domain is not None
    ]


def _envelope(fields: Mapping[str, str]) -> list[Any]:
    """RFC 9051 §7.5.2 ENVELOPE; Sender and Reply-To default to From."""
    frm = parse_addresses(fields.get("from"))
    sender = parse_addresses(fields.get("sender")) or frm
    reply_to = parse_addresses(fields.get("reply-to")) or frm
    return [
        fields.get("date"),
        fields.get("subject"),
        frm,
        sender,
        reply_to,
        parse_addresses(fields.get("to")),
        parse_addresses(fields.get("cc")),
        parse_addresses(fields.get("bcc")),
        fields.get("in-reply-to"),
        fields.get("message-id"),
    ]


# --------------------------------------------------------------------------- SEARCH / SORT / THREAD keys

_SUBJ_TRAILER = re.compile(r"(?:\(fwd\)| )\Z", re.I)
_SUBJ_BLOB = r"\[[^\[\]]*\] ?"
_SUBJ_LEADER = re.compile(rf"(?:(?:{_SUBJ_BLOB})*(?:re|fwd?) ?(?:{_SUBJ_BLOB})?:| )", re.I)
_SUBJ_BLOB_RE = re.compile(_SUBJ_BLOB)


def base_subject(subject: str | None) -> tuple[str, bool]:
    """RFC 5256 §2.1 base subject (already decoded) and whether it was a reply/forward (§5)."""
    if not subject:
        return "", False
    text = _WSP_RUN.sub(" ", subject)  # step 1
    reply = False
    while True:
        while (m := _SUBJ_TRAILER.search(text)) and text:  # step 2
            reply |= m.group(0) != " "
            text = text[: m.start()]
        while True:  # steps 3-5
            changed = False
            while m := _SUBJ_LEADER.match(text):
                reply |= m.group(0) != " "
                text = text[m.end() :]
                changed = True
            m = _SUBJ_BLOB_RE.match(text)
            if m and text[m.end() :]:
                text = text[m.end() :]
                changed = True
            if not changed:
                break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):  # step 6
            text = text[5:-1]
            reply = True
            continue
        return text, reply


def _msg_ids(value: str | None) -> list[str]:
    return _MSG_ID.findall(value) if value else []


@cache
def _titlecase() -> dict[int, str]:
    """Characters whose simple titlecase mapping differs from themselves (all below U+20000)."""
    return {i: t for i in range(0x20000) if len(t := chr(i).title()) == 1 and t != chr(i)}


def casemap(text: str) -> str:
    """The i;unicode-casemap form (RFC 5051 §2) of ``text``, the collation of SORT and THREAD
    (RFC 5256 §7): each character titlecased, then canonically decomposed. Equal forms are equal
    under the collation, and forms compare as Python strings (code points, the order of their
    UTF-8 octets) in its order; for ASCII it is an uppercase fold."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFD", text.translate(_titlecase()))


def _unquoted(local: str) -> str:
    """RFC 9051 §9 addr-mailbox is the local-part "after removing [RFC 5322] quoting"."""
    if '"' not in local:
        return local
    return _QUOTED_LOCAL.sub(lambda m: _QUOTED_PAIR.sub(r"\1", m.group(1)), local)


def _mailbox_key(addresses: list[list[str | None]] | None) -> str:
    """RFC 5256 §3 FROM / TO / CC: addr-mailbox of the first address structure (a group's start:
    its name), "" when there is none."""
    return casemap(_unquoted(addresses[0][2] or "")) if addresses else ""


def _display_key(addresses: list[list[str | None]] | None) -> str:
    """RFC 5957 §3 DISPLAYFROM / DISPLAYTO: the decoded display name of the first address, else
    its addr-mailbox "@" addr-host (a group: its name)."""
    if not addresses:
        return ""
    name, _adl, local, host = addresses[0]
    shown = decode_header(name).strip() if name else ""
    if not shown:
        local = _unquoted(local or "")
        shown = f"{local}@{host}" if host is not None else local
    return casemap(shown)


def sort_keys(envelope: list[Any], base: str | None) -> dict[str, str]:
    """The string keys of SORT (RFC 5256 §3, RFC 5957 §3) and the base subject of THREAD, in
    :func:`casemap` form, from an ENVELOPE and the message's base subject."""
    return {
        "subject": casemap(base or ""),
        "from": _mailbox_key(envelope[2]),
        "to": _mailbox_key(envelope[5]),
        "cc": _mailbox_key(envelope[6]),
        "displayfrom": _display_key(envelope[2]),
        "displayto": _display_key(envelope[5]),
    }


def address_texts(addresses: list[list[str | None]] | None) -> str:
    """An address field as a reader sees it, one address a line: ``Name <local@host>`` (the name
    decoded), ``local@host``, or a group's name; SEARCH FROM/TO/CC/BCC match it (RFC 9051 §6.4.4)."""
    lines = []
    for name, _adl, local, host in addresses or []:
        if host is None:
            if local is not None:
                lines.append(local)
        elif name:
            lines.append(f"{decode_header(name)} <{local}@{host}>")
        else:
            lines.append(f"{local}@{host}")
    return "\n".join(lines)


def _iso_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000" (RFC 5322 §3.3): no zone info, read as UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat()


def _search_headers(fields: Mapping[str, str], envelope: list[Any]) -> dict[str, Any]:
    decoded = {
        k: decode_header(fields[k]) if k in fields else None for k in ("subject", "from", "to", "cc", "bcc")
    }
    base, reply = base_subject(decoded["subject"])
    references = _msg_ids(fields.get("references"))
    in_reply_to = _msg_ids(fields.get("in-reply-to"))
    message_id = _msg_ids(fields.get("message-id"))
    return {
        **decoded,
        "date": _iso_date(fields.get("date")),
        "message_id": message_id[0] if message_id else None,
        "in_reply_to": in_reply_to[0] if in_reply_to else None,
        "references": references,
        "base_subject": base,
        "subject_is_reply": reply,
        "sort": sort_keys(envelope, base),
        "addresses": {name: address_texts(envelope[i]) for name, i in _ADDRESS_FIELDS.items()},
    }


# --------------------------------------------------------------------------- body structure


class _Budget:
    """Shared part counter so a hostile message cannot make the cache explode."""

    def __init__(self) -> None:
        self.parts = 0


def _delimiters(raw: bytes, start: int, end: int, boundary: bytes, limit: int) -> list[tuple[int, int, bool]]:
    """Up to `limit` boundary delimiter lines in raw[start:end] as (line_start, line_end, is_close).

    RFC 2046 §5.1.1: a delimiter is "--" boundary at the start of a line, optional
    transport padding, then the line end; the preceding CRLF belongs to the delimiter.
    The regex starts with a literal, so the scan runs in C even on 25 MiB of base64.
    """
    dash = b"--" + boundary
    found: list[tuple[int, int, bool]] = []
    if raw.startswith(dash, start, end) and (tail := _DELIM_AT_START.match(raw, start + len(dash), end)):
        found.append((start, _eol_end(raw, tail.end(), end), tail.group(1) is not None))
    pattern = re.compile(b"\n" + re.escape(dash) + _DELIM_AT_START.pattern)
    for match in pattern.finditer(raw, start, end):
        if len(found) >= limit or (found and found[-1][2]):
            break
        found.append((match.start() + 1, _eol_end(raw, match.end(), end), match.group(1) is not None))
    return found[:limit]


def _eol_end(raw: bytes, pos: int, end: int) -> int:
    if raw.startswith(b"\r\n", pos, end):
        return pos + 2
    return pos + 1 if raw.startswith(b"\n", pos, end) else pos


def _strip_eol(raw: bytes, start: int, pos: int) -> int:
    """End of a part's content: the line break before a delimiter belongs to the delimiter."""
    if pos > start and raw[pos - 1] == 0x0A:
        pos -= 1
        if pos > start and raw[pos - 1] == 0x0D:
            pos -= 1
    return max(start, pos)


def _cte(fields: Mapping[str, str]) -> str:
    """Content-Transfer-Encoding token (RFC 2045 §6.1), 7BIT when absent; comments dropped."""
    return (fields.get("content-transfer-encoding") or "").split("(", 1)[0].strip().upper() or "7BIT"


def _leaf(
    maintype: str, subtype: str, params: Any, fields: Mapping[str, str], offsets: list[int]
) -> dict[str, Any]:
    return {
        "type": maintype,
        "subtype": subtype,
        "params": params,
        "id": fields.get("content-id"),
        "description": fields.get("content-description"),
        "encoding": _cte(fields),
        "size": offsets[3] - offsets[2],
        "md5": fields.get("content-md5"),
        "disposition": _disposition(fields),
        "language": _language(fields),
        "location": _squeezed(fields, "content-location"),
        "part": offsets,
    }


def _entity(
    raw: bytes, start: int, end: int, depth: int, default: tuple[str, str], budget: _Budget
) -> tuple[dict[str, Any], HeaderView]:
    """Body structure of the entity raw[start:end] and its first-occurrence header fields."""
    budget.parts += 1
    header_end, body_start = find_header_end(raw, start, end)
    fields = HeaderView.of_block(raw, start, header_end)
    offsets = [start, header_end, body_start, end]
    maintype, subtype, params = _content_type(fields, default)
    too_deep = depth >= MAX_DEPTH or budget.parts >= MAX_PARTS
    boundary = next((v for k, v in params or [] if k == "boundary"), "") if maintype == "multipart" else ""
    if maintype == "multipart" and not boundary:  # RFC 2046 §5.1.1: boundary is mandatory
        maintype, subtype, params = "text", "plain", [list(p) for p in _DEFAULT_PARAMS]
    if too_deep and (maintype == "multipart" or (maintype == "message" and subtype in _MESSAGE_SUBTYPES)):
        maintype, subtype = "application", "octet-stream"
    if maintype == "multipart":
        node = {
            "type": maintype,
            "subtype": subtype,
            "parts": _children(raw, body_start, end, boundary, depth, subtype, budget),
            "params": params,
            "encoding": _cte(fields),
            "disposition": _disposition(fields),
            "language": _language(fields),
            "location": _squeezed(fields, "content-location"),
            "part": offsets,
        }
        return node, fields
    node = _leaf(maintype, subtype, params, fields, offsets)
    if maintype == "text":
        node["lines"] = _count_lines(raw, body_start, end)
    elif maintype == "message" and subtype in _MESSAGE_SUBTYPES:
        inner, inner_fields = _entity(raw, body_start, end, depth + 1, ("text", "plain"), budget)
        node["envelope"] = _envelope(inner_fields)
        node["body"] = inner
        node["lines"] = _count_lines(raw, body_start, end)
    return node, fields


def _children(
    raw: bytes, start: int, end: int, boundary: str, depth: int, subtype: str, budget: _Budget
) -> list[dict[str, Any]]:
    """Split a multipart body (RFC 2046 §5.1) into child nodes; preamble and epilogue are skipped."""
    default = ("message", "rfc822") if subtype == "digest" else ("text", "plain")  # RFC 2046 §5.1.5
    delims = _delimiters(raw, start, end, boundary.encode("utf-8"), max(1, MAX_PARTS - budget.parts + 1))
    children: list[dict[str, Any]] = []
    for index, (_line, line_end, is_close) in enumerate(delims):
        if is_close:
            break
        # No close delimiter (truncated message) or part budget spent: the part runs to the end.
        last = index + 1 == len(delims) or budget.parts >= MAX_PARTS
        part_end = end if last else _strip_eol(raw, line_end, delims[index + 1][0])
        child, _ = _entity(raw, line_end, part_end, depth + 1, default, budget)
        children.append(child)
        if part_end == end:
            break
    if not children:  # IMAP needs at least one part (RFC 9051 §9 body-type-mpart): an empty text one
        children.append(_leaf("text", "plain", [list(p) for p in _DEFAULT_PARAMS], {}, [end, end, end, end]))
        children[0]["lines"] = 0
    return children


def analyze(raw: bytes) -> dict[str, Any]:
    """Parse `raw` once; the JSON-serialisable result answers FETCH/SEARCH/SORT/THREAD later."""
    budget = _Budget()
    body, fields = _entity(raw, 0, len(raw), 0, ("text", "plain"), budget)
    envelope = _envelope(fields)
    return {
        "envelope": envelope,
        "bodystructure": body,
        "headers": _search_headers(fields, envelope),
        "size": len(raw),
        "lines": _count_lines(raw, 0, len(raw)),
        "header_size": body["part"][2],
    }


# --------------------------------------------------------------------------- section extraction


def _is_message(node: dict[str, Any]) -> bool:
    return "body" in node


def _resolve(meta: dict[str, Any], part: list[int]) -> dict[str, Any] | None:
    """Node addressed by a section-part (RFC 9051 §6.4.5).

    A message (top-level or encapsulated) whose body is not multipart has exactly one
    part, numbered 1: the body itself.
    """
    node: dict[str, Any] = meta["bodystructure"]
    at_message = True
    for number in part:
        if not at_message:
            if _is_message(node):
                node = node["body"]
            elif node["type"] != "multipart":
                return None
        if node["type"] == "multipart":
            parts = node["parts"]
            if not 1 <= number <= len(parts):
                return None
            node = parts[number - 1]
        elif number != 1:
            return None
        at_message = False
    return node


def _header_fields_section(block: bytes, names: list[str], negate: bool) -> bytes:
    """HEADER.FIELDS[.NOT] (RFC 9051 §6.4.5): matching fields verbatim, then the blank line."""
    wanted = {n.lower() for n in names}
    kept = [data for name, data in split_fields(block) if name is not None and (name in wanted) != negate]
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += b"\r\n"
    return b"".join(kept) + b"\r\n"


def section_exists(meta: dict[str, Any], part: list[int], text: str | None) -> bool:
    """Whether BODY[<part>.<text>] names an existing section (:func:`section` gives b"" otherwise);
    HEADER and TEXT of a part need an encapsulated message (RFC 9051 §6.4.5)."""
    if not part:
        return True
    node = _resolve(meta, part)
    if node is None:
        return False
    return text is None or text.upper() == "MIME" or _is_message(node)


def section(
    raw: bytes,
    meta: dict[str, Any],
    part: list[int],
    text: str | None,
    fields: list[str] | None = None,
    negate: bool = False,
) -> bytes:
    """Bytes of BODY[<part>.<text>]; b"" for a section that does not exist.

    `text` is None, "HEADER", "HEADER.FIELDS" (with `fields`, `negate` for .NOT),
    "TEXT" or "MIME".  HEADER/TEXT apply to the top-level message or to a
    message/rfc822 part (its encapsulated message); MIME needs a part number.
    """
    kind = text.upper() if text else None
    if not part and kind is None:
        return raw
    node = _resolve(meta, part)
    if node is None:
        return b""
    if kind is None:
        return raw[node["part"][2] : node["part"][3]]
    if kind == "MIME":
        return raw[node["part"][0] : node["part"][2]] if part else b""
    if part:
        if not _is_message(node):
            return b""
        node = node["body"]
    head_start, head_end, body_start, body_end = node["part"]
    if kind == "HEADER":
        return raw[head_start:body_start]
    if kind == "TEXT":
        return raw[body_start:body_end]
    if kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return _header_fields_section(raw[head_start:head_end], fields or [], negate or kind.endswith(".NOT"))
    return b""


def _decode_base64(data: bytes) -> bytes:
    """Lenient base64 (RFC 2045 §6.8: ignore characters outside the alphabet)."""
    data = data.translate(None, _B64_JUNK)
    if len(data) % 4 == 1:
        data = data[:-1]
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def _decode_quoted_printable(data: bytes) -> bytes:
    """Quoted-printable body (RFC 2045 §6.7): white space at the end of a line was added in transit
    and is deleted first (rule 3), so ``=`` then blanks is still a soft line break (rule 5); then the
    ``=XX`` escapes. Line by line (no regex) to stay linear on any input."""
    lines = data.split(b"\n")
    kept = [ln[:-1].rstrip(b" \t") + b"\r" if ln.endswith(b"\r") else ln.rstrip(b" \t") for ln in lines]
    return binascii.a2b_qp(b"\n".join(kept))


def binary_section(raw: bytes, meta: dict[str, Any], part: list[int]) -> bytes | None:
    """BINARY[part] (RFC 3516 §4.2): the part body with its transfer encoding removed.

    None means the encoding is unknown and the server must answer NO [UNKNOWN-CTE];
    b"" is returned for a nonexistent part, like `section`.
    """
    if not part:
        return raw
    node = _resolve(meta, part)
    if node is None:
        return b""
    body = raw[node["part"][2] : node["part"][3]]
    encoding = node.get("encoding", "7BIT")
    if encoding in _IDENTITY_CTE:
        return body
    if encoding == "BASE64":
        return _decode_base64(body)
    if encoding == "QUOTED-PRINTABLE":
        return _decode_quoted_printable(body)
    return None


def binary_size(raw: bytes, meta: dict[str, Any], part: list[int]) -> int | None:
    """BINARY.SIZE[part] (RFC 3516 §4.3): decoded size, None for an unknown encoding."""
    if part:
        node = _resolve(meta, part)
        if node is not None and node.get("encoding", "7BIT") in _IDENTITY_CTE:
            return node["part"][3] - node["part"][2]
    data = binary_section(raw, meta, part)
    return None if data is None else len(data)
