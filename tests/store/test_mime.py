"""Tests for the one-shot MIME analysis used by IMAP FETCH/SEARCH/SORT/THREAD."""

from __future__ import annotations

import base64
import binascii
import email
import email.quoprimime
import json
import time
from email import policy
from email.message import Message
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailserver.store.mime import (
    MAX_DEPTH,
    analyze,
    base_subject,
    binary_section,
    binary_size,
    parse_addresses,
    section,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def roundtrip(raw: bytes) -> dict[str, Any]:
    """What IMAP sees: the cache goes through JSON in the blob row."""
    return json.loads(json.dumps(analyze(raw)))


def walk(node: dict[str, Any]):
    yield node
    for child in node.get("parts", []):
        yield from walk(child)
    if "body" in node:
        yield from walk(node["body"])


def independent_lines(body: bytes) -> int:
    if not body:
        return 0
    return len(body.split(b"\n")) - (1 if body.endswith(b"\n") else 0)


SIMPLE = crlf(
    "From: Dr Alice Martin <alice.martin@chu-exemple.mssante.fr>\n"
    "To: bob@cabinet.mssante.fr\n"
    "Subject: Compte rendu\n"
    "Date: Mon, 3 Mar 2025 09:15:00 +0100\n"
    "Message-ID: <cr-1@chu-exemple.mssante.fr>\n"
    "\n"
    "Bonjour,\n"
    "voici le compte rendu.\n"
)

ATTACHMENTS = crlf(
    "From: alice@chu.mssante.fr\n"
    "To: bob@cab.mssante.fr\n"
    "Subject: Résultats\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="=_outer"\n'
    "\n"
    "This is a multi-part message in MIME format.\n"
    "--=_outer\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "R=C3=A9sultats ci-joints.=\n"
    " Cordialement\n"
    "--=_outer\n"
    'Content-Type: application/pdf; name="cr.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    'Content-Disposition: attachment; filename="cr.pdf"\n'
    "Content-ID: <pdf1@chu>\n"
    "Content-Description: Compte rendu\n"
    "Content-Language: fr, en\n"
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
    "Content-Location: http://example.org/\n"
    " cr.pdf\n"
    "\n"
    "JVBERi0xLjQKJcfs\n"
    "j6IKNSAwIG9iago=\n"
    "--=_outer\n"
    "Content-Type: image/png\n"
    "Content-Transfer-Encoding: base64\n"
    "Content-Disposition: inline\n"
    "\n"
    "iVBORw0KGgo=\n"
    "--=_outer--\n"
    "epilogue\n"
)

NESTED = crlf(
    "From: a@x.fr\n"
    'Content-Type: multipart/mixed; boundary="m"\n'
    "\n"
    "--m\n"
    'Content-Type: multipart/alternative; boundary="a"\n'
    "\n"
    "--a\n"
    "Content-Type: text/plain\n"
    "\n"
    "plain text\n"
    "--a\n"
    "Content-Type: text/html\n"
    "\n"
    "<p>html</p>\n"
    "--a--\n"
    "--m\n"
    "Content-Type: application/octet-stream\n"
    "\n"
    "DATA\n"
    "--m--\n"
)

# 1 text/plain; 2 message/rfc822 → multipart/mixed (2.1 text, 2.2 alternative (2.2.1, 2.2.2),
# 2.3 message/rfc822 → simple text message).
DEEP = crlf(
    "From: outer@x.fr\n"
    "Subject: outer\n"
    'Content-Type: multipart/mixed; boundary="L1"\n'
    "\n"
    "--L1\n"
    "\n"
    "outer text\n"
    "--L1\n"
    "Content-Type: message/rfc822\n"
    "Content-Description: forwarded\n"
    "\n"
    'From: "Inner, Sender" <inner@y.fr>\n'
    "Subject: inner\n"
    "X-Trace: abc\n"
    "  def\n"
    'Content-Type: multipart/mixed; boundary="L2"\n'
    "\n"
    "--L2\n"
    "Content-Type: text/plain\n"
    "\n"
    "inner text\n"
    "--L2\n"
    'Content-Type: multipart/alternative; boundary="L3"\n'
    "\n"
    "--L3\n"
    "Content-Type: text/plain; charset=us-ascii\n"
    "\n"
    "alt plain\n"
    "--L3\n"
    "Content-Type: text/html\n"
    "\n"
    "<b>alt</b>\n"
    "--L3--\n"
    "--L2\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "From: deepest@z.fr\n"
    "Subject: deepest\n"
    "Received: from a\n"
    "\tby b\n"
    "\n"
    "deepest body\n"
    "line 2\n"
    "--L2--\n"
    "--L1--\n"
)


# --------------------------------------------------------------------------- structure


def test_simple_text_message() -> None:
    meta = roundtrip(SIMPLE)
    env = meta["envelope"]
    assert env[0] == "Mon, 3 Mar 2025 09:15:00 +0100"
    assert env[1] == "Compte rendu"
    assert env[2] == [["Dr Alice Martin", None, "alice.martin", "chu-exemple.mssante.fr"]]
    assert env[3] == env[4] == env[2]  # RFC 9051 §7.5.2 defaults
    assert env[5] == [[None, None, "bob", "cabinet.mssante.fr"]]
    assert env[6] is env[7] is env[8] is None
    assert env[9] == "<cr-1@chu-exemple.mssante.fr>"
    body = meta["bodystructure"]
    assert (body["type"], body["subtype"], body["params"], body["encoding"]) == (
        "text",
        "plain",
        [["charset", "us-ascii"]],
        "7BIT",
    )
    text = b"Bonjour,\r\nvoici le compte rendu.\r\n"
    assert body["size"] == len(text) and body["lines"] == 2
    assert meta["size"] == len(SIMPLE)
    assert meta["header_size"] == SIMPLE.index(b"\r\n\r\n") + 4
    assert section(SIMPLE, meta, [], None) == SIMPLE
    assert section(SIMPLE, meta, [], "TEXT") == text
    assert section(SIMPLE, meta, [1], None) == text
    assert section(SIMPLE, meta, [], "HEADER") == SIMPLE[: meta["header_size"]]
    assert section(SIMPLE, meta, [1], "MIME") == SIMPLE[: meta["header_size"]]
    assert section(SIMPLE, meta, [], "MIME") == b""
    assert section(SIMPLE, meta, [2], None) == b""
    assert section(SIMPLE, meta, [1, 1], None) == b""
    assert section(SIMPLE, meta, [1], "HEADER") == b""
    headers = meta["headers"]
    assert headers["date"] == "2025-03-03T09:15:00+01:00"
    assert headers["message_id"] == "<cr-1@chu-exemple.mssante.fr>"


def test_multipart_with_attachments() -> None:
    meta = roundtrip(ATTACHMENTS)
    root = meta["bodystructure"]
    assert (root["type"], root["subtype"], root["params"]) == (
        "multipart",
        "mixed",
        [["boundary", "=_outer"]],
    )
    text, pdf, png = root["parts"]
    assert text["encoding"] == "QUOTED-PRINTABLE" and text["lines"] == 2
    assert pdf["params"] == [["name", "cr.pdf"]]
    assert pdf["disposition"] == ["attachment", [["filename", "cr.pdf"]]]
    assert pdf["id"] == "<pdf1@chu>"
    assert pdf["description"] == "Compte rendu"
    assert pdf["language"] == ["fr", "en"]
    assert pdf["md5"] == "Q2hlY2sgSW50ZWdyaXR5IQ=="
    assert pdf["location"] == "http://example.org/cr.pdf"
    assert "lines" not in pdf
    assert png["disposition"] == ["inline", None] and png["params"] is None
    assert section(ATTACHMENTS, meta, [2], None) == b"JVBERi0xLjQKJcfs\r\nj6IKNSAwIG9iago="
    assert section(ATTACHMENTS, meta, [3], None) == b"iVBORw0KGgo="
    assert section(ATTACHMENTS, meta, [4], None) == b""
    assert section(ATTACHMENTS, meta, [1], "MIME").startswith(b"Content-Type: text/plain")
    assert section(ATTACHMENTS, meta, [1], "MIME").endswith(b"quoted-printable\r\n\r\n")
    assert meta["headers"]["subject"] == "Résultats"


def test_nested_alternative_inside_mixed() -> None:
    meta = roundtrip(NESTED)
    root = meta["bodystructure"]
    alt, _data = root["parts"]
    assert (alt["type"], alt["subtype"]) == ("multipart", "alternative")
    assert [(p["type"], p["subtype"]) for p in alt["parts"]] == [("text", "plain"), ("text", "html")]
    assert alt["parts"][0]["params"] is None  # explicit Content-Type without charset
    assert section(NESTED, meta, [1, 1], None) == b"plain text"
    assert section(NESTED, meta, [1, 2], None) == b"<p>html</p>"
    assert section(NESTED, meta, [2], None) == b"DATA"
    whole_alt = section(NESTED, meta, [1], None)
    assert whole_alt.startswith(b"--a\r\n") and whole_alt.endswith(b"--a--")
    assert section(NESTED, meta, [1, 3], None) == b""


def test_message_rfc822_attachment_sections_at_depth() -> None:
    meta = roundtrip(DEEP)
    root = meta["bodystructure"]
    fwd = root["parts"][1]
    assert (fwd["type"], fwd["subtype"], fwd["description"]) == ("message", "rfc822", "forwarded")
    assert fwd["envelope"][1] == "inner"
    assert fwd["envelope"][2] == [["Inner, Sender", None, "inner", "y.fr"]]
    inner = fwd["body"]
    assert [p["subtype"] for p in inner["parts"]] == ["plain", "alternative", "rfc822"]
    deepest = inner["parts"][2]
    assert deepest["envelope"][1] == "deepest"
    assert deepest["body"]["lines"] == 2

    part1 = section(DEEP, meta, [1], None)
    assert part1 == b"outer text"
    assert section(DEEP, meta, [1], "MIME") == b"\r\n"
    encapsulated = section(DEEP, meta, [2], None)
    assert encapsulated.startswith(b'From: "Inner') and encapsulated.endswith(b"--L2--")
    assert fwd["size"] == len(encapsulated) and fwd["lines"] == independent_lines(encapsulated)
    assert section(DEEP, meta, [2], "MIME") == crlf(
        "Content-Type: message/rfc822\nContent-Description: forwarded\n\n"
    )
    assert section(DEEP, meta, [2], "HEADER").startswith(b'From: "Inner, Sender"')
    assert section(DEEP, meta, [2], "HEADER").endswith(b'boundary="L2"\r\n\r\n')
    assert section(DEEP, meta, [2], "TEXT").startswith(b"--L2\r\n")
    assert section(DEEP, meta, [2], "HEADER.FIELDS", ["subject", "X-TRACE"]) == crlf(
        "Subject: inner\nX-Trace: abc\n  def\n\n"
    )
    assert section(DEEP, meta, [2, 1], None) == b"inner text"
    assert section(DEEP, meta, [2, 2, 1], None) == b"alt plain"
    assert section(DEEP, meta, [2, 2, 2], None) == b"<b>alt</b>"
    assert section(DEEP, meta, [2, 2, 1], "MIME") == crlf("Content-Type: text/plain; charset=us-ascii\n\n")
    assert section(DEEP, meta, [2, 2], "HEADER") == b""  # not a message/rfc822 part
    assert section(DEEP, meta, [2, 2], "TEXT") == b""
    assert section(DEEP, meta, [2, 2, 3], None) == b""
    # depth 3: a message/rfc822 inside a message/rfc822
    assert section(DEEP, meta, [2, 3], "MIME") == crlf("Content-Type: message/rfc822\n\n")
    assert section(DEEP, meta, [2, 3], "HEADER") == crlf(
        "From: deepest@z.fr\nSubject: deepest\nReceived: from a\n\tby b\n\n"
    )
    assert section(DEEP, meta, [2, 3], "TEXT") == crlf("deepest body\nline 2")
    assert section(DEEP, meta, [2, 3, 1], None) == crlf("deepest body\nline 2")
    assert section(DEEP, meta, [2, 3, 1], "MIME") == section(DEEP, meta, [2, 3], "HEADER")
    assert section(DEEP, meta, [2, 3, 2], None) == b""
    assert section(DEEP, meta, [2, 3], "HEADER.FIELDS", ["Received"]) == crlf("Received: from a\n\tby b\n\n")
    assert section(DEEP, meta, [2, 3], "HEADER.FIELDS", ["from", "subject"], negate=True) == crlf(
        "Received: from a\n\tby b\n\n"
    )
    assert section(DEEP, meta, [2, 3], "HEADER.FIELDS.NOT", ["received"]) == crlf(
        "From: deepest@z.fr\nSubject: deepest\n\n"
    )
    assert section(DEEP, meta, [2, 3], "HEADER.FIELDS", ["x-none"]) == b"\r\n"
    assert section(DEEP, meta, [], "HEADER.FIELDS", ["subject"]) == b"Subject: outer\r\n\r\n"


def test_rfc2231_filenames() -> None:
    raw = crlf(
        'Content-Type: multipart/mixed; boundary="b"\n'
        "\n"
        "--b\n"
        "Content-Type: application/pdf;\n"
        " name*0*=utf-8''ordonnance%20du%20;\n"
        ' name*1="Dr Lef";\n'
        " name*2*=%C3%A8vre.pdf\n"
        "Content-Disposition: attachment;\n"
        " filename*=iso-8859-1'fr'%E9t%E9.pdf; size=1234\n"
        "\n"
        "x\n"
        "--b--\n"
    )
    part = analyze(raw)["bodystructure"]["parts"][0]
    assert ["name", "ordonnance du Dr Lefèvre.pdf"] in part["params"]
    assert part["disposition"][0] == "attachment"
    assert ["filename", "été.pdf"] in part["disposition"][1]
    assert ["size", "1234"] in part["disposition"][1]


def test_digest_default_type_is_message_rfc822() -> None:
    raw = crlf(
        'Content-Type: multipart/digest; boundary="d"\n\n--d\n\nSubject: one\n\nfirst\n--d\n'
        "Content-Type: text/plain\n\nnot a message\n--d--\n"
    )
    meta = analyze(raw)
    first, second = meta["bodystructure"]["parts"]
    assert (first["type"], first["subtype"], first["envelope"][1]) == ("message", "rfc822", "one")
    assert section(raw, meta, [1, 1], None) == b"first"
    assert (second["type"], second["subtype"]) == ("text", "plain")


# --------------------------------------------------------------------------- addresses and headers


def test_group_syntax_and_odd_addresses() -> None:
    value = (
        'Équipe soins: "Dupont, Jean" <jean@a.fr>, paul@b.fr;, undisclosed-recipients:;, '
        "<@relay.fr,@r2.fr:x@c.fr>, bare-word, =?utf-8?q?Z=C3=A9?= <z@d.fr>, y@e.fr (Yves Y)"
    )
    assert parse_addresses(value) == [
        [None, None, "Équipe soins", None],
        ["Dupont, Jean", None, "jean", "a.fr"],
        [None, None, "paul", "b.fr"],
        [None, None, None, None],
        [None, None, "undisclosed-recipients", None],
        [None, None, None, None],
        [None, "@relay.fr,@r2.fr", "x", "c.fr"],
        [None, None, "bare-word", "MISSING_DOMAIN"],
        ["=?utf-8?q?Z=C3=A9?=", None, "z", "d.fr"],
        ["Yves Y", None, "y", "e.fr"],
    ]
    assert parse_addresses("Open group: a@b.fr") == [
        [None, None, "Open group", None],
        [None, None, "a", "b.fr"],
        [None, None, None, None],
    ]
    assert parse_addresses('"quoted local"@x.fr') == [[None, None, '"quoted local"', "x.fr"]]
    assert parse_addresses("") is None
    assert parse_addresses(None) is None


def test_missing_and_empty_headers() -> None:
    raw = b"Subject:\r\nX-Other: 1\r\n\r\nbody"
    meta = roundtrip(raw)
    env = meta["envelope"]
    assert env[1] == ""  # present but empty → empty string (RFC 9051 §7.5.2)
    assert env[0] is None and env[9] is None and env[8] is None
    assert env[2] is env[3] is env[4] is env[5] is None
    assert meta["headers"]["base_subject"] == ""
    assert meta["headers"]["date"] is None
    body = meta["bodystructure"]
    assert (body["type"], body["subtype"], body["params"]) == ("text", "plain", [["charset", "us-ascii"]])
    assert body["lines"] == 1

    headerless = b"\r\njust a body\r\n"
    meta = analyze(headerless)
    assert meta["bodystructure"]["part"] == [0, 0, 2, len(headerless)]
    assert section(headerless, meta, [], "HEADER") == b"\r\n"
    assert meta["envelope"] == [None] * 10

    bodyless = b"Subject: only headers\r\n"
    meta = analyze(bodyless)
    assert meta["bodystructure"]["part"] == [0, len(bodyless), len(bodyless), len(bodyless)]
    assert meta["envelope"][1] == "only headers"
    assert section(bodyless, meta, [], "TEXT") == b""


def test_invalid_content_type_defaults() -> None:
    for value in ("garbage", "text/", "/plain", "multipart/mixed", "té/xt"):
        raw = f"Content-Type: {value}\n\nhello\n".encode()
        body = analyze(raw)["bodystructure"]
        assert (body["type"], body["subtype"], body["params"]) == ("text", "plain", [["charset", "us-ascii"]])


def test_eight_bit_headers() -> None:
    raw = "From: Hélène Lévêque <helene@hôpital.fr>\nSubject: Résultat d'analyse\n\nok\n".encode()
    meta = roundtrip(raw)
    assert meta["envelope"][1] == "Résultat d'analyse"
    assert meta["envelope"][2] == [["Hélène Lévêque", None, "helene", "hôpital.fr"]]

    latin1 = "Subject: Compte rendu opératoire\n\nok\n".encode("latin-1")
    meta = roundtrip(latin1)
    assert meta["envelope"][1] == "Compte rendu opératoire"


def test_encoded_words_decoded_for_search_but_not_envelope() -> None:
    raw = crlf(
        "From: =?ISO-8859-1?Q?Fran=E7ois?= <f@x.fr>\n"
        "Subject: =?utf-8?B?UsOpc3VsdGF0?=\n =?utf-8?Q?s_bio?= [ok]\n"
        "References: <a@x> <b@y>\n <c@z>\n"
        "In-Reply-To: <c@z>\n"
        "Date: Tue, 4 Mar 2025 10:00:00 -0000\n"
        "\nx\n"
    )
    meta = roundtrip(raw)
    assert meta["envelope"][1] == "=?utf-8?B?UsOpc3VsdGF0?= =?utf-8?Q?s_bio?= [ok]"
    assert meta["envelope"][2][0][0] == "=?ISO-8859-1?Q?Fran=E7ois?="
    headers = meta["headers"]
    assert headers["subject"] == "Résultats bio [ok]"
    assert headers["from"] == "François <f@x.fr>"
    assert headers["references"] == ["<a@x>", "<b@y>", "<c@z>"]
    assert headers["in_reply_to"] == "<c@z>"
    assert headers["date"] == "2025-03-04T10:00:00+00:00"
    assert headers["base_subject"] == "Résultats bio [ok]"


@pytest.mark.parametrize(
    ("subject", "expected", "reply"),
    [
        ("Re: hello", "hello", True),
        ("RE:  Fwd: [liste] hello  (fwd)", "hello", True),
        ("[Fwd: Re: compte rendu]", "compte rendu", True),
        ("[SPAM] Réunion", "réunion", False),
        ("[only-blob]", "[only-blob]", False),
        ("Re:", "", True),
        ("\tPlain\t subject ", "plain subject", False),
        (None, "", False),
    ],
)
def test_base_subject(subject: str | None, expected: str, reply: bool) -> None:
    base, is_reply = base_subject(subject)
    assert (base.lower(), is_reply) == (expected, reply)


def test_sort_keys_and_address_texts_are_cached() -> None:
    """SORT/THREAD keys in i;unicode-casemap form (RFC 5256 §3, §7; RFC 5957), computed once."""
    raw = (
        "From: =?utf-8?q?Z=C3=A9d?= <ZED@X.FR>\nTo: undisclosed:;, B <Bob@Y.FR>\n"
        'Cc: "a b"@z.fr\nSubject: RE: [x] Héllo (fwd)\n\nx'
    ).encode()
    headers = analyze(raw)["headers"]
    assert (headers["base_subject"], headers["subject_is_reply"]) == ("Héllo", True)
    assert headers["sort"] == {
        "subject": "HE\u0301LLO",
        "from": "ZED",
        "to": "UNDISCLOSED",  # a group's start: its name
        "cc": "A B",  # quoting removed (RFC 9051 §9 addr-mailbox)
        "displayfrom": "ZE\u0301D",
        "displayto": "UNDISCLOSED",
    }
    assert headers["addresses"] == {
        "from": "Zéd <ZED@X.FR>",
        "to": "undisclosed\nB <Bob@Y.FR>",
        "cc": '"a b"@z.fr',
        "bcc": "",
    }


# --------------------------------------------------------------------------- robustness


def test_bare_lf_offsets_are_exact() -> None:
    raw = ATTACHMENTS.replace(b"\r\n", b"\n")
    meta = roundtrip(raw)
    text, pdf, _png = meta["bodystructure"]["parts"]
    assert raw[text["part"][2] : text["part"][3]] == b"R=C3=A9sultats ci-joints.=\n Cordialement"
    assert raw[pdf["part"][0] : pdf["part"][1]].startswith(b"Content-Type: application/pdf")
    assert raw[pdf["part"][1] : pdf["part"][2]] == b"\n"
    assert section(raw, meta, [2], None) == b"JVBERi0xLjQKJcfs\nj6IKNSAwIG9iago="
    assert section(raw, meta, [3], None) == b"iVBORw0KGgo="
    assert binary_section(raw, meta, [1]) == "Résultats ci-joints. Cordialement".encode()
    assert pdf["location"] == "http://example.org/cr.pdf"
    assert meta["header_size"] == raw.index(b"\n\n") + 2


def test_mixed_line_endings() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=q\n\r\n--q\r\n\nfirst\n--q\n\r\nsecond\r\n--q--"
    meta = analyze(raw)
    assert section(raw, meta, [1], None) == b"first"
    assert section(raw, meta, [2], None) == b"second"


def test_malformed_boundaries() -> None:
    truncated = crlf('Content-Type: multipart/mixed; boundary="t"\n\n--t\n\npart one\n--t\n\npart two, cut')
    meta = analyze(truncated)
    assert [section(truncated, meta, [i], None) for i in (1, 2)] == [b"part one", crlf("part two, cut")]

    absent = crlf('Content-Type: multipart/mixed; boundary="never"\n\nno delimiter here\n')
    meta = analyze(absent)
    (only,) = meta["bodystructure"]["parts"]
    assert (only["type"], only["size"], only["lines"]) == ("text", 0, 0)
    assert section(absent, meta, [1], None) == b""

    lookalike = crlf(
        'Content-Type: multipart/mixed; boundary="b"\n\n--b\n\n--bb is not a delimiter\n x--b\n--b-- \n'
    )
    meta = analyze(lookalike)
    assert section(lookalike, meta, [1], None) == crlf("--bb is not a delimiter\n x--b")

    no_boundary = b"Content-Type: multipart/mixed\n\n--x\n\nhi\n--x--\n"
    assert analyze(no_boundary)["bodystructure"]["type"] == "text"

    empty_parts = b"Content-Type: multipart/mixed; boundary=e\n\n--e\n--e\n\nx\n--e--\n"
    meta = analyze(empty_parts)
    first, _second = meta["bodystructure"]["parts"]
    assert first["part"][0] <= first["part"][3] and section(empty_parts, meta, [1], None) == b""
    assert section(empty_parts, meta, [2], None) == b"x"


def test_deep_nesting_is_capped() -> None:
    depth = 100
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
    tail = b"".join(b"\n--b%d--" % i for i in reversed(range(depth)))
    raw = head + b"\nleaf" + tail
    meta = roundtrip(raw)
    node, level = meta["bodystructure"], 0
    while node["type"] == "multipart":
        node, level = node["parts"][0], level + 1
    assert level == MAX_DEPTH
    assert (node["type"], node["subtype"]) == ("application", "octet-stream")
    assert section(raw, meta, [1] * MAX_DEPTH, None).endswith(b"--b32--")

    nested_messages = b"Content-Type: message/rfc822\n\n" * 60 + b"Subject: core\n\nx"
    meta = roundtrip(nested_messages)
    assert meta["bodystructure"]["type"] == "message"


def test_nul_bytes_and_huge_header() -> None:
    raw = (
        b"Subject: a\x00b\r\nX-Big: " + b"y" * 2_000_000 + b"\r\n" + b"X-F: z\r\n" * 20_000 + b"\r\n\x00body"
    )
    meta = roundtrip(raw)
    assert meta["envelope"][1] == "a\x00b"
    assert section(raw, meta, [], "TEXT") == b"\x00body"


# --------------------------------------------------------------------------- sizes, lines, binary


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_sizes_and_lines_match_independent_computation(eol: bytes) -> None:
    bodies = [b"one line", b"two" + eol + b"lines" + eol, b"", eol * 3, b"a" + eol + b"b" + eol + b"c"]
    chunks = [b"Content-Type: multipart/mixed; boundary=zz", b""]
    for body in bodies:
        chunks += [b"--zz", b"Content-Type: text/plain", b"", body]
    raw = eol.join([*chunks, b"--zz--", b""])
    meta = analyze(raw)
    parts = meta["bodystructure"]["parts"]
    assert len(parts) == len(bodies)
    for part, body in zip(parts, bodies, strict=True):
        assert part["size"] == len(body)
        assert part["lines"] == independent_lines(body)
    assert meta["lines"] == independent_lines(raw)


def test_binary_decoding() -> None:
    payload = bytes(range(256)) * 10
    encoded = base64.encodebytes(payload)
    qp_text = "Température 38,5 °C — à surveiller\n".encode()
    raw = (
        b'Content-Type: multipart/mixed; boundary="bin"\r\n\r\n'
        b"--bin\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: Base64\r\n\r\n"
        + encoded.replace(b"\n", b"\r\n")
        + b"\r\n--bin\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + binascii.b2a_qp(qp_text)
        + b"\r\n--bin\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 f\r\n"
        + b"\r\n--bin\r\nContent-Transfer-Encoding: 8bit\r\n\r\nd\xc3\xa9j\xc3\xa0"
        + b"\r\n--bin\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n!!AwQ=\r\n="
        + b"\r\n--bin--\r\n"
    )
    meta = roundtrip(raw)
    assert binary_section(raw, meta, [1]) == payload
    assert binary_size(raw, meta, [1]) == len(payload)
    assert binary_section(raw, meta, [2]) == qp_text
    assert binary_section(raw, meta, [3]) is None and binary_size(raw, meta, [3]) is None
    assert binary_section(raw, meta, [4]) == "déjà".encode()
    assert binary_size(raw, meta, [4]) == len("déjà".encode())
    assert binary_section(raw, meta, [5]) == b"\x00\x01\x02\x03\x04"
    assert binary_section(raw, meta, [9]) == b""
    assert binary_section(raw, meta, []) == raw


@pytest.mark.parametrize(
    "encoded",
    [
        b"trailing blanks  \t\r\nare not content\r\n",  # RFC 2045 §6.7 rule 3
        b"a soft=\r\nbreak, a soft= \t\r\nbreak after blanks, =3D=3d=C3=A9\r\n",  # rules 1 and 5
        b"encoded blanks stay=20\r\n=09\r\nlast line without its end= ",
        b"bare LF lines  \nsoft=\nbreak\n",
    ],
)
def test_quoted_printable_follows_rfc_2045(encoded: bytes) -> None:
    raw = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded
    eol = "\r\n" if b"\r\n" in encoded else "\n"
    # The email package's quoted-printable body decoder (its get_payload(decode=True) keeps the blanks).
    expected = email.quoprimime.body_decode(encoded.decode("ascii")).replace("\n", eol).encode("latin-1")
    meta = roundtrip(raw)
    assert binary_section(raw, meta, [1]) == expected
    assert binary_size(raw, meta, [1]) == len(expected)


def test_quoted_printable_decoding_is_linear() -> None:
    """Long runs of blanks, inside a line and at its end, cost no backtracking."""
    raw = (
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b" " * 2_000_000
        + b"x\r\n"
        + b"\t " * 500_000
    )
    started = time.process_time()
    assert binary_section(raw, analyze(raw), [1]) == b" " * 2_000_000 + b"x\r\n"
    assert time.process_time() - started < 1.0  # CPU time: a backtracking decoder takes minutes


def test_large_message_is_fast() -> None:
    attachment = base64.encodebytes(b"\x89PNG" + bytes(range(256)) * 24000).replace(b"\n", b"\r\n")
    parts = [b"--big\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"]
    parts += [
        b"--big\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n" + attachment
        for _ in range(3)
    ]
    raw = b'From: a@b.fr\r\nContent-Type: multipart/mixed; boundary="big"\r\n\r\n' + b"".join(parts)
    raw += b"--big--\r\n"
    assert len(raw) > 24 * 1024 * 1024
    started = time.process_time()
    meta = analyze(raw)
    elapsed = time.process_time() - started  # CPU time: other load on the machine does not count
    assert elapsed < 1.0, elapsed
    assert [p["size"] for p in meta["bodystructure"]["parts"][1:]] == [len(attachment) - 2] * 3
    assert len(json.dumps(meta)) < 10_000


# --------------------------------------------------------------------------- cross-check with email


def email_parts(
    message: Message, prefix: tuple[int, ...] = (), is_message: bool = True
) -> dict[tuple[int, ...], Message]:
    """Map IMAP part numbers to stdlib parts (RFC 9051 §6.4.5: a non-multipart message body is part 1)."""
    out: dict[tuple[int, ...], Message] = {}
    if message.get_content_maintype() == "multipart":
        for index, child in enumerate(message.get_payload(), 1):
            out.update(email_parts(child, (*prefix, index), False))
    elif message.get_content_type() == "message/rfc822" and not is_message:
        out[prefix] = message
        out.update(email_parts(message.get_payload(0), prefix, True))
    else:
        out[(*prefix, 1) if is_message else prefix] = message
    return out


@pytest.mark.parametrize("raw", [ATTACHMENTS, NESTED, DEEP, ATTACHMENTS.replace(b"\r\n", b"\n")])
def test_part_slices_match_stdlib_parser(raw: bytes) -> None:
    meta = analyze(raw)
    parsed = email.message_from_bytes(raw, policy=policy.compat32)
    leaves = email_parts(parsed)
    assert leaves
    for number, part in leaves.items():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload(0)
            assert section(raw, meta, list(number), "HEADER.FIELDS", ["subject"]).rstrip(b"\r\n") == (
                f"Subject: {inner['subject']}".encode()
            )
            continue
        assert section(raw, meta, list(number), None) == part.get_payload().encode("ascii"), number
        assert binary_section(raw, meta, list(number)) == part.get_payload(decode=True), number


# --------------------------------------------------------------------------- property tests


def check_offsets(raw: bytes, meta: dict[str, Any]) -> None:
    json.dumps(meta, ensure_ascii=False).encode("utf-8")  # the IMAP encoder writes UTF-8
    assert meta["size"] == len(raw)
    for node in walk(meta["bodystructure"]):
        start, header_end, body_start, end = node["part"]
        assert 0 <= start <= header_end <= body_start <= end <= len(raw)
        if "size" in node:
            assert node["size"] == end - body_start


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_analyze_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    meta = analyze(raw)
    json.dumps(meta)
    check_offsets(raw, meta)
    section(raw, meta, [1, 2], "HEADER.FIELDS", ["subject"])
    binary_section(raw, meta, [1])


MIME_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=a\r\n",
        b"Content-Type: multipart/digest; boundary=b\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/plain; charset*=utf-8''%C3%A9\r\n",
        b"Content-Transfer-Encoding: base64\n",
        b"Content-Disposition: attachment; filename*0=a; filename*1=b\r\n",
        b'From: a@b, "c" <d@e>, g: h@i;\r\n',
        b"To: =?utf-8?q?x?= <y@z>\n",
        b"Subject: =?bogus?B?@@@?= =?utf-7?q?+2D3-?=\r\n",
        b"Content-Type: text/plain; name*=utf-7''+2D3-\n",
        b"Date: 32 Foo 99999 99:99:99\r\n",
        b"--a\r\n",
        b"--a--\r\n",
        b"--b\n",
        b"\r\n",
        b"\n",
        b" folded\r\n",
        b"body text\r\n",
        b"\xff\xfe\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(MIME_PIECES, max_size=40))
def test_analyze_never_raises_on_mime_like_input(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    meta = roundtrip(raw)
    check_offsets(raw, meta)
    for number in ([1], [1, 1], [2, 1, 1]):
        for kind in (None, "HEADER", "TEXT", "MIME"):
            section(raw, meta, number, kind)
        binary_size(raw, meta, number)
