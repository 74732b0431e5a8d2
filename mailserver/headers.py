"""Byte-exact edits of a message's top-level header, for the few fields the server itself sets.

Only the named field changes; every other byte (order, folding, line endings, the body) is kept, so
nothing else a signature or a client relies on moves.
"""

from __future__ import annotations


def header_end(raw: bytes) -> int:
    """Offset of the blank line ending the header (CRLF or bare LF), or len(raw) without a body."""
    crlf, lf = raw.find(b"\r\n\r\n"), raw.find(b"\n\n")
    candidates = [i for i in (crlf, lf) if i >= 0]
    return min(candidates) if candidates else len(raw)


def has_field(raw: bytes, name: str) -> bool:
    """Whether the top-level header holds field ``name`` (case-insensitive)."""
    wanted = name.lower().encode("ascii")
    head = raw[: header_end(raw)]
    return any(
        line.split(b":", 1)[0].strip().lower() == wanted
        for line in head.replace(b"\r\n", b"\n").split(b"\n")
        if b":" in line and line[:1] not in (b" ", b"\t")
    )


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
