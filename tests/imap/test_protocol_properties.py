"""Property tests: the receiver never raises, and generated commands round-trip."""

from datetime import date

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol import mutf7
from mailserver.imap.protocol.commands import (
    AllKey,
    AndKey,
    BodyKey,
    Copy,
    DateField,
    DateKey,
    FetchAtt,
    FetchBinarySize,
    FetchBody,
    FlagKey,
    HeaderKey,
    Login,
    Move,
    NotKey,
    OrKey,
    Search,
    Section,
    SequenceKey,
    SizeKey,
    Store,
    StoreMode,
)
from mailserver.imap.protocol.grammar import parse_command, split_literals
from mailserver.imap.protocol.receiver import NEED_DATA, PAUSED, NeedContinuation, Receiver
from mailserver.imap.protocol.sequence import SequenceSet

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- fuzzing -------------------------------------------------------------------------------

TOKENS = st.sampled_from(
    [
        b"a1 ",
        b"UID ",
        b"FETCH ",
        b"SEARCH ",
        b"APPEND ",
        b"LOGIN ",
        b"SELECT ",
        b"LIST ",
        b"STORE ",
        b"{3}\r\n",
        b"{2+}\r\n",
        b"~{1}\r\n",
        b"{99999999999}\r\n",
        b"(",
        b")",
        b"[",
        b"]",
        b'"',
        b"\\",
        b"*",
        b"1:*",
        b"BODY[1.2.HEADER.FIELDS (A)]<0.5>",
        b"NIL",
        b"\r\n",
        b"\n",
        b"\x00",
        b"\xff",
        b" ",
        b"OR NOT ",
        b"&AMk-",
        b"RETURN (",
    ]
)
FUZZ_INPUT = st.one_of(st.binary(max_size=400), st.lists(TOKENS, max_size=40).map(b"".join))


@FAST
@given(data=FUZZ_INPUT, chunk=st.integers(1, 50), decisions=st.lists(st.booleans(), max_size=20))
def test_receiver_never_raises(data: bytes, chunk: int, decisions: list[bool]) -> None:
    r = Receiver(max_line_length=200, max_literal_size=100, nonsync_literal_limit=50)
    for i in range(0, len(data), chunk):
        r.receive_data(data[i : i + chunk])
        while True:
            ev = r.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                break
            if isinstance(ev, NeedContinuation):
                if not ev.too_large and (decisions.pop() if decisions else True):
                    r.accept_literal()
                else:
                    r.reject_literal()


# --- round trips -------------------------------------------------------------------------

ASTRING_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
MAILBOX = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
    lambda s: s.upper() != "INBOX"
)
NUMBER = st.integers(1, 2**32 - 1)
SEQ_ITEM = st.one_of(
    NUMBER.map(lambda n: (n, n)),
    st.tuples(st.one_of(NUMBER, st.none()), st.one_of(NUMBER, st.none())),
)
SEQSET = st.lists(SEQ_ITEM, min_size=1, max_size=5).map(lambda r: SequenceSet(tuple(r)))
KEYWORD = st.from_regex(r"\A[A-Za-z$][A-Za-z0-9_$]{0,10}\Z")
FLAG = st.one_of(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]), KEYWORD)


def wire_string(value: str) -> bytes:
    return enc.string(value)


def search_leaf() -> st.SearchStrategy:
    return st.one_of(
        st.just(AllKey()),
        st.sampled_from(["\\Seen", "\\Answered", "\\Deleted"]).flatmap(
            lambda f: st.booleans().map(lambda p: FlagKey(f, p))
        ),
        st.builds(HeaderKey, st.sampled_from(["FROM", "TO", "CC", "BCC", "SUBJECT", "X-SPAM"]), ASTRING_TEXT),
        st.builds(BodyKey, ASTRING_TEXT),
        st.builds(
            DateKey,
            st.sampled_from(list(DateField)),
            st.sampled_from(["BEFORE", "ON", "SINCE"]),
            st.dates(date(1970, 1, 1), date(2100, 1, 1)),
        ),
        st.builds(SizeKey, st.sampled_from(["LARGER", "SMALLER"]), st.integers(0, 2**40)),
        st.builds(SequenceKey, SEQSET, st.booleans()),
    )


SEARCH_KEY = st.recursive(
    search_leaf(),
    lambda inner: st.one_of(
        st.builds(NotKey, inner),
        st.builds(OrKey, inner, inner),
        st.lists(inner, min_size=2, max_size=3).map(lambda ks: AndKey(tuple(ks))),
    ),
    max_leaves=8,
)

_FLAG_WORDS = {
    ("\\Seen", True): "SEEN",
    ("\\Seen", False): "UNSEEN",
    ("\\Answered", True): "ANSWERED",
    ("\\Answered", False): "UNANSWERED",
    ("\\Deleted", True): "DELETED",
    ("\\Deleted", False): "UNDELETED",
}
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def render_key(key) -> bytes:
    match key:
        case AllKey():
            return b"ALL"
        case FlagKey(flag, present):
            return _FLAG_WORDS[(flag, present)].encode()
        case HeaderKey(field, value) if field in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            return field.encode() + b" " + wire_string(value)
        case HeaderKey(field, value):
            return b"HEADER " + field.encode() + b" " + wire_string(value)
        case BodyKey(value):
            return b"BODY " + wire_string(value)
        case DateKey(fld, op, when):
            prefix = "SENT" if fld is DateField.SENT else ""
            return f"{prefix}{op} {when.day}-{_MONTHS[when.month - 1]}-{when.year:04d}".encode()
        case SizeKey(op, size):
            return f"{op} {size}".encode()
        case SequenceKey(seq, uid):
            return (b"UID " if uid else b"") + str(seq).encode()
        case NotKey(inner):
            return b"NOT " + render_key(inner)
        case OrKey(left, right):
            return b"OR " + render_key(left) + b" " + render_key(right)
        case AndKey(keys):
            return b"(" + b" ".join(render_key(k) for k in keys) + b")"
    raise AssertionError(key)


