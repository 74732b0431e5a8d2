"""APPEND/MULTIAPPEND (literals, LITERAL+, APPENDUID), FETCH of every item, STORE (+UNCHANGEDSINCE),
COPY/MOVE with COPYUID, EXPUNGE/UID EXPUNGE, CLOSE/UNSELECT, with raw sockets, imaplib and aioimaplib."""

from __future__ import annotations

import asyncio
import base64
import email
import email.quoprimime
import imaplib
import re
from email import policy

import aioimaplib
from imapclient import IMAPClient

from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv, message

MULTIPART = (
    b"From: =?utf-8?q?Dr_Andr=C3=A9?= <dr.andre@a.mssante.test>\r\n"
    b"To: a@a.mssante.test, B <b@a.mssante.test>\r\n"
    b"Subject: Compte rendu\r\n"
    b"Date: Tue, 3 Feb 2026 09:30:00 +0100\r\n"
    b"Message-ID: <cr-1@a.mssante.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="out"\r\n'
    b"\r\n"
    b"--out\r\n"
    b'Content-Type: multipart/mixed; boundary="in"\r\n'
    b"\r\n"
    b"--in\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Texte brut.\r\n"
    b"--in\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"X-Part: deux\r\n"
    b"From: x@a.mssante.test\r\n"
    b"Subject: inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<b>HTML</b>\r\n"
    b"--in--\r\n"
    b"--out\r\n"
    b"Content-Type: application/octet-stream; name=a.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--out--\r\n"
)


async def append(c, data: bytes, folder: str = "INBOX", extra: str = "") -> str:  # type: ignore[no-untyped-def]
    tag = c.tag()
    await c.send(f"{tag} APPEND {folder} {extra}{{{len(data)}}}\r\n")
    assert (await c.line()).startswith("+ ")
    await c.send(data + b"\r\n")
    lines = await c.until(tag)
    assert lines[-1].split()[1] == "OK", lines
    return lines[-1]


