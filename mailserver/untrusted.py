"""Untrusted octets made safe to show: in a protocol reply, a log line, an audit event.

A client controls what it sends, including bytes that are not UTF-8 (kept by ``surrogateescape`` when
a command line is decoded) and control characters (CR, LF, NUL, ESC): written back as they are, they
fail to encode, forge lines, or end up in the audit trail unreadable. ``printable`` keeps every
printable character (non-ASCII letters too, RFC 6531 addresses stay readable) and spells anything
else as a Python-style escape, so the text is one line, encodes as UTF-8 and still says what was sent.
"""

from __future__ import annotations

_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)  # what ``surrogateescape`` makes of the octets 0x80-0xFF


def _escape(c: str) -> str:
    code = ord(c)
    if code in _SURROGATE_ESCAPES:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: str | bytes, limit: int | None = None) -> str:
    """``value`` (bytes are read as UTF-8, invalid octets kept as escapes) with every character that is
    not printable escaped, cut to ``limit`` characters when given."""
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return text if limit is None else text[:limit]
