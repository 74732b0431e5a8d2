"""Per-command parse tests for the sans-I/O IMAP grammar."""

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from mailserver.imap.protocol.commands import (
    AllKey,
    AndKey,
    Append,
    AppendMessage,
    Authenticate,
    BodyKey,
    CancelUpdate,
    Capability,
    Check,
    Close,
    Copy,
    Create,
    DateField,
    DateKey,
    Delete,
    Enable,
    Examine,
    Expunge,
    FetchAtt,
    FetchBinarySize,
    FetchBody,
    FlagKey,
    GetQuota,
    GetQuotaRoot,
    HeaderKey,
    Id,
    Idle,
    List,
    ListReturn,
    Login,
    Logout,
    Lsub,
    ModSeqKey,
    Move,
    Namespace,
    Noop,
    NotKey,
    OrKey,
    QResync,
    Rename,
    Search,
    Section,
    Select,
    SequenceKey,
    SetQuota,
    SizeKey,
    Sort,
    SortCriterion,
    StartTLS,
    Status,
    Store,
    StoreMode,
    Subscribe,
    TextKey,
    Thread,
    Unknown,
    Unselect,
    Unsubscribe,
    WithinKey,
)
from mailserver.imap.protocol.grammar import ParseError, parse_command, parse_tag, split_literals
from mailserver.imap.protocol.sequence import SequenceSet


def parse(wire: bytes, utf8: bool = False):
    lines, literals = split_literals(wire)
    return parse_command(lines, literals, utf8=utf8)


def body(wire: bytes, utf8: bool = False):
    return parse(wire, utf8)[1]


def bad(wire: bytes) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(wire)
    return info.value


S = SequenceSet.parse


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"a CAPABILITY", Capability()),
        (b"a noop", Noop()),
        (b"a LOGOUT", Logout()),
        (b"a STARTTLS", StartTLS()),
        (b"a NAMESPACE", Namespace()),
        (b"a IDLE", Idle()),
        (b"a CHECK", Check()),
        (b"a CLOSE", Close()),
        (b"a UNSELECT", Unselect()),
        (b"a EXPUNGE", Expunge()),
        (b"a UID EXPUNGE 3:5,9", Expunge(S("3:5,9"))),
        (b"a AUTHENTICATE plain", Authenticate("PLAIN")),
        (b"a AUTHENTICATE PLAIN =", Authenticate("PLAIN", b"")),
        (b"a AUTHENTICATE PLAIN AGZvbwBiYXI=", Authenticate("PLAIN", b"\x00foo\x00bar")),
        (b'a LOGIN fred "pa\\"ss\\\\"', Login("fred", 'pa"ss\\')),
        (b"a LOGIN {4}\r\nfr\xc3\xa9 {0}\r\n", Login("fré", "")),
        (b"a ENABLE condstore qresync UTF8=ACCEPT", Enable(("CONDSTORE", "QRESYNC", "UTF8=ACCEPT"))),
        (b"a SELECT inbox", Select("INBOX")),
        (b"a EXAMINE Archive (CONDSTORE)", Examine("Archive", condstore=True)),
        (b"a CREATE Sent (USE (\\sent \\Drafts))", Create("Sent", ("\\Sent", "\\Drafts"))),
        (b"a CREATE foo/bar", Create("foo/bar")),
        (b"a DELETE foo", Delete("foo")),
        (b"a RENAME foo {3}\r\nbar", Rename("foo", "bar")),
        (b"a SUBSCRIBE foo", Subscribe("foo")),
        (b'a UNSUBSCRIBE "a b"', Unsubscribe("a b")),
        (b'a LSUB "" *', Lsub("", "*")),
        (
            b"a STATUS INBOX (MESSAGES UIDNEXT uidvalidity UNSEEN)",
            Status("INBOX", ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")),
        ),
        (
            b"a STATUS x (DELETED SIZE RECENT HIGHESTMODSEQ APPENDLIMIT DELETED-STORAGE)",
            Status("x", ("DELETED", "SIZE", "RECENT", "HIGHESTMODSEQ", "APPENDLIMIT", "DELETED-STORAGE")),
        ),
        (b"a COPY 1:3 Trash", Copy(False, S("1:3"), "Trash")),
        (b"a UID MOVE 5,7:* Trash", Move(True, S("5,7:*"), "Trash")),
        (b'a ID ("name" "Thunderbird" "version" NIL)', Id((("name", "Thunderbird"), ("version", None)))),
        (b"a ID NIL", Id(None)),
        (b'a GETQUOTA ""', GetQuota("")),
        (b"a GETQUOTAROOT INBOX", GetQuotaRoot("INBOX")),
        (b'a SETQUOTA "" (STORAGE 512 messages 10)', SetQuota("", (("STORAGE", 512), ("MESSAGES", 10)))),
        (b'a SETQUOTA "" ()', SetQuota("", ())),
        (b"a XAPPLEPUSHSERVICE foo", Unknown("XAPPLEPUSHSERVICE")),
    ],
)
def test_simple_commands(wire: bytes, expected: object) -> None:
    assert body(wire) == expected