async def test_append_sync_literal_plus_and_multiappend(imap: IMAPEnv) -> None:
    c = await imap.connect()
    done = await append(c, message("un"), extra='(\\Seen $Urgent) "07-Feb-2026 10:00:00 +0100" ')
    m = re.search(r"\[APPENDUID (\d+) 1\]", done)
    assert m
    data = message("deux")
    await c.send(f"a APPEND INBOX {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
    assert re.match(r"a OK \[APPENDUID \d+ 2\]", await c.line())
    one, two = message("trois"), message("quatre")
    await c.send(
        f"b APPEND INBOX {{{len(one)}+}}\r\n".encode()
        + one
        + f" (\\Flagged) {{{len(two)}+}}\r\n".encode()
        + two
        + b"\r\n"
    )
    assert re.match(r"b OK \[APPENDUID \d+ 3:4\]", await c.line())
    lines = await c.command("APPEND Nowhere {3+}\r\nabc")
    assert lines[-1].split()[1:3] == ["NO", "[TRYCREATE]"]
    lines = await c.command("APPEND INBOX (\\Recent) {3+}\r\nabc")
    assert lines[-1].split()[1] == "BAD"
    lines = await c.ok("SELECT INBOX")
    assert "* 4 EXISTS" in lines
    lines = await c.ok("FETCH 1:4 (FLAGS INTERNALDATE)")
    assert lines[0] == '* 1 FETCH (FLAGS ($Urgent \\Seen \\Recent) INTERNALDATE "07-Feb-2026 09:00:00 +0000")'
    assert lines[3].startswith("* 4 FETCH (FLAGS (\\Flagged \\Recent)")
    await c.close()


async def test_append_limit_and_too_big_literal(sqlite_runtime, pki) -> None:  # type: ignore[no-untyped-def]
    from tests.imap.conftest import running

    async with running(sqlite_runtime, pki, message_size=1000, literal_size=2000) as env:
        c = await env.connect()
        assert "APPENDLIMIT=1000" in (await c.ok("CAPABILITY"))[0]
        await c.send("a APPEND INBOX {5000}\r\n")
        assert (await c.line()).startswith("a NO [TOOBIG]")
        await c.send("b APPEND INBOX {1500}\r\n")
        assert (await c.line()).startswith("+ ")
        await c.send(b"x" * 1500 + b"\r\n")
        assert (await c.line()).startswith("b NO [TOOBIG]")
        assert (await c.command("NOOP"))[-1].split()[1] == "OK"
        await c.close()


async def test_append_to_selected_mailbox_reports_exists(imap: IMAPEnv) -> None:
    c = await imap.connect()
    await c.ok("SELECT INBOX")
    tag = c.tag()
    data = message("x")
    await c.send(f"{tag} APPEND INBOX {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
    lines = await c.until(tag)
    assert lines[0] == "* 1 EXISTS" and lines[-1].split()[1] == "OK"
    await c.close()


async def test_fetch_items(imap: IMAPEnv) -> None:
    await imap.deliver(MULTIPART)
    c = await imap.connect()
    await c.ok("EXAMINE INBOX")
    lines = await c.ok("FETCH 1 (UID RFC822.SIZE FLAGS ENVELOPE)")
    assert lines[0].startswith(f"* 1 FETCH (UID 1 RFC822.SIZE {len(MULTIPART)} FLAGS (\\Recent) ENVELOPE (")
    assert '"Tue, 3 Feb 2026 09:30:00 +0100" "Compte rendu" (("Dr =?utf-8?q?Andr=C3=A9?=' in lines[0] or (
        '"Compte rendu" ((' in lines[0]
    )
    assert '("B" NIL "b" "a.mssante.test")' in lines[0] and '"<cr-1@a.mssante.test>"' in lines[0]
    lines = await c.ok("FETCH 1 BODYSTRUCTURE")
    assert lines[0].startswith(
        '* 1 FETCH (BODYSTRUCTURE ((("text" "plain" ("charset" "utf-8") NIL NIL "7BIT" 11 1 NIL'
    )
    assert '("message" "rfc822" NIL NIL NIL "7BIT" ' in lines[0]
    assert lines[0].endswith('"mixed" ("boundary" "out") NIL NIL NIL))')
    lines = await c.ok("FETCH 1 BODY")
    assert lines[0].startswith("* 1 FETCH (BODY (((") and "BODYSTRUCTURE" not in lines[0]
    lines = await c.ok("FETCH 1 (BODY.PEEK[1.2.HEADER.FIELDS (X-PART CONTENT-TYPE)]<0.10>)")
    assert lines[0] == "* 1 FETCH (BODY[1.2.HEADER.FIELDS (X-PART CONTENT-TYPE)]<0> {10}X-Part: de)"
    lines = await c.ok("FETCH 1 (BODY.PEEK[1.2.MIME] BODY.PEEK[1.2.TEXT])")
    assert "{32}Content-Type: message/rfc822\\r\\n\\r\\n" in lines[0] and "{11}<b>HTML</b>)" in lines[0]
    not_fields = "TO FROM DATE MESSAGE-ID MIME-VERSION CONTENT-TYPE"
    lines = await c.ok(f"FETCH 1 (BODY.PEEK[1.1] BODY.PEEK[HEADER.FIELDS.NOT ({not_fields})])")
    assert "BODY[1.1] {11}Texte brut. " in lines[0]
    assert "{25}Subject: Compte rendu\\r\\n\\r\\n" in lines[0]
    lines = await c.ok("FETCH 1 (BINARY.PEEK[1.1] BINARY.SIZE[2] BINARY.PEEK[2])")
    assert "BINARY[1.1] {11}Texte brut. " in lines[0]
    assert "BINARY.SIZE[2] 4" in lines[0] and "BINARY[2] ~{4}" in lines[0]
    lines = await c.ok("FETCH 1 (RFC822.HEADER BODY.PEEK[TEXT]<0.5> BODY.PEEK[3])")
    assert (
        "RFC822.HEADER {" in lines[0] and "BODY[TEXT]<0> {5}--out" in lines[0] and "BODY[3] {0}" in lines[0]
    )
    lines = await c.ok("FETCH 1 (BODY[])")  # EXAMINE: no \Seen
    assert "FLAGS" not in lines[0]
    await c.ok("SELECT INBOX")
    lines = await c.ok("FETCH 1 (BODY[1.1])")
    assert lines[0] == "* 1 FETCH (BODY[1.1] {11}Texte brut. FLAGS (\\Seen \\Recent))"
    lines = await c.ok("UID FETCH 1 (RFC822.TEXT)")
    assert lines[0].startswith("* 1 FETCH (UID 1 RFC822.TEXT {")
    assert (await c.command("FETCH 5 FLAGS"))[-1].split()[1] == "BAD"
    assert (await c.ok("UID FETCH 5:7 FLAGS")) == [f"t{c.counter} OK UID FETCH completed"]
    await c.close()


QP_BODY = (  # RFC 2045 §6.7: blanks at line ends were added in transit; "=" ends a soft line break
    b"caf=C3=A9 au lait  \r\n"
    b"soft line=\r\nbreak, then =3D=3d\t\r\n"
    b"blanks after the equal sign= \t\r\n"
    b"still the same line; tab=09and space=20 "
)
BINARY_PARTS = (
    b"From: Dr Martin <dr.martin@a.mssante.test>\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\n"
    + QP_BODY
    + b"\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(bytes(range(256))).replace(b"\n", b"\r\n")
    + b"--b\r\nContent-Type: text/plain\r\n\r\n"
    + b"\r\n--b\r\nContent-Type: application/x-thing\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
    + b"begin 644 f\r\n--b--\r\n"
)


async def test_binary_decodes_quoted_printable_and_base64(imap: IMAPEnv) -> None:
    """RFC 3516 §4.2: BINARY[part] is the decoded content, BINARY.SIZE its decoded size; an empty part
    is the literal {0}; an unknown encoding is NO [UNKNOWN-CTE]. Compared with Python's email package
    (its quoted-printable body decoder applies RFC 2045 §6.7 rule 3; ``get_payload(decode=True)``
    does not)."""
    parsed = email.message_from_bytes(BINARY_PARTS, policy=policy.compat32)
    qp = email.quoprimime.body_decode(QP_BODY.decode("ascii")).replace("\n", "\r\n").encode("latin-1")
    b64 = parsed.get_payload(1).get_payload(decode=True)
    assert qp == "café au lait\r\nsoft linebreak, then ==\r\nblanks after the equal sign".encode() + (
        b"still the same line; tab\tand space "
    )
    await imap.deliver(BINARY_PARTS)

    def with_imapclient() -> dict:
        with IMAPClient("127.0.0.1", port=imap.tls_port, ssl=True, ssl_context=imap.ctx) as client:
            client.login(MARTIN, PASSWORD)
            client.select_folder("INBOX", readonly=True)
            items = ["BINARY.SIZE[1]", "BINARY.SIZE[2]", "BINARY.SIZE[3]", "BINARY.PEEK[1]", "BODY.PEEK[3]"]
            return client.fetch([1], items)[1]  # (imapclient cannot read a literal8: BINARY[2] below)

    got = await asyncio.to_thread(with_imapclient)
    assert got[b"BINARY.SIZE[1]"] == len(qp) and got[b"BINARY[1]"] == qp
    assert got[b"BINARY.SIZE[2]"] == len(b64) == 256
    assert got[b"BINARY.SIZE[3]"] == 0 and got[b"BODY[3]"] == b""
    c = await imap.connect()
    await c.ok("EXAMINE INBOX")
    lines = await c.ok("FETCH 1 (BODY.PEEK[3] BINARY.PEEK[3] BINARY.PEEK[1]<0.5>)")
    assert lines[0] == "* 1 FETCH (BODY[3] {0} BINARY[3] {0} BINARY[1]<0> {5}café)"  # literals, never ""
    lines = await c.ok("FETCH 1 (BINARY.PEEK[2])")  # NUL inside: a literal8 (RFC 3516 §4.3)
    shown = b64.replace(b"\r", b"\\r").replace(b"\n", b"\\n").decode("utf-8", "surrogateescape")
    assert lines[0] == f"* 1 FETCH (BINARY[2] ~{{256}}{shown})"
    lines = await c.command("FETCH 1 (BINARY.SIZE[4])")
    assert lines[-1] == f"t{c.counter} NO [UNKNOWN-CTE] unknown Content-Transfer-Encoding"
    await c.close()


async def test_store_copy_move_expunge(imap: IMAPEnv) -> None:
    for i in range(5):
        await imap.deliver(message(f"m{i}"))
    c = await imap.connect()
    await c.ok("SELECT INBOX")
    lines = await c.ok("STORE 1:2 +FLAGS (\\Flagged)")
    assert lines[:2] == ["* 1 FETCH (FLAGS (\\Flagged \\Recent))", "* 2 FETCH (FLAGS (\\Flagged \\Recent))"]
    assert (await c.ok("STORE 1 +FLAGS.SILENT (\\Seen)")) == [f"t{c.counter} OK STORE completed"]
    lines = await c.ok("UID STORE 2 FLAGS (\\Answered kw1)")
    assert lines[:2] == [  # RFC 9051 §7.3.5: the new keyword is announced before it is shown
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft kw1)",
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft kw1 \\*)] flags permitted",
    ]
    assert lines[2] == "* 2 FETCH (UID 2 FLAGS (\\Answered kw1 \\Recent))"
    assert (await c.command("STORE 1 +FLAGS (\\Recent)"))[-1].split()[1] == "BAD"
    lines = await c.ok("COPY 1:2 Archive")
    assert re.search(r"OK \[COPYUID \d+ 1:2 1:2\]", lines[-1])
    assert (await c.command("COPY 1 Nowhere"))[-1].split()[1:3] == ["NO", "[TRYCREATE]"]
    lines = await c.ok("UID MOVE 4 Trash")
    assert re.match(r"\* OK \[COPYUID \d+ 4 1\]", lines[0]) and lines[1] == "* 4 EXPUNGE"
    lines = await c.ok("MOVE 1 Trash")
    assert lines[1] == "* 1 EXPUNGE"
    # INBOX now holds uids 2 3 5 as seq 1 2 3.
    await c.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    lines = await c.ok("UID EXPUNGE 3")
    assert lines[0] == "* 2 EXPUNGE"
    lines = await c.ok("EXPUNGE")
    assert lines[:2] == ["* 2 EXPUNGE", "* 1 EXPUNGE"]
    events = await imap.rt.audit.events(actor=MARTIN, action="delete")
    assert [e.request for e in events] == ["imap EXPUNGE INBOX uids 3", "imap EXPUNGE INBOX uids 2,5"]
    lines = await c.ok("SELECT Archive")
    assert "* 2 EXISTS" in lines
    await c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert (await c.ok("CLOSE"))[0].endswith("OK CLOSE completed")  # silent expunge
    lines = await c.ok("STATUS Archive (MESSAGES)")
    assert lines[0] == "* STATUS Archive (MESSAGES 1)"
    await c.ok("SELECT Archive")
    await c.ok("UNSELECT")
    assert (await c.command("FETCH 1 FLAGS"))[-1].split()[1] == "BAD"
    await c.close()


