"""Byte-exact header edits (the From display name of patients)."""

from __future__ import annotations

from mailserver.headers import has_field, replace_field


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
