"""Header fields by name (any case, RFC 6532 octets, RFC 2047 words), the one text-decoding rule, and
the byte-exact header edits (the From display name of patients)."""

from __future__ import annotations

import pytest

from mailserver.charsets import decode_text
from mailserver.headers import HeaderView, decode_header, has_field, replace_field


def test_replace_keeps_every_other_byte() -> None:
    raw = (
        b"Received: x\r\nFrom: <262112b82955335@patient.a.mssante.test>\r\n"
        b"Subject: a\r\n b\r\n\r\nFrom: body\r\n"
    )
    out = replace_field(raw, "From", '"PETIT Pierre (patient)" <262112b82955335@patient.a.mssante.test>')
    assert out == (
        b'Received: x\r\nFrom: "PETIT Pierre (patient)" <262112b82955335@patient.a.mssante.test>\r\n'
        b"Subject: a\r\n b\r\n\r\nFrom: body\r\n"
    )


def test_folded_and_repeated_fields_become_one_line() -> None:
    raw = b"from: a\n  continued\nTo: b\nFROM: c\n\nbody"
    assert replace_field(raw, "From", "x@y") == b"From: x@y\nTo: b\n\nbody"


def test_absent_field_is_prepended() -> None:
    assert replace_field(b"To: b\r\n\r\n", "From", "x@y") == b"From: x@y\r\nTo: b\r\n\r\n"


def test_has_field_reads_only_the_top_level_header() -> None:
    raw = b"Subject: a\r\n message-id: folded\r\nDATE: x\r\n\r\nMessage-ID: <in the body>\r\n"
    assert has_field(raw, "Date") and has_field(raw, "subject")
    assert not has_field(raw, "Message-ID")


def test_view_reads_names_in_any_case_and_keeps_every_occurrence() -> None:
    raw = (
        b"Message-Id: <a@x>\r\nfrom: A <a@x>\r\nFROM: B <b@x>\r\nSubject: un\r\n deux\r\n"
        b"\r\nMessage-ID: <body>\r\n"
    )
    view = HeaderView.parse(raw)
    for name in ("Message-ID", "Message-Id", "message-id", "MESSAGE-ID"):
        assert view.get(name) == "<a@x>" and name in view
    assert view["From"] == "A <a@x>" and view.get_all("from") == ["A <a@x>", "B <b@x>"]
    assert view["subject"] == "un deux"
    assert view.get("In-Reply-To") is None and view.get_all("Sender") == []


def test_view_reads_raw_utf8_and_encoded_words_without_replacement_characters() -> None:
    raw = "Subject: Résultats\r\nX-A: =?utf-8?q?R=E9sultats?=\r\nX-B: R".encode() + b"\xe9sultats\r\n\r\n"
    view = HeaderView.parse(raw)
    assert view.text("Subject") == "Résultats"
    assert view.text("X-A") == "Résultats"  # Latin-1 bytes labelled UTF-8
    assert view.text("X-B") == "Résultats"  # Latin-1 octets in the header, not UTF-8
    assert view.text("X-C") is None


def test_view_of_a_message_without_header() -> None:
    assert len(HeaderView.parse(b"\r\nSubject: body\r\n")) == 0


@pytest.mark.parametrize(
    ("data", "charset", "text"),
    [
        ("Résultats".encode(), None, "Résultats"),
        ("12 € « ok »".encode("cp1252"), None, "12 € « ok »"),
        ("12 € « ok »".encode("cp1252"), "utf-8", "12 € « ok »"),
        ("Coût".encode(), "us-ascii", "Coût"),
        ("Coût €".encode("cp1252"), "iso-8859-1", "Coût €"),
        ("Жизнь".encode("koi8-r"), "koi8-r", "Жизнь"),
        ("Жизнь".encode(), "no-such-charset", "Жизнь"),
        ("é".encode(), "base64", "é"),
        (b"+2AA-\xe9", "utf-7", "+2AA-é"),
        (b"\x81\x8d\x8f\x90\x9d", None, "\x81\x8d\x8f\x90\x9d"),
    ],
)
def test_decode_text_never_invents_replacement_characters(
    data: bytes, charset: str | None, text: str
) -> None:
    assert decode_text(data, charset) == text


def test_encoded_words() -> None:
    assert decode_header("=?utf-8?b?UsOpc3VsdGF0cw==?= =?ISO-8859-1*fr?Q?_d'=E9cho?=") == "Résultats d'écho"
    assert decode_header("=?x-unknown?q?R=C3=A9sultats?=") == "Résultats"