def test_tag_is_returned() -> None:
    assert parse(b"A0001 NOOP")[0] == "A0001"
    assert parse_tag(b"x.1] NOOP") == "x.1]"
    assert parse_tag(b"+x NOOP") is None
    assert parse_tag(b"a*b NOOP") is None


def test_select_qresync() -> None:
    cmd = body(b"A SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))")
    assert cmd == Select("INBOX", qresync=QResync(67890007, 20050715194045000, S("41,43:211,214:541")))
    cmd = body(b"A SELECT INBOX (CONDSTORE QRESYNC (1 2 1:29997 (5000,7500 5000,7500)))")
    assert cmd.condstore
    assert cmd.qresync == QResync(1, 2, S("1:29997"), (S("5000,7500"), S("5000,7500")))
    assert body(b"A SELECT INBOX (QRESYNC (1 2 (1 5)))").qresync == QResync(1, 2, None, (S("1"), S("5")))


def test_list_basic_and_extended() -> None:
    assert body(b'a LIST "" %') == List("", ("%",))
    assert body(b'a LIST "" INBOX/*]') == List("", ("INBOX/*]",))
    cmd = body(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("%" "Foo/*") RETURN (CHILDREN STATUS (MESSAGES))')
    assert cmd == List(
        "",
        ("%", "Foo/*"),
        frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
        ListReturn(children=True, status=("MESSAGES",)),
        True,
    )
    assert body(b'a LIST () "" %').extended
    assert body(b'a LIST "" % RETURN (SPECIAL-USE SUBSCRIBED)').returns == ListReturn(
        subscribed=True, special_use=True
    )
    assert body(b'a LIST (SPECIAL-USE) "" *').selection == frozenset({"SPECIAL-USE"})
    assert bad(b'a LIST (RECURSIVEMATCH) "" %').status == "BAD"
    assert bad(b'a LIST (RECURSIVEMATCH REMOTE) "" %')
    assert bad(b'a LIST (BOGUS) "" %')
    assert bad(b'a LIST "" % RETURN (BOGUS)')


def test_append_forms() -> None:
    wire = b'a APPEND INBOX (\\Seen $Forwarded) " 7-Feb-1994 21:52:25 -0800" {5}\r\nhello'
    msg = body(wire).messages[0]
    assert msg.flags == ("\\Seen", "$Forwarded")
    assert msg.internal_date == datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(timedelta(hours=-8)))
    assert msg.data == b"hello"
    multi = body(b"a APPEND Drafts {1+}\r\na (\\Draft) ~{3}\r\nb\x00c UTF8 (~{2}\r\n\xc3\xa9)")
    assert multi == Append(
        "Drafts",
        (
            AppendMessage(b"a"),
            AppendMessage(b"b\x00c", ("\\Draft",), binary=True),
            AppendMessage(b"\xc3\xa9", binary=True, utf8=True),
        ),
    )
    assert bad(b"a APPEND INBOX {3}\r\na\x00c").status == "BAD"
    assert bad(b"a APPEND INBOX")
    assert bad(b"a APPEND INBOX UTF8 ({1}\r\na)")
    assert bad(b'a APPEND INBOX "31-Feb-1994 21:52:25 -0800" {1}\r\na')