async def test_move_into_the_selected_folder(imap_both: IMAPEnv) -> None:
    """RFC 6851 §3.3: MOVE to the selected folder is COPY + EXPUNGE: new UIDs, the old ones expunged
    (VANISHED under QRESYNC), then EXISTS; others see it at their next update; usage unchanged."""
    env = imap_both
    for i in range(3):
        await env.deliver(message(f"m{i}"))
    usage = await env.rt.store.usage(env.mailboxes[MARTIN])

    def with_imapclient() -> tuple[object, list[int]]:
        with IMAPClient("127.0.0.1", port=env.tls_port, ssl=True, ssl_context=env.ctx) as client:
            client.login(MARTIN, PASSWORD)
            client.select_folder("INBOX")
            moved = client.move([1], "INBOX")  # UID MOVE
            return moved, client.search()  # UID SEARCH

    moved, uids = await asyncio.to_thread(with_imapclient)
    assert moved is None and uids == [2, 3, 4]  # imapclient raises on NO

    c, other = await env.connect(), await env.connect()
    await other.ok("SELECT INBOX")
    await c.ok("ENABLE QRESYNC")
    await c.ok("SELECT INBOX")
    since = env.rt.notifier.published
    lines = await c.ok("UID MOVE 2:3 INBOX")
    assert re.fullmatch(r"\* OK \[COPYUID \d+ 2:3 5:6\] moved", lines[0])
    assert lines[1:3] == ["* VANISHED 2:3", "* 3 EXISTS"]
    await env.relayed(since, 1)
    assert (await other.ok("NOOP"))[:3] == ["* 2 EXPUNGE", "* 1 EXPUNGE", "* 3 EXISTS"]
    assert (await other.ok("UID SEARCH ALL"))[0] == "* SEARCH 4 5 6"
    assert await env.rt.store.usage(env.mailboxes[MARTIN]) == usage
    for client in (c, other):
        await client.close()


