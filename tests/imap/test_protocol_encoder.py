"""Response serialisation: strings, codes, data responses, ENVELOPE/BODYSTRUCTURE."""

from datetime import UTC, datetime, timedelta, timezone

from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.encoder import Code


def test_string_forms() -> None:
    assert enc.astring("INBOX") == b"INBOX"
    assert enc.astring("a]b") == b"a]b"
    assert enc.astring("") == b'""'
    assert enc.astring("a b") == b'"a b"'
    assert enc.string('say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'
    assert enc.string("two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert enc.string("café") == b"{5}\r\ncaf\xc3\xa9"
    assert enc.string("café", utf8=True) == b'"caf\xc3\xa9"'
    assert enc.string(b"nul\x00", utf8=True) == b"{4}\r\nnul\x00"
    assert enc.nstring(None) == b"NIL"
    assert enc.literal(b"ab", binary=True) == b"~{2}\r\nab"
    assert enc.section_data(b"a\x00b", binary=True) == b"~{3}\r\na\x00b"
    assert enc.section_data(b"ab", binary=True) == b"{2}\r\nab"
    assert enc.section_data(None) == b"NIL"


def test_mailbox_encoding() -> None:
    assert enc.mailbox("Été") == b"&AMk-t&AOk-"
    assert enc.mailbox("Été", utf8=True) == b'"\xc3\x89t\xc3\xa9"'
    assert enc.mailbox("a b&c") == b'"a b&-c"'


def test_status_responses_and_codes() -> None:
    assert (
        enc.tagged("A1", "OK", "SELECT completed", Code.READ_WRITE)
        == b"A1 OK [READ-WRITE] SELECT completed\r\n"
    )
    assert enc.status_response(None, "BAD", "no tag") == b"* BAD no tag\r\n"
    assert enc.status_response(None, "OK", "x", "UIDNEXT 5") == b"* OK [UIDNEXT 5] x\r\n"
    assert enc.status_response("a", "NO", "bad\r\nb OK x") == b"a NO bad  b OK x\r\n"
    assert enc.continuation() == b"+ Ready\r\n"
    assert enc.continuation(data=b"\x00ab") == b"+ AGFi\r\n"
    assert Code.capability(["IMAP4rev2", "IDLE"]) == b"CAPABILITY IMAP4rev2 IDLE"
    assert Code.permanentflags(["\\Seen", "\\*"]) == b"PERMANENTFLAGS (\\Seen \\*)"
    assert Code.uidnext(7) == b"UIDNEXT 7"
    assert Code.uidvalidity(3) == b"UIDVALIDITY 3"
    assert Code.highestmodseq(99) == b"HIGHESTMODSEQ 99"
    assert Code.appenduid(38505, [3955]) == b"APPENDUID 38505 3955"
    assert Code.appenduid(1, [5, 6, 7, 9]) == b"APPENDUID 1 5:7,9"
    assert Code.copyuid(38505, [304, 319, 320], [3956, 3957, 3958]) == b"COPYUID 38505 304,319:320 3956:3958"
    assert Code.copyuid(1, [3, 2, 1], [10, 11, 12]) == b"COPYUID 1 3,2,1 10:12"
    assert Code.modified([7, 9, 8]) == b"MODIFIED 7:9"
    assert Code.badcharset(["US-ASCII", "UTF-8"]) == b"BADCHARSET (US-ASCII UTF-8)"
    for code in (
        Code.ALERT,
        Code.NOMODSEQ,
        Code.CLOSED,
        Code.TRYCREATE,
        Code.OVERQUOTA,
        Code.ALREADYEXISTS,
        Code.NONEXISTENT,
        Code.CANNOT,
        Code.LIMIT,
        Code.AUTHENTICATIONFAILED,
        Code.UNAVAILABLE,
        Code.SERVERBUG,
        Code.INUSE,
        Code.EXPUNGEISSUED,
        Code.CONTACTADMIN,
        Code.PRIVACYREQUIRED,
        Code.NOPERM,
        Code.USEATTR,
        Code.TOOBIG,
    ):
        assert enc.tagged("t", "NO", "x", code) == b"t NO [" + code + b"] x\r\n"


def test_data_responses() -> None:
    assert enc.capability(["IMAP4rev1", "LITERAL+"]) == b"* CAPABILITY IMAP4rev1 LITERAL+\r\n"
    assert enc.enabled([]) == b"* ENABLED\r\n"
    assert enc.enabled(["CONDSTORE"]) == b"* ENABLED CONDSTORE\r\n"
    assert enc.flags(["\\Seen", "$Junk"]) == b"* FLAGS (\\Seen $Junk)\r\n"
    assert enc.exists(3) == b"* 3 EXISTS\r\n"
    assert enc.recent(0) == b"* 0 RECENT\r\n"
    assert enc.expunge(4) == b"* 4 EXPUNGE\r\n"
    assert enc.vanished([1, 2, 3, 5], earlier=True) == b"* VANISHED (EARLIER) 1:3,5\r\n"
    assert enc.vanished([8]) == b"* VANISHED 8\r\n"
    assert enc.search([]) == b"* SEARCH\r\n"
    assert enc.search([2, 5], modseq=917) == b"* SEARCH 2 5 (MODSEQ 917)\r\n"
    assert enc.sort([5, 2]) == b"* SORT 5 2\r\n"
    assert (
        enc.esearch("A282", uid=True, min=2, count=3, all=[2, 10, 11])
        == b'* ESEARCH (TAG "A282") UID MIN 2 COUNT 3 ALL 2,10:11\r\n'
    )
    assert enc.esearch("A1", uid=False, count=0, all=[]) == b'* ESEARCH (TAG "A1") COUNT 0\r\n'
    assert enc.list_response(["\\HasNoChildren"], "/", "INBOX") == b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
    assert (
        enc.list_response([], "/", "Foo", childinfo=["SUBSCRIBED"])
        == b'* LIST () "/" Foo ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    )
    assert enc.list_response(["\\Noselect"], None, "", command="LSUB") == b'* LSUB (\\Noselect) NIL ""\r\n'
    assert (
        enc.status("Été", [("MESSAGES", 2), ("UIDNEXT", 9)])
        == b"* STATUS &AMk-t&AOk- (MESSAGES 2 UIDNEXT 9)\r\n"
    )
    assert enc.namespace([("", "/")]) == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert (
        enc.id_response({"name": "Caducee", "version": None}) == b'* ID ("name" "Caducee" "version" NIL)\r\n'
    )
    assert enc.id_response(None) == b"* ID NIL\r\n"
    assert enc.quota("", [("STORAGE", 10, 512)]) == b'* QUOTA "" (STORAGE 10 512)\r\n'
    assert enc.quotaroot("INBOX", [""]) == b'* QUOTAROOT INBOX ""\r\n'
    assert enc.fetch(12, [("FLAGS", enc.flag_list(["\\Seen"])), (b"UID", b"4827313")]) == (
        b"* 12 FETCH (FLAGS (\\Seen) UID 4827313)\r\n"
    )


def test_thread_response() -> None:
    # RFC 5256 §4 example: (2)(3 6 (4 23)(44 7 96))
    tree = [
        (2, []),
        (3, [(6, [(4, [(23, [])]), (44, [(7, [(96, [])])])])]),
    ]
    assert enc.thread(tree) == b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n"
    assert enc.thread([(None, [(3, []), (5, [])])]) == b"* THREAD ((3)(5))\r\n"
    assert enc.thread([]) == b"* THREAD\r\n"


def test_datetime_formatting() -> None:
    dt = datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(timedelta(hours=-8)))
    assert enc.format_datetime(dt) == "07-Feb-1994 21:52:25 -0800"
    assert enc.date_time(datetime(2024, 12, 1, 1, 2, 3)) == b'"01-Dec-2024 01:02:03 +0000"'
    assert enc.format_datetime(
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    ).endswith("+0530")
    assert enc.format_datetime(datetime(2024, 1, 1, tzinfo=UTC)) == "01-Jan-2024 00:00:00 +0000"


ENVELOPE = [
    "Wed, 17 Jul 1996 02:23:25 -0700 (PDT)",
    "IMAP4rev1 WG mtg summary and minutes",
    [["Terry Gray", None, "gray", "cac.washington.edu"]],
    None,
    None,
    [[None, None, "imap", "cac.washington.edu"]],
    [[None, None, "minutes", "CNRI.Reston.VA.US"], ["John Klensin", None, "KLENSIN", "MIT.EDU"]],
    None,
    None,
    "<B27397-0100000@cac.washington.edu>",
]


def test_envelope_rfc_example() -> None:
    # RFC 3501 §8 example; Sender and Reply-To default to From.
    assert enc.encode_envelope(ENVELOPE) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
        b'"<B27397-0100000@cac.washington.edu>")'
    )


def test_envelope_8bit_and_groups() -> None:
    env = [None, "Réunion", [[None, None, "team", None], ["A", None, "a", "x.fr"], [None, None, None, None]]]
    env += [None] * 7
    out = enc.encode_envelope(env)
    assert out.startswith(b'(NIL {8}\r\nR\xc3\xa9union ((NIL NIL "team" NIL)')
    assert enc.encode_envelope(env, utf8=True).startswith(b'(NIL "R\xc3\xa9union"')


TEXT_PART = {
    "type": "text",
    "subtype": "plain",
    "params": [["charset", "utf-8"]],
    "id": None,
    "description": None,
    "encoding": "QUOTED-PRINTABLE",
    "size": 1315,
    "lines": 42,
    "md5": None,
    "disposition": None,
    "language": None,
    "location": None,
}
PDF_PART = {
    "type": "application",
    "subtype": "pdf",
    "params": None,
    "id": "<x@y>",
    "description": None,
    "encoding": "BASE64",
    "size": 4554,
    "md5": None,
    "disposition": ["attachment", [["filename", "a.pdf"]]],
    "language": ["fr", "en"],
    "location": None,
}


def test_bodystructure_single_part() -> None:
    assert enc.encode_bodystructure(TEXT_PART, False) == (
        b'("text" "plain" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 1315 42)'
    )
    assert enc.encode_bodystructure(TEXT_PART, True) == (
        b'("text" "plain" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 1315 42 NIL NIL NIL NIL)'
    )


def test_bodystructure_multipart_and_message() -> None:
    inner = {**TEXT_PART, "params": None, "size": 10, "lines": 1}
    message = {
        "type": "message",
        "subtype": "rfc822",
        "params": None,
        "id": None,
        "description": None,
        "encoding": "7BIT",
        "size": 300,
        "lines": 12,
        "envelope": [None] * 10,
        "body": inner,
        "md5": None,
        "disposition": None,
        "language": None,
        "location": None,
    }
    mixed = {
        "type": "multipart",
        "subtype": "mixed",
        "parts": [TEXT_PART, PDF_PART, message],
        "params": [["boundary", "xyz"]],
        "disposition": None,
        "language": None,
        "location": None,
    }
    body = enc.encode_bodystructure(mixed, False)
    assert body == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 1315 42)'
        b'("application" "pdf" NIL "<x@y>" NIL "BASE64" 4554)'
        b'("message" "rfc822" NIL NIL NIL "7BIT" 300 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("text" "plain" NIL NIL NIL "QUOTED-PRINTABLE" 10 1) 12) "mixed")'
    )
    full = enc.encode_bodystructure(mixed, True)
    assert b'("attachment" ("filename" "a.pdf")) ("fr" "en") NIL)' in full
    assert full.endswith(b' "mixed" ("boundary" "xyz") NIL NIL NIL)')


def test_non_ascii_parameters_use_rfc2231_unless_utf8_is_enabled() -> None:
    part = {
        "type": "application",
        "subtype": "pdf",
        "params": [["name", "résultat.pdf"]],
        "id": None,
        "description": None,
        "encoding": "BASE64",
        "size": 4,
        "md5": None,
        "disposition": ["attachment", [["filename", "résultat.pdf"]]],
        "language": None,
        "location": None,
    }
    plain = enc.encode_bodystructure(part, True)
    assert b'("name*" "utf-8\'\'r%C3%A9sultat.pdf")' in plain
    assert b'("attachment" ("filename*" "utf-8\'\'r%C3%A9sultat.pdf"))' in plain
    assert "résultat.pdf".encode() in enc.encode_bodystructure(part, True, utf8=True)