def test_fetch_items() -> None:
    cmd = body(b"a FETCH 1:* ALL")
    assert cmd.items == (FetchAtt.FLAGS, FetchAtt.INTERNALDATE, FetchAtt.RFC822_SIZE, FetchAtt.ENVELOPE)
    assert body(b"a FETCH 1 FULL").items[-1] is FetchAtt.BODY
    assert len(body(b"a FETCH 1 fast").items) == 3
    cmd = body(
        b"a UID FETCH 1:* (FLAGS UID MODSEQ RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT ENVELOPE "
        b"INTERNALDATE BODY BODYSTRUCTURE BODY[] BODY.PEEK[1.2.3.HEADER.FIELDS (From to)]<0.100> "
        b"BODY[HEADER.FIELDS.NOT ({4}\r\nDate)] BODY[2.MIME] BODY[TEXT] BODY[1.HEADER] BODY[4] "
        b"BINARY[1]<5.10> BINARY.PEEK[] BINARY.SIZE[2.1]) (CHANGEDSINCE 12345 VANISHED)"
    )
    assert cmd.uid and cmd.changed_since == 12345 and cmd.vanished
    assert cmd.items[:11] == (
        FetchAtt.FLAGS,
        FetchAtt.UID,
        FetchAtt.MODSEQ,
        FetchAtt.RFC822,
        FetchAtt.RFC822_HEADER,
        FetchAtt.RFC822_SIZE,
        FetchAtt.RFC822_TEXT,
        FetchAtt.ENVELOPE,
        FetchAtt.INTERNALDATE,
        FetchAtt.BODY,
        FetchAtt.BODYSTRUCTURE,
    )
    assert cmd.items[11:] == (
        FetchBody(Section()),
        FetchBody(Section((1, 2, 3), "HEADER.FIELDS", ("FROM", "TO")), peek=True, partial=(0, 100)),
        FetchBody(Section((), "HEADER.FIELDS.NOT", ("DATE",))),
        FetchBody(Section((2,), "MIME")),
        FetchBody(Section((), "TEXT")),
        FetchBody(Section((1,), "HEADER")),
        FetchBody(Section((4,))),
        FetchBody(Section((1,)), binary=True, partial=(5, 10)),
        FetchBody(Section(), peek=True, binary=True),
        FetchBinarySize((2, 1)),
    )
    assert cmd.items[12].response_name() == "BODY[1.2.3.HEADER.FIELDS (FROM TO)]<0>"
    assert str(cmd.items[12]) == "BODY.PEEK[1.2.3.HEADER.FIELDS (FROM TO)]<0.100>"
    assert cmd.items[-1].response_name() == "BINARY.SIZE[2.1]"


@pytest.mark.parametrize(
    "wire",
    [
        b"a FETCH 1 (ALL)",
        b"a FETCH 1 BODY[MIME]",
        b"a FETCH 1 BODY[0]",
        b"a FETCH 1 BODY[1.FOO]",
        b"a FETCH 1 BODY[HEADER.FIELDS]",
        b"a FETCH 1 BODY[]<0.0>",
        b"a FETCH 1 BINARY[TEXT]",
        b"a FETCH 1 BODY.PEEK",
        b"a FETCH 1 PREVIEW",
        b"a FETCH 1 (FLAGS) (VANISHED)",
        b"a FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)",
        b"a UID FETCH 1:* FLAGS (VANISHED)",
        b"a FETCH 0 FLAGS",
        b"a FETCH 1:: FLAGS",
        b"a FETCH FLAGS",
        b"a FETCH 1 FLAGS extra",
    ],
)
def test_fetch_errors(wire: bytes) -> None:
    assert bad(wire).status == "BAD"


