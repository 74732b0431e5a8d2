"""CATENATE (RFC 4469): APPEND from literals and IMAP URLs (RFC 5092), over a real connection."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mailserver.imap.base import Fail
from mailserver.imap.catenate import parse_url
from tests.imap.conftest import MARTIN, SECRETARIAT, IMAPEnv, running
from tests.imap.helpers import Client

BOUNDARY = "------------030308070208000400050907"
HEADER = (
    "From: Bob Ar <bar@example.org>\r\nTo: foo@example.net\r\nSubject: About our holiday trip\r\n"
    f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{BOUNDARY}"\r\n\r\n'
).encode()
PART1_MIME = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
PART1 = b"Our travel agent has sent the updated schedule.\r\n\r\nCheers,\r\nBob"
PART2_MIME = (
    b"Content-Type: application/x-zip-compressed; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
)
PART2 = b"UEsDBAoAAAAAAA==\r\n"
DRAFT = (
    HEADER
    + f"--{BOUNDARY}\r\n".encode()
    + PART1_MIME
    + PART1
    + f"\r\n--{BOUNDARY}\r\n".encode()
    + PART2_MIME
    + PART2
    + f"\r\n--{BOUNDARY}--\r\n".encode()
)
OTHER = b"From: x@example.org\r\nSubject: attached\r\n\r\nsecond message\r\n"


def lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


async def run(c: Client, command: bytes) -> list[str]:
    tag = c.tag()
    await c.send(tag.encode() + b" " + command + b"\r\n")
    return await c.until(tag)


async def drafts(imap: IMAPEnv) -> tuple[Client, int]:
    """A connection with Drafts holding DRAFT (UID 1) and OTHER (UID 2); returns it and UIDVALIDITY."""
    c = await imap.connect()
    for data in (DRAFT, OTHER):
        assert (await run(c, b"APPEND Drafts " + lit(data)))[-1].split()[1] == "OK"
    status = (await c.ok("STATUS Drafts (UIDVALIDITY MESSAGES)"))[0]
    m = re.search(r"UIDVALIDITY (\d+)", status)
    assert m and "MESSAGES 2" in status
    return c, int(m.group(1))


async def body(c: Client, mailbox: str, uid: int) -> bytes:
    await c.ok(f"EXAMINE {mailbox}")
    lines = await c.ok(f"UID FETCH {uid} BODY.PEEK[]")
    text = lines[0].split("}", 1)[1].removesuffix(")")
    return text.replace("\\r", "\r").replace("\\n", "\n").encode()


async def test_rfc4469_example_replace_attachment(imap: IMAPEnv) -> None:
    """RFC 4469 Appendix A example 1: header and part 1 by URL, a new part 2, a whole message by URL."""
    c, uidv = await drafts(imap)
    assert "CATENATE" in (await c.ok("CAPABILITY"))[0].split()
    base = f"/Drafts;UIDVALIDITY={uidv}/;UID=1".encode()
    sep = f"\r\n--{BOUNDARY}\r\n".encode()
    lines = await run(
        c,
        b'APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "'
        + base
        + b'/;section=HEADER" TEXT '
        + lit(sep[2:])
        + b' URL "'
        + base
        + b'/;section=1.MIME" URL "'
        + base
        + b'/;section=1" TEXT '
        + lit(sep)
        + b' URL "/Drafts/;UID=2" TEXT '
        + lit(f"\r\n--{BOUNDARY}--\r\n".encode())
        + b")",
    )
    assert re.fullmatch(rf"t\d+ OK \[APPENDUID {uidv} 3\] .*", lines[-1]), lines
    expected = HEADER + sep[2:] + PART1_MIME + PART1 + sep + OTHER + f"\r\n--{BOUNDARY}--\r\n".encode()
    assert await body(c, "Drafts", 3) == expected
    lines = await c.ok("UID FETCH 1:3 (FLAGS)")
    assert "\\Seen" not in lines[0] and "\\Seen" not in lines[1]  # URL parts are not marked \Seen
    assert "\\Seen" in lines[2] and "$MDNSent" in lines[2]
    await c.close()


async def test_sections_partial_and_absolute_url(imap: IMAPEnv) -> None:
    c, uidv = await drafts(imap)
    url = f"imap://{MARTIN.replace('@', '%40')}@{imap.rt.settings.server.hostname}/Drafts;UIDVALIDITY={uidv}"
    lines = await run(
        c,
        b'APPEND INBOX CATENATE (URL "/Drafts/;UID=2/;SECTION=HEADER.FIELDS%20(Subject)" TEXT '
        + lit(b"\r\n")
        + b' URL "/Drafts/;UID=1/;section=2" URL "/Drafts/;UID=2/;PARTIAL=2.5"'
        + b' URL "'
        + url.encode()
        + b'/;UID=2/;SECTION=TEXT" URL "/Drafts/;UID=1/;SECTION=1/;PARTIAL=100000.1")',
    )
    assert lines[-1].split()[1] == "OK", lines
    assert (
        await body(c, "INBOX", 1)
        == b"Subject: attached\r\n\r\n\r\n" + PART2 + b"om: x" + b"second message\r\n"
    )
    await c.close()


@pytest.mark.parametrize(
    "url",
    [
        "/Drafts;UIDVALIDITY=12345/;UID=1",  # stale UIDVALIDITY
        "/Drafts/;UID=9",  # no such message
        "/Drafts/;UID=1/;SECTION=7",  # no such body part
        "/Drafts/;UID=1/;SECTION=1.HEADER",  # part 1 is not a message
        "/Nowhere/;UID=1",  # no such mailbox
        f"imap://{SECRETARIAT.replace('@', '%40')}@mx.a.mssante.test/INBOX/;UID=1",  # another user
        f"imap://{MARTIN.replace('@', '%40')}@imap.elsewhere.test/Drafts/;UID=1",  # another server
        "/Drafts/;UID=1;URLAUTH=anonymous",
        "imap://mx.a.mssante.test/Drafts/;UID=1",
        "Drafts/;UID=1",
        "http://example.test/",
    ],
)
async def test_bad_urls_append_nothing(imap: IMAPEnv, url: str) -> None:
    """RFC 4469 §4.1: NO [BADURL url] naming the first URL that failed; nothing is stored."""
    c, _uidv = await drafts(imap)
    lines = await run(
        c, b"APPEND Drafts CATENATE (TEXT " + lit(b"hdr: 1\r\n\r\n") + b' URL "' + url.encode() + b'")'
    )
    assert lines[-1].startswith(f"{c.tag_of(lines)} NO [BADURL {url}] "), lines
    assert "MESSAGES 2" in (await c.ok("STATUS Drafts (MESSAGES)"))[0]
    if "SECTION" not in url:  # refused before any message is read: audited
        events = await imap.rt.audit.events(actor=MARTIN, action="catenate-refused")
        assert [e.request for e in events] == [f"imap APPEND BADURL {url}"]
    await c.close()


async def test_multiappend_with_catenate_is_atomic(imap: IMAPEnv) -> None:
    """RFC 3502 + RFC 4469 §1: CATENATE coexists with MULTIAPPEND; one bad URL appends none."""
    c, _uidv = await drafts(imap)
    lines = await run(
        c,
        b"APPEND INBOX "
        + lit(b"a: 1\r\n\r\nx")
        + b' (\\Flagged) CATENATE (URL "/Drafts/;UID=2" TEXT '
        + lit(b"!")
        + b")",
    )
    assert re.search(r"OK \[APPENDUID \d+ 1:2\]", lines[-1]), lines
    assert await body(c, "INBOX", 2) == OTHER + b"!"
    lines = await run(
        c,
        b'APPEND INBOX CATENATE (URL "/Drafts/;UID=1") CATENATE (URL "/Drafts/;UID=5") '
        + lit(b"z: 1\r\n\r\n"),
    )
    assert lines[-1].startswith(f"{c.tag_of(lines)} NO [BADURL /Drafts/;UID=5]")
    assert "MESSAGES 2" in (await c.ok("STATUS INBOX (MESSAGES)"))[0]
    lines = await run(c, b'APPEND Nowhere CATENATE (URL "/Drafts/;UID=1")')
    assert lines[-1].split()[1:3] == ["NO", "[TRYCREATE]"]
    assert (await run(c, b"APPEND INBOX CATENATE ()"))[-1].split()[1] == "BAD"
    assert (await run(c, b'APPEND INBOX CATENATE (FOO "x")'))[-1].split()[1] == "BAD"
    await c.close()


async def test_catenated_size_is_limited(sqlite_runtime: Any, pki: Any) -> None:
    """RFC 4469 §4.2: TOOBIG when the result would exceed the message size limit, URLs included."""
    async with running(sqlite_runtime, pki, message_size=len(DRAFT) + 10) as env:
        c, _uidv = await drafts(env)
        lines = await run(c, b'APPEND INBOX CATENATE (URL "/Drafts/;UID=1" TEXT ' + lit(b"x" * 11) + b")")
        assert lines[-1].startswith(f"{c.tag_of(lines)} NO [TOOBIG]"), lines
        many = b" ".join([b'URL "/Drafts/;UID=2"'] * 200)
        lines = await run(c, b"APPEND INBOX CATENATE (" + many + b")")
        assert lines[-1].startswith(f"{c.tag_of(lines)} NO [TOOBIG]"), lines
        lines = await run(c, b'APPEND INBOX CATENATE (URL "/Drafts/;UID=1" TEXT ' + lit(b"x" * 10) + b")")
        assert lines[-1].split()[1] == "OK"
        assert "MESSAGES 1" in (await c.ok("STATUS INBOX (MESSAGES)"))[0]
        await c.close()


def test_parse_url() -> None:
    url = parse_url("/Archives/2024%20%C3%A9t%C3%A9;UIDVALIDITY=7/;UID=20/;Section=1.2.MIME", MARTIN, "h")
    assert (url.mailbox, url.uidvalidity, url.uid, url.part, url.text) == (
        "Archives/2024 été",
        7,
        20,
        (1, 2),
        "MIME",
    )
    url = parse_url("/inbox/;uid=3/;section=HEADER.FIELDS.NOT%20(To%20Cc)/;partial=0.10", MARTIN, "h")
    assert (url.mailbox, url.text, url.fields, url.partial) == (
        "INBOX",
        "HEADER.FIELDS.NOT",
        ("To", "Cc"),
        (0, 10),
    )
    assert parse_url(f"imap://{MARTIN.replace('@', '%40')}@H:993/INBOX/;UID=1", MARTIN, "h").uid == 1
    for bad in ("/INBOX/;UID=0", "/INBOX;UID=1", "/INBOX/;UID=1/;SECTION=MIME", "/INBOX/;UID=1/;SECTION=%FF"):
        with pytest.raises(Fail) as info:
            parse_url(bad, MARTIN, "h")
        assert info.value.code == f"BADURL {bad}"
