"""Typed IMAP commands (RFC 9051 §6, RFC 3501 §6 and the extensions we announce).

The parser (``grammar.py``) produces these immutable values; the session matches on
them. Names are normalised: command and option keywords upper-case, system flags in
their canonical spelling, ``INBOX`` in any case becomes ``"INBOX"``, mailbox names are
Unicode (already decoded from modified UTF-7 unless UTF8=ACCEPT is enabled).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime

from .sequence import SequenceSet

__all__ = [
    "AllKey",
    "AndKey",
    "Append",
    "AppendMessage",
    "Authenticate",
    "BodyKey",
    "CancelUpdate",
    "Capability",
    "Check",
    "Close",
    "CommandBody",
    "Copy",
    "Create",
    "DateKey",
    "Delete",
    "DeleteAcl",
    "Enable",
    "Examine",
    "Expunge",
    "Fetch",
    "FetchAtt",
    "FetchBinarySize",
    "FetchBody",
    "FetchItem",
    "FlagKey",
    "GetAcl",
    "GetQuota",
    "GetQuotaRoot",
    "HeaderKey",
    "Id",
    "Idle",
    "List",
    "ListReturn",
    "ListRights",
    "Login",
    "Logout",
    "Lsub",
    "ModSeqKey",
    "Move",
    "MyRights",
    "Namespace",
    "Noop",
    "NotKey",
    "OrKey",
    "QResync",
    "Rename",
    "Search",
    "SearchKey",
    "Section",
    "Select",
    "SequenceKey",
    "SetAcl",
    "SetQuota",
    "SizeKey",
    "Sort",
    "SortCriterion",
    "StartTLS",
    "Status",
    "Store",
    "StoreMode",
    "Subscribe",
    "TextKey",
    "Thread",
    "Unknown",
    "Unselect",
    "Unsubscribe",
    "WithinKey",
]


class CommandBody:
    """Base of every parsed command; ``name`` is the upper-case command keyword."""

    __slots__ = ()
    name: str = ""


# --- Any state (RFC 9051 §6.1) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability(CommandBody):
    name = "CAPABILITY"


@dataclass(frozen=True, slots=True)
class Noop(CommandBody):
    name = "NOOP"


@dataclass(frozen=True, slots=True)
class Logout(CommandBody):
    name = "LOGOUT"


@dataclass(frozen=True, slots=True)
class Id(CommandBody):
    """RFC 2971: ``params`` is None for ``ID NIL``; values may be None (NIL)."""

    params: tuple[tuple[str, str | None], ...] | None
    name = "ID"


# --- Not-authenticated state (RFC 9051 §6.2) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTLS(CommandBody):
    name = "STARTTLS"


@dataclass(frozen=True, slots=True)
class Authenticate(CommandBody):
    """``initial_response`` is the decoded SASL-IR (RFC 4959); ``b""`` for ``=``, None if absent."""

    mechanism: str
    initial_response: bytes | None = None
    name = "AUTHENTICATE"


@dataclass(frozen=True, slots=True)
class Login(CommandBody):
    username: str
    password: str
    name = "LOGIN"


# --- Authenticated state (RFC 9051 §6.3) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enable(CommandBody):
    capabilities: tuple[str, ...]
    name = "ENABLE"


@dataclass(frozen=True, slots=True)
class QResync:
    """RFC 7162 §3.2.5 QRESYNC select parameter."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select(CommandBody):
    """SELECT; ``condstore``/``qresync`` are the RFC 7162 select parameters."""

    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None
    name = "SELECT"

    @property
    def readonly(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Examine(CommandBody):
    """EXAMINE: same parameters as :class:`Select`, opens read-only."""

    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None
    name = "EXAMINE"

    @property
    def readonly(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Create(CommandBody):
    """``special_use`` from the RFC 6154 ``USE (...)`` create parameter."""

    mailbox: str
    special_use: tuple[str, ...] = ()
    name = "CREATE"


@dataclass(frozen=True, slots=True)
class Delete(CommandBody):
    mailbox: str
    name = "DELETE"


@dataclass(frozen=True, slots=True)
class Rename(CommandBody):
    old: str
    new: str
    name = "RENAME"


@dataclass(frozen=True, slots=True)
class Subscribe(CommandBody):
    mailbox: str
    name = "SUBSCRIBE"


@dataclass(frozen=True, slots=True)
class Unsubscribe(CommandBody):
    mailbox: str
    name = "UNSUBSCRIBE"


@dataclass(frozen=True, slots=True)
class ListReturn:
    """RFC 5258 return options; ``status`` holds RFC 5819 STATUS items (None if not asked)."""

    subscribed: bool = False
    children: bool = False
    special_use: bool = False
    status: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class List(CommandBody):
    """LIST, basic or extended (RFC 5258).

    ``selection`` holds the upper-case selection options (SUBSCRIBED, REMOTE, RECURSIVEMATCH,
    SPECIAL-USE). ``extended`` is true when the client used any RFC 5258 syntax, which
    obliges the server to use extended LIST responses (CHILDINFO etc.). Patterns in no valid
    encoding are left out (they match nothing), so ``patterns`` may be empty.
    """

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    returns: ListReturn = field(default_factory=ListReturn)
    extended: bool = False
    name = "LIST"


@dataclass(frozen=True, slots=True)
class Lsub(CommandBody):
    """``pattern`` is None when it (or the reference) is in no valid encoding: it matches nothing."""

    reference: str
    pattern: str | None
    name = "LSUB"


@dataclass(frozen=True, slots=True)
class Namespace(CommandBody):
    name = "NAMESPACE"


@dataclass(frozen=True, slots=True)
class Status(CommandBody):
    """``items`` are upper-case STATUS attributes in request order."""

    mailbox: str
    items: tuple[str, ...]
    name = "STATUS"


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of a (MULTI)APPEND (RFC 3502).

    ``binary`` is true for a ``~{n}`` literal8 (RFC 3516); ``utf8`` for the RFC 6855
    ``UTF8 (~{n})`` form, which also implies ``binary``. ``catenate`` holds the parts of the
    RFC 4469 ``CATENATE (...)`` form in order, literal bytes for TEXT and strings for URL
    (``data`` is then empty).
    """

    data: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime | None = None
    binary: bool = False
    utf8: bool = False
    catenate: tuple[bytes | str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Append(CommandBody):
    mailbox: str
    messages: tuple[AppendMessage, ...]
    name = "APPEND"


@dataclass(frozen=True, slots=True)
class Idle(CommandBody):
    name = "IDLE"


@dataclass(frozen=True, slots=True)
class GetAcl(CommandBody):
    """RFC 4314 §3.3."""

    mailbox: str
    name = "GETACL"


@dataclass(frozen=True, slots=True)
class SetAcl(CommandBody):
    """RFC 4314 §3.1: ``rights`` may start with ``+`` (add) or ``-`` (remove)."""

    mailbox: str
    identifier: str
    rights: str
    name = "SETACL"


@dataclass(frozen=True, slots=True)
class DeleteAcl(CommandBody):
    """RFC 4314 §3.2."""

    mailbox: str
    identifier: str
    name = "DELETEACL"


@dataclass(frozen=True, slots=True)
class ListRights(CommandBody):
    """RFC 4314 §3.4."""

    mailbox: str
    identifier: str
    name = "LISTRIGHTS"


@dataclass(frozen=True, slots=True)
class MyRights(CommandBody):
    """RFC 4314 §3.5."""

    mailbox: str
    name = "MYRIGHTS"


@dataclass(frozen=True, slots=True)
class GetQuota(CommandBody):
    root: str
    name = "GETQUOTA"


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(CommandBody):
    mailbox: str
    name = "GETQUOTAROOT"


@dataclass(frozen=True, slots=True)
class SetQuota(CommandBody):
    """RFC 9208 §4.3: ``limits`` are (upper-case resource name, limit) pairs."""

    root: str
    limits: tuple[tuple[str, int], ...]
    name = "SETQUOTA"


# --- Selected state (RFC 9051 §6.4) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check(CommandBody):
    name = "CHECK"


@dataclass(frozen=True, slots=True)
class Close(CommandBody):
    name = "CLOSE"


@dataclass(frozen=True, slots=True)
class Unselect(CommandBody):
    name = "UNSELECT"


@dataclass(frozen=True, slots=True)
class Expunge(CommandBody):
    """EXPUNGE, or UID EXPUNGE (RFC 4315/9051) when ``uid_set`` is given."""

    uid_set: SequenceSet | None = None
    name = "EXPUNGE"

    @property
    def uid(self) -> bool:
        return self.uid_set is not None


# Search keys (RFC 9051 §6.4.4). The tree is normalised: FROM/TO/CC/BCC/SUBJECT become
# HeaderKey, flag keys become FlagKey, NEW becomes AND(\Recent, NOT \Seen).


@dataclass(frozen=True, slots=True)
class AllKey:
    pass


@dataclass(frozen=True, slots=True)
class AndKey:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class OrKey:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class NotKey:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class FlagKey:
    """Message has (``present``) or lacks the flag; keywords keep the client's spelling."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class HeaderKey:
    """Substring match on a header field; an empty ``value`` means "field present"."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class BodyKey:
    value: str


@dataclass(frozen=True, slots=True)
class TextKey:
    value: str


class DateField(enum.Enum):
    INTERNAL = "internal"
    SENT = "sent"


@dataclass(frozen=True, slots=True)
class DateKey:
    """BEFORE/ON/SINCE (internal date) and SENTBEFORE/SENTON/SENTSINCE (Date: header)."""

    field: DateField
    op: str
    date: date


@dataclass(frozen=True, slots=True)
class SizeKey:
    """``op`` is ``"LARGER"`` or ``"SMALLER"`` (strict comparison, RFC 9051 §6.4.4)."""

    op: str
    size: int


@dataclass(frozen=True, slots=True)
class SequenceKey:
    sequence_set: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """RFC 7162 §3.1.5: ``entry`` is the (name, type) pair, type in priv/shared/all."""

    modseq: int
    entry: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class WithinKey:
    """RFC 5032 OLDER/YOUNGER: ``older`` True for OLDER."""

    older: bool
    seconds: int


SearchKey = (
    AllKey
    | AndKey
    | OrKey
    | NotKey
    | FlagKey
    | HeaderKey
    | BodyKey
    | TextKey
    | DateKey
    | SizeKey
    | SequenceKey
    | ModSeqKey
    | WithinKey
)


@dataclass(frozen=True, slots=True)
class Search(CommandBody):
    """SEARCH / UID SEARCH.

    ``returns`` is None for a classic SEARCH (answer ``* SEARCH``); otherwise the ESEARCH
    RETURN options (RFC 4731/5182: MIN MAX ALL COUNT SAVE; RFC 5267: CONTEXT PARTIAL), with
    ``RETURN ()`` given as ``("ALL",)`` as RFC 4731 §3.1 requires. ``partial`` is the PARTIAL
    range as (low, high). ``charset`` is None when not specified.
    """

    uid: bool
    criteria: SearchKey
    charset: str | None = None
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    name = "SEARCH"


class FetchAtt(enum.StrEnum):
    """Fetch attributes without arguments (RFC 9051 §6.4.5, RFC 7162 MODSEQ)."""

    ENVELOPE = "ENVELOPE"
    FLAGS = "FLAGS"
    INTERNALDATE = "INTERNALDATE"
    RFC822 = "RFC822"
    RFC822_HEADER = "RFC822.HEADER"
    RFC822_SIZE = "RFC822.SIZE"
    RFC822_TEXT = "RFC822.TEXT"
    BODY = "BODY"
    BODYSTRUCTURE = "BODYSTRUCTURE"
    UID = "UID"
    MODSEQ = "MODSEQ"


@dataclass(frozen=True, slots=True)
class Section:
    """Body section (RFC 9051 §6.4.5 ``section-spec``).

    ``part`` is the part path (``(1, 2, 3)``; empty for the whole message). ``text`` is
    None, ``"HEADER"``, ``"HEADER.FIELDS"``, ``"HEADER.FIELDS.NOT"``, ``"TEXT"`` or ``"MIME"``
    (MIME only with a non-empty part). ``fields`` are upper-cased header names.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        spec = ".".join(map(str, self.part))
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
            if self.fields:
                spec += " (" + " ".join(self.fields) + ")"
        return spec


@dataclass(frozen=True, slots=True)
class FetchBody:
    """BODY[...] / BODY.PEEK[...] / BINARY[...] / BINARY.PEEK[...] with optional <partial>.

    ``partial`` is ``(origin, length)``. :meth:`response_name` gives the item name for the
    FETCH response: PEEK is dropped and only the origin of a partial is echoed (§7.5.2).
    """

    section: Section
    peek: bool = False
    binary: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> str:
        base = "BINARY" if self.binary else "BODY"
        name = f"{base}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name

    def __str__(self) -> str:
        base = ("BINARY" if self.binary else "BODY") + (".PEEK" if self.peek else "")
        name = f"{base}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}.{self.partial[1]}>"
        return name


@dataclass(frozen=True, slots=True)
class FetchBinarySize:
    """BINARY.SIZE[part] (RFC 3516)."""

    part: tuple[int, ...] = ()

    def response_name(self) -> str:
        return f"BINARY.SIZE[{'.'.join(map(str, self.part))}]"

    def __str__(self) -> str:
        return self.response_name()


FetchItem = FetchAtt | FetchBody | FetchBinarySize


@dataclass(frozen=True, slots=True)
class Fetch(CommandBody):
    """FETCH / UID FETCH; macros (ALL/FAST/FULL) are already expanded into ``items``.

    For UID FETCH the session must add UID to the response itself (RFC 9051 §6.4.9).
    ``changed_since`` and ``vanished`` are the RFC 7162 modifiers; the parser already
    rejects VANISHED without UID or CHANGEDSINCE (§3.2.6).
    """

    uid: bool
    sequence_set: SequenceSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None
    vanished: bool = False
    name = "FETCH"


class StoreMode(enum.Enum):
    REPLACE = ""
    ADD = "+"
    REMOVE = "-"


@dataclass(frozen=True, slots=True)
class Store(CommandBody):
    uid: bool
    sequence_set: SequenceSet
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool = False
    unchanged_since: int | None = None
    name = "STORE"


@dataclass(frozen=True, slots=True)
class Copy(CommandBody):
    uid: bool
    sequence_set: SequenceSet
    mailbox: str
    name = "COPY"


@dataclass(frozen=True, slots=True)
class Move(CommandBody):
    uid: bool
    sequence_set: SequenceSet
    mailbox: str
    name = "MOVE"


@dataclass(frozen=True, slots=True)
class SortCriterion:
    """RFC 5256 sort key (ARRIVAL CC DATE FROM SIZE SUBJECT TO, RFC 5957 DISPLAYFROM/DISPLAYTO)."""

    key: str
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class Sort(CommandBody):
    """SORT / UID SORT; ``returns`` are the ESORT RETURN options (RFC 5267) or None, as for
    :class:`Search`."""

    uid: bool
    criteria: tuple[SortCriterion, ...]
    charset: str
    search: SearchKey
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    name = "SORT"


@dataclass(frozen=True, slots=True)
class CancelUpdate(CommandBody):
    """CANCELUPDATE (RFC 5267 §4.3.5): stop the updates of the contexts named by these tags."""

    tags: tuple[str, ...]
    name = "CANCELUPDATE"


@dataclass(frozen=True, slots=True)
class Thread(CommandBody):
    """THREAD / UID THREAD (RFC 5256); ``algorithm`` is REFERENCES or ORDEREDSUBJECT."""

    uid: bool
    algorithm: str
    charset: str
    search: SearchKey
    name = "THREAD"


@dataclass(frozen=True, slots=True)
class Unknown(CommandBody):
    """A syntactically plausible command we do not implement; answer ``BAD``."""

    command: str
    name = "UNKNOWN"