def test_store() -> None:
    assert body(b"a STORE 2:4 +FLAGS (\\Deleted)") == Store(False, S("2:4"), StoreMode.ADD, ("\\Deleted",))
    assert body(b"a UID STORE 1 -FLAGS.SILENT \\seen $Junk") == Store(
        True, S("1"), StoreMode.REMOVE, ("\\Seen", "$Junk"), silent=True
    )
    assert body(b"a STORE 1 (UNCHANGEDSINCE 0) FLAGS ()") == Store(
        False, S("1"), StoreMode.REPLACE, (), unchanged_since=0
    )
    assert bad(b"a STORE 1 +FLAGX (\\Seen)")
    assert bad(b"a STORE 1 FLAGS (\\Seen")


def test_search_program() -> None:
    cmd = body(
        b'a UID SEARCH RETURN (MIN COUNT SAVE) CHARSET utf-8 OR (FROM "x" SINCE 1-Feb-1994) NOT 2:4,* '
        b'MODSEQ "/flags/\\\\draft" all 620162338 UID $'
    )
    assert cmd == Search(
        True,
        AndKey(
            (
                OrKey(
                    AndKey((HeaderKey("FROM", "x"), DateKey(DateField.INTERNAL, "SINCE", date(1994, 2, 1)))),
                    NotKey(SequenceKey(S("2:4,*"))),
                ),
                ModSeqKey(620162338, ("/flags/\\draft", "all")),
                SequenceKey(S("$"), uid=True),
            )
        ),
        "UTF-8",
        ("MIN", "COUNT", "SAVE"),
    )
    assert body(b"a SEARCH RETURN () ALL").returns == ("ALL",)
    assert body(b"a SEARCH ALL").returns is None


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"ALL", AllKey()),
        (b"ANSWERED", FlagKey("\\Answered")),
        (b"UNDELETED", FlagKey("\\Deleted", False)),
        (b"DRAFT", FlagKey("\\Draft")),
        (b"UNFLAGGED", FlagKey("\\Flagged", False)),
        (b"SEEN", FlagKey("\\Seen")),
        (b"RECENT", FlagKey("\\Recent")),
        (b"OLD", FlagKey("\\Recent", False)),
        (b"NEW", AndKey((FlagKey("\\Recent"), FlagKey("\\Seen", False)))),
        (b"KEYWORD $Label1", FlagKey("$Label1")),
        (b"UNKEYWORD foo", FlagKey("foo", False)),
        (b'BCC "a@b"', HeaderKey("BCC", "a@b")),
        (b"CC x", HeaderKey("CC", "x")),
        (b"TO {3}\r\nabc", HeaderKey("TO", "abc")),
        (b'SUBJECT ""', HeaderKey("SUBJECT", "")),
        (b"HEADER list-id foo", HeaderKey("LIST-ID", "foo")),
        (b"BODY hello", BodyKey("hello")),
        (b'TEXT "h\xc3\xa9"', TextKey("hé")),
        (b"BEFORE 1-Jan-2024", DateKey(DateField.INTERNAL, "BEFORE", date(2024, 1, 1))),
        (b'ON "15-mar-2023"', DateKey(DateField.INTERNAL, "ON", date(2023, 3, 15))),
        (b"SENTBEFORE 2-Feb-2020", DateKey(DateField.SENT, "BEFORE", date(2020, 2, 2))),
        (b"SENTON 2-Feb-2020", DateKey(DateField.SENT, "ON", date(2020, 2, 2))),
        (b"SENTSINCE 2-Feb-2020", DateKey(DateField.SENT, "SINCE", date(2020, 2, 2))),
        (b"LARGER 100", SizeKey("LARGER", 100)),
        (b"SMALLER 5000000000", SizeKey("SMALLER", 5000000000)),
        (b"MODSEQ 5", ModSeqKey(5)),
        (b"OLDER 3600", WithinKey(True, 3600)),
        (b"YOUNGER 60", WithinKey(False, 60)),
        (b"*", SequenceKey(S("*"))),
        (b"((SEEN))", FlagKey("\\Seen")),
        (
            b"OR OR SEEN DRAFT NOT DELETED",
            OrKey(OrKey(FlagKey("\\Seen"), FlagKey("\\Draft")), NotKey(FlagKey("\\Deleted", True))),
        ),
    ],
)
def test_search_keys(key: bytes, expected: object) -> None:
    assert body(b"t SEARCH " + key).criteria == expected


