"""Message bytes to text: the one rule for header octets, encoded words and text bodies.

The portal, the conversation records, IMAP SEARCH/SORT and reply building all read mail through
``decode_text``, so a message never reads one way in one place and another elsewhere, and never with
an invented U+FFFD: the declared charset when the bytes really are in it (a Latin-1 label is read as
its superset Windows-1252, as the WHATWG Encoding Standard and mail clients do); else UTF-8 when the
bytes are valid UTF-8 (RFC 6532 header octets, and what 8-bit text without a charset, or wrongly
labelled US-ASCII, is in practice); else Windows-1252, in which every byte decodes.
"""

from __future__ import annotations

import codecs

# Windows-1252 leaves 0x81 0x8D 0x8F 0x90 0x9D unassigned: those stay the Latin-1 (C1) characters.
_CP1252_C1 = {
    b: bytes([b]).decode("cp1252") for b in range(0x80, 0xA0) if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}
_WINDOWS_1252_LABELS = frozenset({"iso8859-1", "cp1252"})


def _windows_1252(data: bytes) -> str:
    """Decode as Windows-1252; never fails (its unassigned bytes read as Latin-1)."""
    return data.decode("latin-1").translate(_CP1252_C1)


def decode_text(data: bytes, charset: str | None = None) -> str:
    """``data`` as text by the rule of the module docstring; never raises, never yields U+FFFD."""
    if data.isascii():
        return data.decode("ascii")
    codec = _codec(charset)
    if codec in _WINDOWS_1252_LABELS:
        return _windows_1252(data)
    if codec is not None and codec not in ("ascii", "utf-8"):
        try:
            text = data.decode(codec)
            text.encode("utf-8")  # exotic codecs (UTF-7) may yield lone surrogates: not text either
            return text
        except (LookupError, ValueError):  # not a text encoding (base64, rot13), or not these bytes
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _windows_1252(data)


def _codec(charset: str | None) -> str | None:
    """Python's name for a declared charset (RFC 2231 §5 ``*language`` suffix dropped), None if unknown."""
    if not charset:
        return None
    try:
        return codecs.lookup(charset.split("*", 1)[0].strip().strip('"')).name
    except (LookupError, ValueError):
        return None
