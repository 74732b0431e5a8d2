"""Modified UTF-7 for mailbox names (RFC 3501 §5.1.3, kept by RFC 9051 §5.1.3).

The decoder is strict: every name has exactly one valid encoding, so accepting
sloppy forms would let two different wire names designate the same mailbox.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["MUTF7Error", "decode", "encode"]


class MUTF7Error(ValueError):
    """The name is not valid modified UTF-7; the session answers NO/BAD."""


def _is_direct(ch: str) -> bool:
    return "\x20" <= ch <= "\x7e"


def _b64(chunk: str) -> str:
    data = chunk.encode("utf-16-be")
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")


def encode(name: str) -> str:
    """Encode a Unicode mailbox name; printable ASCII is sent as is and ``&`` as ``&-``."""
    out: list[str] = []
    pending: list[str] = []
    for ch in name:
        if _is_direct(ch):
            if pending:
                out.append("&" + _b64("".join(pending)) + "-")
                pending.clear()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    if pending:
        out.append("&" + _b64("".join(pending)) + "-")
    return "".join(out)


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _decode_run(run: str) -> str:
    if not run or not set(run) <= _B64_ALPHABET:
        raise MUTF7Error("invalid modified base64")
    if len(run) % 4 == 1:
        raise MUTF7Error("truncated modified base64")
    padded = run.replace(",", "/") + "=" * (-len(run) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise MUTF7Error("invalid modified base64") from exc
    if len(raw) % 2:
        raise MUTF7Error("odd number of octets in UTF-16 run")
    # Leftover bits must be zero, otherwise the same text has several spellings.
    if base64.b64encode(raw).decode("ascii").rstrip("=") != padded.rstrip("="):
        raise MUTF7Error("non-zero padding bits")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise MUTF7Error("invalid UTF-16 (unpaired surrogate)") from exc
    if any(_is_direct(ch) for ch in text):
        raise MUTF7Error("printable ASCII must not be base64-encoded")
    return text


def decode(name: str | bytes) -> str:
    """Decode a modified UTF-7 name, raising :class:`MUTF7Error` on any non-canonical form."""
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MUTF7Error("8-bit octet in modified UTF-7 name") from exc
    out: list[str] = []
    i = 0
    n = len(name)
    prev_encoded_end = -1
    while i < n:
        amp = name.find("&", i)
        plain = name[i:] if amp < 0 else name[i:amp]
        if not all(_is_direct(ch) for ch in plain):
            raise MUTF7Error("control or 8-bit character in name")
        out.append(plain)
        if amp < 0:
            break
        end = name.find("-", amp + 1)
        if end < 0:
            raise MUTF7Error("unterminated '&' shift sequence")
        if end == amp + 1:
            out.append("&")
        else:
            if amp == prev_encoded_end:
                raise MUTF7Error("adjacent encoded runs must be merged")
            out.append(_decode_run(name[amp + 1 : end]))
            prev_encoded_end = end + 1
        i = end + 1
    return "".join(out)