def test_search_errors() -> None:
    err = bad(b"a SEARCH CHARSET X-UNKNOWN ALL")
    assert (err.status, err.code) == ("NO", "BADCHARSET (US-ASCII UTF-8)")
    assert bad(b"a SEARCH BOGUS").message == "unknown search key BOGUS"
    assert bad(b"a SEARCH (SEEN").status == "BAD"
    assert bad(b"a SEARCH SINCE 31-Feb-2020")
    assert bad(b"a SEARCH SINCE 1-Foo-2020")
    assert bad(b"a SEARCH RETURN (BOGUS) ALL")
    assert bad(b"a SEARCH " + b"NOT " * 200 + b"ALL").message == "search key nested too deeply"
    assert bad(b"a SEARCH CHARSET US-ASCII TEXT {2}\r\n\xc3\xa9")
    assert bad(b'a SEARCH MODSEQ "/flags/x" bogus 5')


def test_context_return_options() -> None:
    """RFC 5267 §5: CONTEXT, PARTIAL nz-number ":" nz-number (either order, no "*"), not with ALL."""
    cmd = body(b"a UID SEARCH RETURN (CONTEXT COUNT PARTIAL 500:1) UNSEEN")
    assert (cmd.returns, cmd.partial) == (("CONTEXT", "COUNT", "PARTIAL"), (1, 500))
    sort = body(b"a SORT RETURN (PARTIAL 2:4 MIN) (DATE) UTF-8 ALL")
    assert (sort.returns, sort.partial) == (("PARTIAL", "MIN"), (2, 4))
    assert body(b"a SEARCH RETURN (COUNT) ALL").partial is None
    for bogus in (b"PARTIAL 1", b"PARTIAL 1:*", b"PARTIAL *:1", b"PARTIAL 0:3", b"PARTIAL 1:2 ALL"):
        assert bad(b"a SEARCH RETURN (" + bogus + b") ALL").status == "BAD"
    assert bad(b"a SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL")
    assert bad(b"a SORT RETURN (SAVE) (DATE) UTF-8 ALL")
    assert body(b"a SORT RETURN (UPDATE) (DATE) UTF-8 ALL").returns == ("UPDATE",)
    assert body(b'a CANCELUPDATE "B01" "x y"') == CancelUpdate(("B01", "x y"))
    for bogus in (b"a CANCELUPDATE", b"a CANCELUPDATE B01", b'a CANCELUPDATE "B01"  "x"'):
        assert bad(bogus).status == "BAD"