async def test_unchangedsince(imap: IMAPEnv) -> None:
    await imap.deliver(message("a"))
    await imap.deliver(message("b"))
    c = await imap.connect()
    lines = await c.ok("SELECT INBOX (CONDSTORE)")
    modseq = int(re.search(r"HIGHESTMODSEQ (\d+)", " ".join(lines)).group(1))  # type: ignore[union-attr]
    lines = await c.ok("STORE 1 +FLAGS (\\Seen)")
    assert re.match(r"\* 1 FETCH \(FLAGS \(\\Seen \\Recent\) MODSEQ \((\d+)\)\)", lines[0])
    lines = await c.ok(f"STORE 1:2 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Flagged)")
    assert lines[-1].startswith(f"t{c.counter} OK [MODIFIED 1]")
    assert any(x.startswith("* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (") for x in lines)
    lines = await c.ok(f"UID STORE 1 (UNCHANGEDSINCE {modseq}) -FLAGS (\\Seen)")
    assert lines[-1].startswith(f"t{c.counter} OK [MODIFIED 1]")
    await c.close()


async def test_imaplib_and_aioimaplib(imap: IMAPEnv) -> None:
    def with_imaplib() -> tuple[bytes, list]:
        m = imaplib.IMAP4_SSL("127.0.0.1", imap.tls_port, ssl_context=imap.ctx)
        m.login(MARTIN, PASSWORD)
        typ, data = m.append("INBOX", "(\\Flagged)", None, message("imaplib"))
        assert typ == "OK"
        m.select("INBOX")
        _typ, fetched = m.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        m.logout()
        return data[0], fetched

    appended, fetched = await asyncio.to_thread(with_imaplib)
    assert appended.startswith(b"[APPENDUID ")
    assert b"Subject: imaplib" in fetched[0][1]

    client = aioimaplib.IMAP4_SSL("127.0.0.1", imap.tls_port, ssl_context=imap.ctx)
    await client.wait_hello_from_server()
    assert (await client.login(MARTIN, PASSWORD)).result == "OK"
    assert (await client.select("INBOX")).result == "OK"
    response = await client.uid("fetch", "1", "(FLAGS)")
    assert response.result == "OK" and b"\\Flagged" in response.lines[0]
    response = await client.search("FLAGGED")
    assert response.result == "OK" and response.lines[0] == b"1"
    await client.logout()
