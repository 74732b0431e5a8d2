"""Modified UTF-7 vectors (RFC 3501 §5.1.3) and strictness."""

import pytest

from mailserver.imap.protocol.mutf7 import MUTF7Error, decode, encode

VECTORS = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("Foo&Bar", "Foo&-Bar"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Été", "&AMk-t&AOk-"),
    ("Brouillons/Réponses", "Brouillons/R&AOk-ponses"),
    ("😀", "&2D3eAA-"),
    ("a\tb", "a&AAk-b"),
    ("é&ü", "&AOk-&-&APw-"),
]


@pytest.mark.parametrize(("text", "wire"), VECTORS)
def test_vectors(text: str, wire: str) -> None:
    assert encode(text) == wire
    assert decode(wire) == text
    assert decode(wire.encode("ascii")) == text


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated
        "&AMk",  # unterminated
        "&Jjo!",  # bad alphabet, unterminated
        "&AGE-",  # encodes printable ASCII "a"
        "&ACY-",  # encodes "&" which must be "&-"
        "&AMk-&AOk-",  # adjacent runs must be merged
        "&AMl-",  # non-zero padding bits
        "&2D0-",  # unpaired high surrogate
        "&A-",  # truncated run
        "&AM-",  # odd octet count
        "&AM/-",  # '/' instead of ','
        "a\x7fb",  # DEL is not printable
        "caf\xe9",  # raw 8-bit
    ],
)
def test_strict_rejects(wire: str) -> None:
    with pytest.raises(MUTF7Error):
        decode(wire)


def test_bytes_with_8bit_rejected() -> None:
    with pytest.raises(MUTF7Error):
        decode("café".encode())