def test_sort_and_thread() -> None:
    cmd = body(
        b"a UID SORT RETURN (MIN COUNT) (REVERSE ARRIVAL cc DATE FROM SIZE SUBJECT TO DISPLAYFROM DISPLAYTO) "
        b"UTF-8 SEEN"
    )
    assert cmd == Sort(
        True,
        (
            SortCriterion("ARRIVAL", True),
            *(
                SortCriterion(k)
                for k in ("CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
            ),
        ),
        "UTF-8",
        FlagKey("\\Seen"),
        ("MIN", "COUNT"),
    )
    assert body(b"a THREAD orderedsubject US-ASCII ALL") == Thread(
        False, "ORDEREDSUBJECT", "US-ASCII", AllKey()
    )
    assert body(b"a UID THREAD REFERENCES UTF-8 ALL").uid
    assert bad(b"a SORT (BOGUS) UTF-8 ALL")
    assert bad(b"a SORT (DATE) ALL")
    assert bad(b"a THREAD REFS UTF-8 ALL")


def test_mailbox_names() -> None:
    assert body(b"a SELECT InBoX").mailbox == "INBOX"
    assert body(b"a SELECT &AMk-t&AOk-").mailbox == "Été"
    assert body(b"a SELECT Foo&-Bar").mailbox == "Foo&Bar"
    assert body(b'a SELECT "caf\xc3\xa9"', utf8=True).mailbox == "café"
    assert body(b"a SELECT A&B", utf8=True).mailbox == "A&B"
    assert body(b'a LIST "" &AMk-*').patterns == ("É*",)


def test_names_in_no_valid_encoding_are_names_that_cannot_exist() -> None:
    """A valid astring that is not modified UTF-7 (or, under UTF8=ACCEPT, not UTF-8) is no syntax
    error: no mailbox has that name, so it is a NO once the whole command parsed, and a pattern
    that matches nothing."""
    name = b"!#$&'+,-.0123456789:;<=>?@^_`|[}"
    for wire in (b"a SELECT " + name, b"a STATUS &Jjo (MESSAGES)", b'a SELECT "caf\xc3\xa9"'):
        assert (bad(wire).status, bad(wire).code) == ("NO", "NONEXISTENT"), wire
    assert (bad(b"a CREATE " + name).status, bad(b"a CREATE " + name).code) == ("NO", "CANNOT")
    assert bad(b"a RENAME &Jjo B&Jjo").code == "NONEXISTENT"  # the first unusable name decides
    assert bad(b"a RENAME A " + name).code == "CANNOT"
    with pytest.raises(ParseError) as info:
        parse(b"a SELECT {2}\r\n\xff\xfe", utf8=True)
    assert (info.value.status, info.value.code) == ("NO", "NONEXISTENT")
    assert bad(b"a SELECT &Jjo (BOGUS)").status == "BAD"  # syntax is checked first
    assert body(b'a LIST "" ' + name + b"%*") == List("", ())
    assert body(b'a LIST "" (' + name + b' "Foo")').patterns == ("Foo",)
    assert body(b'a LIST "&Jjo" "%"').patterns == ()
    assert body(b'a LSUB "" ' + name) == Lsub("", None)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"a",
        b"a ",
        b"+a NOOP",
        b"a NOOP extra",
        b"a LOGIN onlyuser",
        b'a LOGIN "unterminated',
        b'a LOGIN "bad\\escape" x',
        b"a LOGIN ~{1}\r\nx y",
        b"a UID NOOP",
        b"a ENABLE",
        b"a SELECT INBOX ()",
        b"a SELECT INBOX (FOO)",
        b"a CREATE x (FOO)",
        b"a STATUS INBOX (BOGUS)",
        b"a STATUS INBOX ()",
        b"a AUTHENTICATE PLAIN a===",
        b"a COPY 1:2",
        b'a ID ("a")',
        b"a SETQUOTA x (STORAGE)",
        b"a CHECK  ",
    ],
)
def test_syntax_errors(wire: bytes) -> None:
    assert bad(wire).status == "BAD"


def test_create_unknown_special_use_is_no_useattr() -> None:
    err = bad(b"a CREATE x (USE (\\Bogus))")
    assert (err.status, err.code) == ("NO", "USEATTR")


def test_literal_must_end_line_and_match() -> None:
    with pytest.raises(ParseError):
        parse_command([b"a LOGIN {3}", b" x"], [b"ab"])
    with pytest.raises(ParseError):
        parse_command([b"a LOGIN {3} x", b""], [b"abc"])


def test_append_catenate() -> None:
    """RFC 4469 §5: append-data =/ "CATENATE" SP "(" cat-part *(SP cat-part) ")"."""
    wire = b'a APPEND Drafts (\\Draft) CATENATE (URL "/Drafts/;UID=1" TEXT {2}\r\nab url x) {1}\r\nz'
    first, second = body(wire).messages
    assert first == AppendMessage(b"", ("\\Draft",), catenate=("/Drafts/;UID=1", b"ab", "x"))
    assert second == AppendMessage(b"z")
    for bogus in (b"CATENATE ()", b"CATENATE (TEXT x)", b"CATENATE (URL)", b'CATENATE (BOGUS "x")'):
        assert bad(b"a APPEND Drafts " + bogus).status == "BAD"


def test_append_date_naive_forms() -> None:
    msg = body(b'a APPEND x "01-Jan-2024 00:00:00 +0000" {1}\r\nz').messages[0]
    assert msg.internal_date == datetime(2024, 1, 1, tzinfo=UTC)