def parse_wire(wire: bytes):
    lines, literals = split_literals(wire)
    return parse_command(lines, literals)


def flatten(key):
    """Single-key parenthesised lists are unwrapped by the parser; mirror that."""
    match key:
        case NotKey(inner):
            return NotKey(flatten(inner))
        case OrKey(left, right):
            return OrKey(flatten(left), flatten(right))
        case AndKey(keys):
            return AndKey(tuple(flatten(k) for k in keys))
    return key


@FAST
@given(key=SEARCH_KEY, uid=st.booleans())
def test_search_roundtrip(key, uid: bool) -> None:
    wire = b"t " + (b"UID " if uid else b"") + b"SEARCH CHARSET UTF-8 " + render_key(key)
    assert parse_wire(wire) == ("t", Search(uid, flatten(key), "UTF-8"))


@FAST
@given(user=ASTRING_TEXT, password=ASTRING_TEXT)
def test_login_roundtrip(user: str, password: str) -> None:
    wire = b"x LOGIN " + enc.astring(user) + b" " + enc.astring(password)
    assert parse_wire(wire) == ("x", Login(user, password))


@FAST
@given(name=MAILBOX, seq=SEQSET, uid=st.booleans(), move=st.booleans(), utf8=st.booleans())
def test_copy_move_roundtrip(name: str, seq: SequenceSet, uid: bool, move: bool, utf8: bool) -> None:
    cls = Move if move else Copy
    wire = b"c " + (b"UID " if uid else b"") + cls.name.encode() + b" " + str(seq).encode()
    wire += b" " + enc.mailbox(name, utf8=utf8)
    lines, literals = split_literals(wire)
    assert parse_command(lines, literals, utf8=utf8) == ("c", cls(uid, seq, name))


SECTION = st.one_of(
    st.builds(Section, st.lists(st.integers(1, 50), max_size=4).map(tuple)),
    st.builds(
        Section,
        st.lists(st.integers(1, 50), max_size=3).map(tuple),
        st.sampled_from(["HEADER", "TEXT"]),
    ),
    st.builds(Section, st.lists(st.integers(1, 50), min_size=1, max_size=3).map(tuple), st.just("MIME")),
    st.builds(
        Section,
        st.lists(st.integers(1, 50), max_size=3).map(tuple),
        st.sampled_from(["HEADER.FIELDS", "HEADER.FIELDS.NOT"]),
        st.lists(st.from_regex(r"\A[A-Z][A-Z0-9-]{0,8}\Z"), min_size=1, max_size=3).map(tuple),
    ),
)
PARTIAL = st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1)))
FETCH_ITEM = st.one_of(
    st.sampled_from(list(FetchAtt)),
    st.builds(FetchBody, SECTION, st.booleans(), st.just(False), PARTIAL),
    st.builds(
        FetchBody,
        st.lists(st.integers(1, 9), max_size=3).map(lambda p: Section(tuple(p))),
        st.booleans(),
        st.just(True),
        PARTIAL,
    ),
    st.builds(FetchBinarySize, st.lists(st.integers(1, 9), max_size=3).map(tuple)),
)


@FAST
@given(seq=SEQSET, items=st.lists(FETCH_ITEM, min_size=1, max_size=6), uid=st.booleans())
def test_fetch_roundtrip(seq: SequenceSet, items: list, uid: bool) -> None:
    wire = b"f " + (b"UID " if uid else b"") + b"FETCH " + str(seq).encode()
    wire += b" (" + " ".join(str(i) for i in items).encode() + b")"
    tag, cmd = parse_wire(wire)
    assert (tag, cmd.uid, cmd.sequence_set, cmd.items) == ("f", uid, seq, tuple(items))


@FAST
@given(
    seq=SEQSET,
    mode=st.sampled_from(list(StoreMode)),
    flags=st.lists(FLAG, max_size=4).map(tuple),
    silent=st.booleans(),
    unchanged=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
)
def test_store_roundtrip(seq, mode, flags, silent, unchanged) -> None:
    wire = b"s STORE " + str(seq).encode()
    if unchanged is not None:
        wire += b" (UNCHANGEDSINCE %d)" % unchanged
    wire += b" " + mode.value.encode() + (b"FLAGS.SILENT " if silent else b"FLAGS ") + enc.flag_list(flags)
    assert parse_wire(wire) == ("s", Store(False, seq, mode, flags, silent, unchanged))


@FAST
@given(name=st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_mutf7_roundtrip(name: str) -> None:
    encoded = mutf7.encode(name)
    assert encoded.isascii()
    assert mutf7.decode(encoded) == name


@FAST
@given(seq=SEQSET)
def test_sequence_set_roundtrip(seq: SequenceSet) -> None:
    assert SequenceSet.parse(str(seq)) == seq


@FAST
@given(numbers=st.sets(st.integers(1, 500), max_size=60))
def test_compression_roundtrip(numbers: set[int]) -> None:
    rendered = enc.sequence_set(numbers)
    if numbers:
        assert list(SequenceSet.parse(rendered).iter(500)) == sorted(numbers)
    else:
        assert rendered == b""
