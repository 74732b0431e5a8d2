"""A message's header fields: read by name (case-insensitively, decoded once by one rule), and the
byte-exact edits of the few fields the server itself sets.

Every lookup of a field by name goes through ``HeaderView`` (RFC 5322 §1.2.2: field names are
case-insensitive, so ``Message-Id`` is ``Message-ID``); its values are unfolded (§2.2.3) and their raw
8-bit octets read as UTF-8 (RFC 6532) by ``charsets.decode_text``; ``decode_header`` turns encoded
words (RFC 2047) into the text a user sees, with the same charset rule.

The edits change only the named field; every other byte (order, folding, line endings, the body) is
kept, so nothing else a signature or a client relies on moves.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator, Mapping

from mailserver.charsets import decode_text

MAX_HEADER_SCAN = 1024 * 1024
"""Header fields are only looked up in the first MiB of a header block (Postfix's
header_size_limit idea): offsets stay exact, a hostile giant header stays cheap."""

_LINE_SPLIT = re.compile(rb"\r?\n")
_FIELD = re.compile(rb"(?:([!-9;-~]+)[ \t]*:)?[^\n]*(?:\n[ \t][^\n]*)*\n?")  # RFC 5322 §2.2 field-name
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)[ \t\r\n]+(=\?)")


# --------------------------------------------------------------------------- reading


def find_header_end(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(header_end, body_start) of the entity raw[start:end]: the header stops at the first empty line
    (RFC 5322 §2.1); without one, the whole entity is header."""
    if raw.startswith(b"\r\n", start, end):
        return start, start + 2
    if raw.startswith(b"\n", start, end):
        return start, start + 1
    crlf = raw.find(b"\n\r\n", start, end)
    lf = raw.find(b"\n\n", start, end)
    if crlf < 0 and lf < 0:
        return end, end
    if lf < 0 or (0 <= crlf < lf):
        return crlf + 1, crlf + 3
    return lf + 1, lf + 2


def split_fields(block: bytes) -> list[tuple[str | None, bytes]]:
    """Split a header block into (lower-case name or None, verbatim field bytes incl. EOL).

    Continuation lines (leading WSP, RFC 5322 §2.2.3) stay with their field; lines
    without a valid field name get None so callers can skip them.  One C-level regex
    pass keeps this fast on hostile multi-megabyte headers.
    """
    return [
        (m.group(1).decode("ascii").lower() if m.group(1) else None, m.group(0))
        for m in _FIELD.finditer(block)
        if m.group(0)
    ]


def field_value(data: bytes) -> str:
    """Unfolded, otherwise verbatim value (RFC 5322 §2.2.3), surrounding WSP removed; 8-bit octets
    read as UTF-8 (RFC 6532), else Windows-1252 (``charsets``)."""
    value = data[data.find(b":") + 1 :]
    return decode_text(_LINE_SPLIT.sub(b"", value)).strip(" \t\r\n")


def _decode_word(charset: str, enc: str, payload: str) -> str | None:
    try:
        if enc in "bB":
            data = base64.b64decode(payload + "=" * (-len(payload) % 4))
        else:
            data = binascii.a2b_qp(payload.replace("_", " ").encode("ascii"), header=False)
    except (ValueError, binascii.Error, UnicodeError):
        return None
    return decode_text(data, charset)


def decode_header(value: str) -> str:
    """RFC 2047 decode leniently (never raises): the human-visible text, for display and SEARCH."""
    if "=?" not in value:
        return value
    value = _BETWEEN_WORDS.sub(r"\1\2", value)  # RFC 2047 §6.2: drop whitespace between encoded words

    def repl(match: re.Match[str]) -> str:
        decoded = _decode_word(match.group(1), match.group(2), match.group(3))
        return match.group(0) if decoded is None else decoded

    return _ENCODED_WORD.sub(repl, value)


class HeaderView(Mapping[str, str]):
    """The fields of one header block by case-insensitive name (RFC 5322 §1.2.2).

    ``view[name]`` and ``get`` give the first occurrence (IMAP's choice, RFC 9051 §7.5.2), ``get_all``
    every one; values as ``field_value`` reads them, encoded words kept: ``text`` decodes those.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: dict[str, list[str]] = {}
        for name, value in fields:
            self._fields.setdefault(name.lower(), []).append(value)

    @classmethod
    def parse(cls, raw: bytes, start: int = 0, end: int | None = None) -> HeaderView:
        """The header of the entity raw[start:end] (the whole message by default)."""
        end = len(raw) if end is None else end
        return cls.of_block(raw, start, find_header_end(raw, start, end)[0])

    @classmethod
    def of_block(cls, raw: bytes, start: int, end: int) -> HeaderView:
        """The fields of raw[start:end], a header block without its blank line; only its first
        ``MAX_HEADER_SCAN`` bytes are read."""
        if end - start > MAX_HEADER_SCAN:
            end = max(start, raw.rfind(b"\n", start, start + MAX_HEADER_SCAN) + 1)
        return cls(
            (name, field_value(data)) for name, data in split_fields(raw[start:end]) if name is not None
        )

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def get_all(self, name: str) -> list[str]:
        return list(self._fields.get(name.lower(), ()))

    def text(self, name: str) -> str | None:
        """The first ``name`` field as a user reads it (RFC 2047 decoded), None when absent."""
        value = self.get(name)
        return None if value is None else decode_header(value)


# --------------------------------------------------------------------------- byte-exact edits


def header_end(raw: bytes) -> int:
    """Offset of the blank line ending the header (CRLF or bare LF), or len(raw) without a body."""
    crlf, lf = raw.find(b"\r\n\r\n"), raw.find(b"\n\n")
    candidates = [i for i in (crlf, lf) if i >= 0]
    return min(candidates) if candidates else len(raw)


def has_field(raw: bytes, name: str) -> bool:
    """Whether the top-level header holds field ``name`` (case-insensitive)."""
    return name in HeaderView.parse(raw)


def replace_field(raw: bytes, name: str, value: str) -> bytes:
    """Replace every occurrence of field ``name`` by one ``name: value`` line at the first one's place
    (or prepend it when absent); ``value`` is ASCII (RFC 2047-encode it first when needed)."""
    end = header_end(raw)
    head, rest = raw[:end], raw[end:]
    eol = b"\r\n" if raw.startswith(b"\r\n", end) or b"\r\n" in head else b"\n"
    lines = head.split(eol)
    wanted = name.lower().encode("ascii")
    new_line = f"{name}: {value}".encode("ascii")
    out: list[bytes] = []
    placed = skipping = False
    for line in lines:
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        if line.split(b":", 1)[0].strip().lower() == wanted and b":" in line:
            skipping = True
            if not placed:
                out.append(new_line)
                placed = True
            continue
        out.append(line)
    if not placed:
        out.insert(0, new_line)
    return eol.join(out) + rest
