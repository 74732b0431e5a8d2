"""IMAP command parser (RFC 9051 §9 formal syntax, RFC 3501 §9 and extensions).

Input is a framed command as produced by the receiver: ``lines`` (without CRLF) and
the ``literals`` that follow every line but the last. Each non-final line ends with a
literal marker ``{n}``, ``{n+}`` or ``~{n}``, so a literal is consumed by switching to
the next line and never copied. The parser is a hand-written recursive descent over
a cursor; regexes are only used to match whole tokens at the cursor.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from datetime import date, datetime, timedelta, timezone

from . import mutf7
from .commands import (
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
    CommandBody,
    Copy,
    Create,
    DateField,
    DateKey,
    Delete,
    DeleteAcl,
    Enable,
    Examine,
    Expunge,
    Fetch,
    FetchAtt,
    FetchBinarySize,
    FetchBody,
    FetchItem,
    FlagKey,
    GetAcl,
    GetQuota,
    GetQuotaRoot,
    HeaderKey,
    Id,
    Idle,
    List,
    ListReturn,
    ListRights,
    Login,
    Logout,
    Lsub,
    ModSeqKey,
    Move,
    MyRights,
    Namespace,
    Noop,
    NotKey,
    OrKey,
    QResync,
    Rename,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceKey,
    SetAcl,
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
from .sequence import SequenceSet

__all__ = ["SUPPORTED_CHARSETS", "ParseError", "parse_command", "parse_tag", "split_literals"]

SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")
"""Charsets advertised in ``[BADCHARSET (...)]``; any charset Python knows is accepted."""

_MAX_SEARCH_DEPTH = 64
_MAX_NUMBER = 0xFFFFFFFF
_MAX_NUMBER64 = 0x7FFFFFFFFFFFFFFF

# Token patterns (RFC 9051 §9): atom-specials are "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]".
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_LIST_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE = re.compile(rb'\\(["\\])')
_LITERAL = re.compile(rb"(~?)\{(\d{1,19})(\+?)\}")
_NUMBER = re.compile(rb"\d+")
_SEQSET = re.compile(rb"[0-9*:,$]+")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_KEYWORD = re.compile(rb"[A-Za-z.]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DATE = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_DATE_TIME = re.compile(rb'"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"')

_MONTHS = {
    m: i
    for i, m in enumerate(
        (b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC"),
        1,
    )
}
_SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
# RFC 6154 §2 use-attr.
_SPECIAL_USE = {
    f.upper(): f for f in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}
_STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",
        "SIZE",
        "RECENT",
        "HIGHESTMODSEQ",
        "APPENDLIMIT",
        "DELETED-STORAGE",
    }
)
_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "PARTIAL", "UPDATE"})
_SORT_RETURN = _SEARCH_RETURN - {"SAVE"}
_SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})
_THREAD_ALGORITHMS = frozenset({"REFERENCES", "ORDEREDSUBJECT"})
_FETCH_MACROS = {
    "ALL": (FetchAtt.FLAGS, FetchAtt.INTERNALDATE, FetchAtt.RFC822_SIZE, FetchAtt.ENVELOPE),
    "FAST": (FetchAtt.FLAGS, FetchAtt.INTERNALDATE, FetchAtt.RFC822_SIZE),
    "FULL": (FetchAtt.FLAGS, FetchAtt.INTERNALDATE, FetchAtt.RFC822_SIZE, FetchAtt.ENVELOPE, FetchAtt.BODY),
}
_FETCH_SIMPLE = {att.value: att for att in FetchAtt}
_FLAG_SEARCH = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "RECENT": ("\\Recent", True),
    "OLD": ("\\Recent", False),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_SEARCH = frozenset({"BCC", "CC", "FROM", "SUBJECT", "TO"})
_ARG_SEARCH = _HEADER_SEARCH | {
    "HEADER",
    "BODY",
    "TEXT",
    "BEFORE",
    "ON",
    "SINCE",
    "SENTBEFORE",
    "SENTON",
    "SENTSINCE",
    "KEYWORD",
    "UNKEYWORD",
    "LARGER",
    "SMALLER",
    "NOT",
    "OR",
    "UID",
    "MODSEQ",
    "OLDER",
    "YOUNGER",
}
_DATE_SEARCH = {
    "BEFORE": (DateField.INTERNAL, "BEFORE"),
    "ON": (DateField.INTERNAL, "ON"),
    "SINCE": (DateField.INTERNAL, "SINCE"),
    "SENTBEFORE": (DateField.SENT, "BEFORE"),
    "SENTON": (DateField.SENT, "ON"),
    "SENTSINCE": (DateField.SENT, "SINCE"),
}


class ParseError(Exception):
    """Syntax error in a command.

    ``status`` is ``"BAD"`` for syntax errors and ``"NO"`` where the RFC asks for NO
    (unknown CHARSET: RFC 9051 §6.4.4); ``code`` is an optional response code text
    such as ``"BADCHARSET (US-ASCII UTF-8)"``.
    """

    def __init__(self, message: str, *, status: str = "BAD", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class _Cursor:
    """Position in a framed command; crossing a literal moves to the next line."""

    __slots__ = ("buf", "line", "lines", "literals", "pos", "refusal", "utf8")

    def __init__(self, lines: list[bytes], literals: list[bytes], utf8: bool) -> None:
        self.lines = lines
        self.literals = literals
        self.line = 0
        self.buf = lines[0]
        self.pos = 0
        self.utf8 = utf8
        # The first mailbox name that no mailbox can have; answered NO once the rest parsed.
        self.refusal: ParseError | None = None

    # -- low level --------------------------------------------------------------------------

    def fail(self, message: str) -> ParseError:
        return ParseError(message)

    def at_end(self) -> bool:
        return self.pos >= len(self.buf) and self.line == len(self.lines) - 1

    def peek(self) -> int:
        return self.buf[self.pos] if self.pos < len(self.buf) else -1

    def end(self) -> None:
        if not self.at_end():
            raise self.fail("unexpected characters at end of command")

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise self.fail("expected space")
        self.pos += 1

    def char(self, ch: int, what: str) -> None:
        if self.peek() != ch:
            raise self.fail(f"expected {what}")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def match(self, pattern: re.Pattern[bytes], what: str) -> re.Match[bytes]:
        m = pattern.match(self.buf, self.pos)
        if m is None:
            raise self.fail(f"expected {what}")
        self.pos = m.end()
        return m

    def keyword(self) -> str:
        return self.match(_ATOM, "keyword").group().decode("ascii").upper()

    def peek_keyword(self) -> str:
        m = _ATOM.match(self.buf, self.pos)
        return m.group().decode("ascii").upper() if m else ""

    def expect_keyword(self, word: str) -> None:
        if self.keyword() != word:
            raise self.fail(f"expected {word}")

    def number(self, limit: int = _MAX_NUMBER) -> int:
        value = int(self.match(_NUMBER, "number").group())
        if value > limit:
            raise self.fail("number out of range")
        return value

    def nz_number(self) -> int:
        value = self.number()
        if value == 0:
            raise self.fail("number must be non-zero")
        return value

    def number64(self) -> int:
        return self.number(_MAX_NUMBER64)

    # -- strings (RFC 9051 §4.3) ------------------------------------------------------------

    def literal(self, allow_binary: bool = False) -> tuple[bytes, bool]:
        """Consume a literal marker and return (data, binary)."""
        m = self.match(_LITERAL, "literal")
        binary = bool(m.group(1))
        if binary and not allow_binary:
            raise self.fail("literal8 not allowed here")
        if self.pos != len(self.buf) or self.line >= len(self.literals):
            raise self.fail("literal must end the line")
        data = self.literals[self.line]
        if len(data) != int(m.group(2)):
            raise self.fail("literal length mismatch")
        if not binary and b"\x00" in data:
            raise self.fail("NUL in literal (use literal8)")
        self.line += 1
        self.buf = self.lines[self.line]
        self.pos = 0
        return data, binary

    def quoted(self) -> bytes:
        m = self.match(_QUOTED, "quoted string")
        body = m.group(1)
        return _QUOTED_ESCAPE.sub(rb"\1", body) if b"\\" in body else body

    def string(self) -> bytes:
        ch = self.peek()
        if ch == 0x22:
            return self.quoted()
        if ch == 0x7B:
            return self.literal()[0]
        raise self.fail("expected string")

    def astring(self) -> bytes:
        ch = self.peek()
        if ch == 0x22 or ch == 0x7B:
            return self.string()
        return self.match(_ASTRING_ATOM, "astring").group()

    def nstring(self) -> bytes | None:
        if self.peek() in (0x4E, 0x6E) and self.buf[self.pos : self.pos + 3].upper() == b"NIL":
            after = self.pos + 3
            if after == len(self.buf) or self.buf[after] in b" )":
                self.pos = after
                return None
        return self.string()

    def text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"invalid UTF-8 in {what}") from exc

    def name(self, raw: bytes) -> str | None:
        """Decode a mailbox name or pattern (mUTF-7 unless UTF8=ACCEPT, RFC 6855 §3); None when it is
        a valid astring but not in that encoding: a name that no mailbox has, not a syntax error."""
        try:
            return raw.decode("utf-8") if self.utf8 else mutf7.decode(raw)
        except (UnicodeDecodeError, mutf7.MUTF7Error):
            return None

    def mailbox(self, unusable: str = "NONEXISTENT") -> str:
        """A mailbox argument. One in no valid encoding makes the command a NO with ``unusable``
        (``NONEXISTENT`` for a mailbox to use, ``CANNOT`` for one to create) after the parse."""
        raw = self.astring()
        if raw.upper() == b"INBOX":  # RFC 9051 §5.1: INBOX is case-insensitive.
            return "INBOX"
        name = self.name(raw)
        if name is not None:
            return name
        if self.refusal is None:
            how = "UTF-8" if self.utf8 else "modified UTF-7 (RFC 3501 section 5.1.3)"
            self.refusal = ParseError(f"mailbox name is not valid {how}", status="NO", code=unusable)
        return raw.decode("latin-1")

    def list_mailbox(self) -> str | None:
        """A LIST pattern; None for one that cannot match any name (see :meth:`name`)."""
        ch = self.peek()
        raw = self.string() if ch in (0x22, 0x7B) else self.match(_LIST_ATOM, "list-mailbox").group()
        return self.name(raw)

    # -- misc tokens ------------------------------------------------------------------------

    def sequence_set(self) -> SequenceSet:
        raw = self.match(_SEQSET, "sequence set").group()
        try:
            return SequenceSet.parse(raw)
        except ValueError as exc:
            raise self.fail(str(exc)) from exc

    def flag(self) -> str:
        if self.peek() == 0x5C:
            self.pos += 1
            word = "\\" + self.match(_ATOM, "flag").group().decode("ascii")
            return _SYSTEM_FLAGS.get(word.upper(), word)
        return self.match(_ATOM, "flag").group().decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        self.char(0x28, "(")
        flags: list[str] = []
        if self.peek() != 0x29:
            flags.append(self.flag())
            while self.maybe_sp():
                flags.append(self.flag())
        self.char(0x29, ")")
        return tuple(flags)

    def paren_list(self, item) -> list:
        """Parse ``"(" item *(SP item) ")"`` (at least one item)."""
        self.char(0x28, "(")
        items = [item()]
        while self.maybe_sp():
            items.append(item())
        self.char(0x29, ")")
        return items

    def search_date(self) -> date:
        quoted = self.peek() == 0x22
        if quoted:
            self.pos += 1
        m = self.match(_DATE, "date")
        if quoted:
            self.char(0x22, '"')
        month = _MONTHS.get(m.group(2).upper())
        if month is None:
            raise self.fail("invalid month")
        try:
            return date(int(m.group(3)), month, int(m.group(1)))
        except ValueError as exc:
            raise self.fail("invalid date") from exc

    def date_time(self) -> datetime:
        m = self.match(_DATE_TIME, "date-time")
        month = _MONTHS.get(m.group(2).upper())
        if month is None:
            raise self.fail("invalid month")
        offset = timedelta(hours=int(m.group(8)), minutes=int(m.group(9)))
        if m.group(7) == b"-":
            offset = -offset
        try:
            return datetime(
                int(m.group(3)),
                month,
                int(m.group(1).strip()),
                int(m.group(4)),
                int(m.group(5)),
                int(m.group(6)),
                tzinfo=timezone(offset),
            )
        except ValueError as exc:
            raise self.fail("invalid date-time") from exc


# --- command argument parsers ---------------------------------------------------------------


def _no_args(cls: type[CommandBody]):
    def parse(c: _Cursor, uid: bool) -> CommandBody:
        c.end()
        return cls()

    return parse


def _authenticate(c: _Cursor, uid: bool) -> Authenticate:
    c.sp()
    mechanism = c.keyword()
    initial = None
    if c.maybe_sp():
        # RFC 4959: initial-resp = base64 / "=" (empty response).
        raw = c.match(_BASE64, "base64").group()
        if raw == b"=":
            initial = b""
        else:
            try:
                initial = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise c.fail("invalid base64 initial response") from exc
    c.end()
    return Authenticate(mechanism, initial)


def _login(c: _Cursor, uid: bool) -> Login:
    c.sp()
    user = c.text(c.astring(), "user name")
    c.sp()
    password = c.text(c.astring(), "password")
    c.end()
    return Login(user, password)


def _enable(c: _Cursor, uid: bool) -> Enable:
    caps = []
    while c.maybe_sp():
        caps.append(c.keyword())
    if not caps:
        raise c.fail("ENABLE needs at least one capability")
    c.end()
    return Enable(tuple(caps))


def _qresync(c: _Cursor) -> QResync:
    # RFC 7162 §3.2.5: "(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")"
    c.char(0x28, "(")
    uidvalidity = c.nz_number()
    c.sp()
    modseq = c.number64()
    known = None
    seq_match = None
    if c.maybe_sp() and c.peek() != 0x28:
        known = c.sequence_set()
        c.maybe_sp()
    if c.peek() == 0x28:
        c.pos += 1
        known_seqs = c.sequence_set()
        c.sp()
        known_uids = c.sequence_set()
        c.char(0x29, ")")
        seq_match = (known_seqs, known_uids)
    c.char(0x29, ")")
    return QResync(uidvalidity, modseq, known, seq_match)


def _select_like(cls: type[Select] | type[Examine]):
    def parse(c: _Cursor, uid: bool) -> Select | Examine:
        c.sp()
        mailbox = c.mailbox()
        condstore = False
        qresync = None
        if c.maybe_sp():
            # RFC 4466 §2.1 select-params.
            def param() -> None:
                nonlocal condstore, qresync
                word = c.keyword()
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC":
                    c.sp()
                    qresync = _qresync(c)
                else:
                    raise c.fail(f"unknown select parameter {word}")

            c.paren_list(param)
        c.end()
        return cls(mailbox, condstore, qresync)

    return parse


def _create(c: _Cursor, uid: bool) -> Create:
    c.sp()
    mailbox = c.mailbox("CANNOT")
    uses: list[str] = []
    if c.maybe_sp():

        def param() -> None:
            if c.keyword() != "USE":
                raise c.fail("unknown CREATE parameter")
            c.sp()
            for attr in c.flag_list():
                canonical = _SPECIAL_USE.get(attr.upper())
                if canonical is None:
                    raise ParseError("unsupported special-use attribute", status="NO", code="USEATTR")
                uses.append(canonical)

        c.paren_list(param)
    c.end()
    return Create(mailbox, tuple(uses))


def _one_mailbox(cls):
    def parse(c: _Cursor, uid: bool):
        c.sp()
        mailbox = c.mailbox()
        c.end()
        return cls(mailbox)

    return parse


def _rename(c: _Cursor, uid: bool) -> Rename:
    c.sp()
    old = c.mailbox()
    c.sp()
    new = c.mailbox("CANNOT")
    c.end()
    return Rename(old, new)


def _status_items(c: _Cursor) -> tuple[str, ...]:
    items = c.paren_list(c.keyword)
    for item in items:
        if item not in _STATUS_ITEMS:
            raise c.fail(f"unknown STATUS item {item}")
    return tuple(items)


def _list(c: _Cursor, uid: bool) -> List:
    # RFC 5258 §6: "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    c.sp()
    selection: set[str] = set()
    extended = False
    if c.peek() == 0x28:
        extended = True
        c.pos += 1
        if c.peek() != 0x29:
            selection.add(c.keyword())
            while c.maybe_sp():
                selection.add(c.keyword())
        c.char(0x29, ")")
        c.sp()
        unknown = selection - _LIST_SELECT
        if unknown:
            raise c.fail(f"unknown LIST selection option {sorted(unknown)[0]}")
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            raise c.fail("RECURSIVEMATCH needs another selection option")
    reference = c.name(c.astring())
    c.sp()
    if c.peek() == 0x28:
        extended = True
        given = c.paren_list(c.list_mailbox)
    else:
        given = [c.list_mailbox()]
    # A reference or pattern in no valid encoding matches nothing: the LIST is answered, just empty.
    patterns = () if reference is None else tuple(p for p in given if p is not None)
    returns = ListReturn()
    if c.maybe_sp():
        extended = True
        c.expect_keyword("RETURN")
        c.sp()
        opts = {"subscribed": False, "children": False, "special_use": False}
        status = None
        c.char(0x28, "(")
        while c.peek() != 0x29:
            word = c.keyword()
            if word == "SUBSCRIBED":
                opts["subscribed"] = True
            elif word == "CHILDREN":
                opts["children"] = True
            elif word == "SPECIAL-USE":
                opts["special_use"] = True
            elif word == "STATUS":
                c.sp()
                status = _status_items(c)
            else:
                raise c.fail(f"unknown LIST return option {word}")
            if c.peek() != 0x29:
                c.sp()
        c.pos += 1
        returns = ListReturn(status=status, **opts)
    c.end()
    return List(reference or "", patterns, frozenset(selection), returns, extended)


def _lsub(c: _Cursor, uid: bool) -> Lsub:
    c.sp()
    reference = c.name(c.astring())
    c.sp()
    pattern = c.list_mailbox()
    c.end()
    return Lsub(reference or "", None if reference is None else pattern)


def _status(c: _Cursor, uid: bool) -> Status:
    c.sp()
    mailbox = c.mailbox()
    c.sp()
    items = _status_items(c)
    c.end()
    return Status(mailbox, items)


def _append(c: _Cursor, uid: bool) -> Append:
    # RFC 3502 §6 (MULTIAPPEND), RFC 3516 §4.4 (literal8), RFC 6855 §4 (UTF8 (literal8)).
    c.sp()
    mailbox = c.mailbox()
    messages: list[AppendMessage] = []
    while not c.at_end():
        c.sp()
        flags: tuple[str, ...] = ()
        when = None
        if c.peek() == 0x28:
            flags = c.flag_list()
            c.sp()
        if c.peek() == 0x22:
            when = c.date_time()
            c.sp()
        utf8 = False
        if c.peek() in (0x7B, 0x7E):
            data, binary = c.literal(allow_binary=True)
        elif c.peek_keyword() == "CATENATE":
            c.keyword()
            c.sp()
            messages.append(
                AppendMessage(b"", flags, when, catenate=tuple(c.paren_list(lambda: _cat_part(c))))
            )
            continue
        else:
            c.expect_keyword("UTF8")
            c.sp()
            c.char(0x28, "(")
            data, binary = c.literal(allow_binary=True)
            if not binary:
                raise c.fail("UTF8 append data must be a literal8")
            c.char(0x29, ")")
            utf8 = True
        messages.append(AppendMessage(data, flags, when, binary, utf8))
    if not messages:
        raise c.fail("APPEND needs a message literal")
    return Append(mailbox, tuple(messages))


def _cat_part(c: _Cursor) -> bytes | str:
    """RFC 4469 §5 ``cat-part = "TEXT" SP literal / "URL" SP astring`` (literal8 too, RFC 3516)."""
    word = c.keyword()
    c.sp()
    if word == "TEXT":
        return c.literal(allow_binary=True)[0]
    if word == "URL":
        return c.text(c.astring(), "URL")
    raise c.fail(f"unknown CATENATE part {word}")


def _expunge(c: _Cursor, uid: bool) -> Expunge:
    if not uid:
        c.end()
        return Expunge()
    c.sp()
    uids = c.sequence_set()
    c.end()
    return Expunge(uids)


def _charset(c: _Cursor) -> str:
    raw = c.quoted() if c.peek() == 0x22 else c.match(_ATOM, "charset").group()
    name = raw.decode("ascii", "replace").upper()
    try:
        codecs.lookup(name)
    except LookupError as exc:
        raise ParseError(
            f"unsupported charset {name}",
            status="NO",
            code="BADCHARSET (" + " ".join(SUPPORTED_CHARSETS) + ")",
        ) from exc
    return name


class _SearchParser:
    """Search-key grammar of RFC 9051 §6.4.4 plus RFC 7162 MODSEQ and RFC 5032 OLDER/YOUNGER."""

    __slots__ = ("c", "charset", "depth")

    def __init__(self, c: _Cursor, charset: str) -> None:
        self.c = c
        self.charset = charset
        self.depth = 0

    def string(self) -> str:
        raw = self.c.astring()
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError as exc:
            raise self.c.fail(f"search string is not valid {self.charset}") from exc

    def program(self) -> SearchKey:
        keys = [self.key()]
        while self.c.maybe_sp():
            keys.append(self.key())
        self.c.end()
        return keys[0] if len(keys) == 1 else AndKey(tuple(keys))

    def key(self) -> SearchKey:
        c = self.c
        self.depth += 1
        if self.depth > _MAX_SEARCH_DEPTH:
            raise c.fail("search key nested too deeply")
        try:
            ch = c.peek()
            if ch == 0x28:
                keys = c.paren_list(self.key)
                return keys[0] if len(keys) == 1 else AndKey(tuple(keys))
            if 0x30 <= ch <= 0x39 or ch in (0x2A, 0x24):
                return SequenceKey(c.sequence_set())
            return self.named(c.keyword())
        finally:
            self.depth -= 1

    def named(self, word: str) -> SearchKey:
        c = self.c
        if word == "ALL":
            return AllKey()
        flag = _FLAG_SEARCH.get(word)
        if flag is not None:
            return FlagKey(*flag)
        if word == "NEW":
            return AndKey((FlagKey("\\Recent"), FlagKey("\\Seen", False)))
        if word not in _ARG_SEARCH:
            raise c.fail(f"unknown search key {word}")
        c.sp()
        if word in _HEADER_SEARCH:
            return HeaderKey(word, self.string())
        if word == "HEADER":
            field = c.text(c.astring(), "header name").upper()
            c.sp()
            return HeaderKey(field, self.string())
        if word == "BODY":
            return BodyKey(self.string())
        if word == "TEXT":
            return TextKey(self.string())
        when = _DATE_SEARCH.get(word)
        if when is not None:
            return DateKey(when[0], when[1], c.search_date())
        if word in ("KEYWORD", "UNKEYWORD"):
            return FlagKey(c.flag(), word == "KEYWORD")
        if word in ("LARGER", "SMALLER"):
            return SizeKey(word, c.number64())
        if word == "NOT":
            return NotKey(self.key())
        if word == "OR":
            left = self.key()
            c.sp()
            return OrKey(left, self.key())
        if word == "UID":
            return SequenceKey(c.sequence_set(), uid=True)
        if word == "MODSEQ":
            entry = None
            if c.peek() == 0x22:
                entry_name = c.text(c.quoted(), "entry name")
                c.sp()
                entry_type = c.keyword().lower()
                if entry_type not in ("priv", "shared", "all"):
                    raise c.fail("invalid MODSEQ entry type")
                c.sp()
                entry = (entry_name, entry_type)
            return ModSeqKey(c.number64(), entry)
        return WithinKey(word == "OLDER", c.nz_number())


def _return_opts(c: _Cursor, allowed: frozenset[str]) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """Parse ``RETURN (opt ...)`` into the options and the PARTIAL range (RFC 5267 §5
    ``partial-range = nz-number ":" nz-number``, either order, no ``*``); RFC 4731 §3.1: an
    empty list means ALL. RFC 5267 §4.4: at most one of PARTIAL and ALL."""
    c.sp()
    c.char(0x28, "(")
    opts: list[str] = []
    partial = None
    while c.peek() != 0x29:
        word = c.keyword()
        if word not in allowed:
            raise c.fail(f"unknown RETURN option {word}")
        if word == "PARTIAL":
            if partial is not None:
                raise c.fail("PARTIAL given twice")
            c.sp()
            low = c.nz_number()
            c.char(0x3A, ":")
            high = c.nz_number()
            partial = (min(low, high), max(low, high))
        if word not in opts:
            opts.append(word)
        if c.peek() != 0x29:
            c.sp()
    c.pos += 1
    if partial is not None and "ALL" in opts:
        raise c.fail("RETURN cannot have both PARTIAL and ALL")
    return tuple(opts) or ("ALL",), partial


def _search(c: _Cursor, uid: bool) -> Search:
    c.sp()
    returns = partial = None
    if c.peek_keyword() == "RETURN":
        c.keyword()
        returns, partial = _return_opts(c, _SEARCH_RETURN)
        c.sp()
    charset = None
    if c.peek_keyword() == "CHARSET":
        c.keyword()
        c.sp()
        charset = _charset(c)
        c.sp()
    criteria = _SearchParser(c, charset or "UTF-8").program()
    return Search(uid, criteria, charset, returns, partial)


def _sort(c: _Cursor, uid: bool) -> Sort:
    # RFC 5256 §5, RFC 5267 §3.2 (ESORT RETURN).
    c.sp()
    returns = partial = None
    if c.peek_keyword() == "RETURN":
        c.keyword()
        returns, partial = _return_opts(c, _SORT_RETURN)
        c.sp()

    def criterion() -> SortCriterion:
        word = c.keyword()
        reverse = word == "REVERSE"
        if reverse:
            c.sp()
            word = c.keyword()
        if word not in _SORT_KEYS:
            raise c.fail(f"unknown sort key {word}")
        return SortCriterion(word, reverse)

    criteria = tuple(c.paren_list(criterion))
    c.sp()
    charset = _charset(c)
    c.sp()
    search = _SearchParser(c, charset).program()
    return Sort(uid, criteria, charset, search, returns, partial)


def _cancelupdate(c: _Cursor, uid: bool) -> CancelUpdate:
    """RFC 5267 §5: ``"CANCELUPDATE" 1*(SP quoted)``, the tags of the updating commands."""
    tags: list[str] = []
    while not c.at_end():
        c.sp()
        tags.append(c.text(c.quoted(), "tag"))
    if not tags:
        raise c.fail("CANCELUPDATE needs at least one tag")
    return CancelUpdate(tuple(tags))


def _thread(c: _Cursor, uid: bool) -> Thread:
    c.sp()
    algorithm = c.keyword()
    if algorithm not in _THREAD_ALGORITHMS:
        raise c.fail(f"unknown THREAD algorithm {algorithm}")
    c.sp()
    charset = _charset(c)
    c.sp()
    search = _SearchParser(c, charset).program()
    return Thread(uid, algorithm, charset, search)


def _section_part(c: _Cursor) -> tuple[int, ...]:
    parts = [c.nz_number()]
    while c.peek() == 0x2E and c.pos + 1 < len(c.buf) and 0x30 <= c.buf[c.pos + 1] <= 0x39:
        c.pos += 1
        parts.append(c.nz_number())
    return tuple(parts)


def _section(c: _Cursor) -> Section:
    """RFC 9051 §9 ``section`` (after the opening bracket, consumes the closing one)."""
    if c.peek() == 0x5D:
        c.pos += 1
        return Section()
    part: tuple[int, ...] = ()
    if 0x30 <= c.peek() <= 0x39:
        part = _section_part(c)
        if c.peek() == 0x5D:
            c.pos += 1
            return Section(part)
        c.char(0x2E, ".")
    text = c.match(_SECTION_KEYWORD, "section text").group().decode("ascii").upper()
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        c.sp()
        fields = tuple(c.text(name, "header name").upper() for name in c.paren_list(c.astring))
    elif text == "MIME":
        if not part:
            raise c.fail("MIME requires a part number")
    elif text not in ("HEADER", "TEXT"):
        raise c.fail(f"invalid section {text}")
    c.char(0x5D, "]")
    return Section(part, text, fields)


def _partial(c: _Cursor) -> tuple[int, int] | None:
    if c.peek() != 0x3C:
        return None
    c.pos += 1
    origin = c.number()
    c.char(0x2E, ".")
    length = c.nz_number()
    c.char(0x3E, ">")
    return origin, length


def _fetch_att(c: _Cursor) -> FetchItem:
    word = c.match(_FETCH_NAME, "fetch attribute").group().decode("ascii").upper()
    if word in ("BODY", "BODY.PEEK") and c.peek() == 0x5B:
        c.pos += 1
        section = _section(c)
        return FetchBody(section, peek=word == "BODY.PEEK", partial=_partial(c))
    if word in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        # RFC 3516 §4.2: section-binary = "[" [section-part] "]".
        c.char(0x5B, "[")
        part = _section_part(c) if c.peek() != 0x5D else ()
        c.char(0x5D, "]")
        if word == "BINARY.SIZE":
            return FetchBinarySize(part)
        return FetchBody(Section(part), peek=word == "BINARY.PEEK", binary=True, partial=_partial(c))
    att = _FETCH_SIMPLE.get(word)
    if att is None:
        raise c.fail(f"unknown fetch attribute {word}")
    return att


def _fetch(c: _Cursor, uid: bool) -> Fetch:
    c.sp()
    seqs = c.sequence_set()
    c.sp()
    items: tuple[FetchItem, ...]
    if c.peek() == 0x28:
        items = tuple(c.paren_list(lambda: _fetch_att(c)))
    else:
        macro = _FETCH_MACROS.get(c.peek_keyword())
        if macro is not None:
            c.keyword()
            items = macro
        else:
            items = (_fetch_att(c),)
    changed_since = None
    vanished = False
    if c.maybe_sp():
        # RFC 7162 §3.1.4.1 / §3.2.6 fetch modifiers.
        def modifier() -> None:
            nonlocal changed_since, vanished
            word = c.keyword()
            if word == "CHANGEDSINCE":
                c.sp()
                changed_since = c.number64()
            elif word == "VANISHED":
                vanished = True
            else:
                raise c.fail(f"unknown FETCH modifier {word}")

        c.paren_list(modifier)
    c.end()
    if vanished and (not uid or changed_since is None):
        raise c.fail("VANISHED requires UID FETCH and CHANGEDSINCE")
    return Fetch(uid, seqs, items, changed_since, vanished)


def _store(c: _Cursor, uid: bool) -> Store:
    c.sp()
    seqs = c.sequence_set()
    c.sp()
    unchanged_since = None
    if c.peek() == 0x28:
        # RFC 7162 §3.1.3 store-modifier.
        c.pos += 1
        c.expect_keyword("UNCHANGEDSINCE")
        c.sp()
        unchanged_since = c.number64()
        c.char(0x29, ")")
        c.sp()
    mode = StoreMode.REPLACE
    if c.peek() in (0x2B, 0x2D):
        mode = StoreMode(chr(c.peek()))
        c.pos += 1
    word = c.keyword()
    if word not in ("FLAGS", "FLAGS.SILENT"):
        raise c.fail("expected FLAGS or FLAGS.SILENT")
    c.sp()
    if c.peek() == 0x28:
        flags = c.flag_list()
    else:
        found = [c.flag()]
        while c.maybe_sp():
            found.append(c.flag())
        flags = tuple(found)
    c.end()
    return Store(uid, seqs, mode, flags, word == "FLAGS.SILENT", unchanged_since)


def _copy_like(cls: type[Copy] | type[Move]):
    def parse(c: _Cursor, uid: bool) -> Copy | Move:
        c.sp()
        seqs = c.sequence_set()
        c.sp()
        mailbox = c.mailbox()
        c.end()
        return cls(uid, seqs, mailbox)

    return parse


def _id(c: _Cursor, uid: bool) -> Id:
    # RFC 2971 §4: "ID" SP id-params-list; id-params-list = "(" *(string SP nstring) ")" / nil.
    c.sp()
    if c.peek() != 0x28:
        c.expect_keyword("NIL")
        c.end()
        return Id(None)
    c.pos += 1
    params: list[tuple[str, str | None]] = []
    while c.peek() != 0x29:
        key = c.string().decode("utf-8", "replace")
        c.sp()
        value = c.nstring()
        params.append((key, None if value is None else value.decode("utf-8", "replace")))
        if c.peek() != 0x29:
            c.sp()
    c.pos += 1
    c.end()
    return Id(tuple(params))


def _mailbox_identifier(cls):
    """RFC 4314 §3: ``mailbox SP identifier``, and ``SP mod-rights`` for SETACL."""

    def parse(c: _Cursor, uid: bool):
        c.sp()
        mailbox = c.mailbox()
        c.sp()
        identifier = c.text(c.astring(), "identifier")
        if cls is SetAcl:
            c.sp()
            rights = c.text(c.astring(), "rights")
            c.end()
            return SetAcl(mailbox, identifier, rights)
        c.end()
        return cls(mailbox, identifier)

    return parse


def _getquota(c: _Cursor, uid: bool) -> GetQuota:
    c.sp()
    root = c.text(c.astring(), "quota root")
    c.end()
    return GetQuota(root)


def _setquota(c: _Cursor, uid: bool) -> SetQuota:
    # RFC 9208 §4.3 / §7: setquota-list = "(" [setquota-resource *(SP setquota-resource)] ")".
    c.sp()
    root = c.text(c.astring(), "quota root")
    c.sp()
    c.char(0x28, "(")
    limits: list[tuple[str, int]] = []
    while c.peek() != 0x29:
        resource = c.keyword()
        c.sp()
        limits.append((resource, c.number64()))
        if c.peek() != 0x29:
            c.sp()
    c.pos += 1
    c.end()
    return SetQuota(root, tuple(limits))


_COMMANDS = {
    "CAPABILITY": _no_args(Capability),
    "NOOP": _no_args(Noop),
    "LOGOUT": _no_args(Logout),
    "STARTTLS": _no_args(StartTLS),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "SELECT": _select_like(Select),
    "EXAMINE": _select_like(Examine),
    "CREATE": _create,
    "DELETE": _one_mailbox(Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _no_args(Namespace),
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_args(Idle),
    "CHECK": _no_args(Check),
    "CLOSE": _no_args(Close),
    "UNSELECT": _no_args(Unselect),
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy_like(Copy),
    "MOVE": _copy_like(Move),
    "SORT": _sort,
    "THREAD": _thread,
    "CANCELUPDATE": _cancelupdate,
    "ID": _id,
    "GETACL": _one_mailbox(GetAcl),
    "SETACL": _mailbox_identifier(SetAcl),
    "DELETEACL": _mailbox_identifier(DeleteAcl),
    "LISTRIGHTS": _mailbox_identifier(ListRights),
    "MYRIGHTS": _one_mailbox(MyRights),
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _one_mailbox(GetQuotaRoot),
    "SETQUOTA": _setquota,
}
_UID_COMMANDS = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT", "THREAD"})


def parse_tag(line: bytes) -> str | None:
    """Return the tag at the start of a command line if it is a valid tag, else None."""
    m = _TAG.match(line)
    if m is None or (m.end() < len(line) and line[m.end()] != 0x20):
        return None
    return m.group().decode("ascii")


def parse_command(
    lines: list[bytes], literals: list[bytes], *, utf8: bool = False
) -> tuple[str, CommandBody]:
    """Parse one framed command into ``(tag, command)``.

    ``utf8`` reflects ENABLE UTF8=ACCEPT (mailbox names are then UTF-8, not mUTF-7).
    Raises :class:`ParseError` (its tag is recoverable with :func:`parse_tag`).
    """
    c = _Cursor(lines, literals, utf8)
    tag = c.match(_TAG, "tag").group().decode("ascii")
    c.sp()
    word = c.keyword()
    uid = False
    if word == "UID":
        c.sp()
        word = c.keyword()
        if word not in _UID_COMMANDS:
            raise c.fail(f"UID {word} is not a valid command")
        uid = True
    handler = _COMMANDS.get(word)
    if handler is None:
        return tag, Unknown(word)
    body = handler(c, uid)
    if c.refusal is not None:
        raise c.refusal
    return tag, body


def split_literals(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """Frame a complete wire command (without final CRLF) into lines and literals.

    Used by tests and fuzzers to drive :func:`parse_command` without a receiver.
    """
    lines: list[bytes] = []
    literals: list[bytes] = []
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            lines.append(data[pos:])
            return lines, literals
        line = data[pos:eol]
        m = re.search(rb"\{(\d{1,19})\+?\}\Z", line)
        if m is None:
            raise ParseError("line break outside a literal")
        size = int(m.group(1))
        lines.append(line)
        literals.append(data[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size
