"""SEARCH / SORT / THREAD engine: semantics, lazy loading, robustness and speed."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import time as clock
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from random import Random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailserver.imap.protocol import encoder
from mailserver.imap.protocol.commands import (
    AllKey,
    AndKey,
    BodyKey,
    DateField,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SequenceKey,
    SizeKey,
    SortCriterion,
    TextKey,
    WithinKey,
)
from mailserver.imap.protocol.sequence import SequenceSet
from mailserver.imap.search import MessageView, SearchError, fold, search
from mailserver.imap.sort import sort
from mailserver.imap.thread import thread
from mailserver.store.mime import analyze, base_subject

T0 = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def message(headers: dict[str, str], body: bytes | str = b"hello\r\n", *, content: str = "") -> bytes:
    """A raw message: ``headers`` in order, then ``content`` (extra MIME headers) and ``body``."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + content
    data = body.encode() if isinstance(body, str) else body
    return head.encode("utf-8") + b"\r\n" + data


def view(
    raw: bytes,
    seq: int,
    *,
    uid: int | None = None,
    flags: Sequence[str] = (),
    internal: datetime = T0,
    modseq: int = 1,
) -> MessageView:
    return MessageView(seq, uid or seq * 10, modseq, frozenset(flags), len(raw), internal, analyze(raw))


class Box:
    """A mailbox of views plus a ``load_raw`` that counts its calls."""

    def __init__(self, raws: list[bytes], **per_seq: dict[int, object]) -> None:
        self.raw: dict[int, bytes] = {}
        self.views: list[MessageView] = []
        for seq, raw in enumerate(raws, 1):
            kwargs = {name: values[seq] for name, values in per_seq.items() if seq in values}
            v = view(raw, seq, **kwargs)  # type: ignore[arg-type]
            self.views.append(v)
            self.raw[v.uid] = raw
        self.loads: Counter[int] = Counter()

    async def load(self, v: MessageView) -> bytes:
        self.loads[v.seq] += 1
        return self.raw[v.uid]

    async def seqs(
        self,
        key: SearchKey,
        *,
        saved: SequenceSet | None = None,
        recent: set[int] | None = None,
        now: datetime | None = None,
    ) -> list[int]:
        found = await search(
            key,
            self.views,
            load_raw=self.load,
            largest_seq=len(self.views),
            largest_uid=max((v.uid for v in self.views), default=0),
            saved=saved,
            recent=recent or set(),
            now=now,
        )
        return [v.seq for v in found]


def seqset(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


# --------------------------------------------------------------------------- flags, sets, sizes, dates


@pytest.fixture
def flagged_box() -> Box:
    raws = [message({"Subject": f"m{i}"}, "x" * (i * 10)) for i in range(1, 7)]
    flags = {
        1: ["\\Seen"],
        2: ["\\Seen", "\\Flagged", "$Label1"],
        3: ["\\Deleted"],
        4: ["\\Answered", "urgent"],
        5: [],
        6: ["\\Seen", "\\Draft"],
    }
    return Box(raws, flags=flags, modseq={i: i * 5 for i in range(1, 7)})


async def test_flag_keys_and_boolean_nesting(flagged_box: Box) -> None:
    box = flagged_box
    assert await box.seqs(AllKey()) == [1, 2, 3, 4, 5, 6]
    assert await box.seqs(FlagKey("\\Seen")) == [1, 2, 6]
    assert await box.seqs(FlagKey("\\Seen", False)) == [3, 4, 5]
    assert await box.seqs(FlagKey("$label1")) == [2]  # keywords are case-insensitive
    assert await box.seqs(FlagKey("URGENT", False)) == [1, 2, 3, 5, 6]
    assert await box.seqs(OrKey(FlagKey("\\Deleted"), FlagKey("\\Draft"))) == [3, 6]
    assert await box.seqs(NotKey(OrKey(FlagKey("\\Seen"), FlagKey("\\Deleted")))) == [4, 5]
    nested = AndKey((NotKey(FlagKey("\\Flagged")), OrKey(FlagKey("\\Seen"), NotKey(FlagKey("\\Answered")))))
    assert await box.seqs(nested) == [1, 3, 5, 6]
    new = AndKey((FlagKey("\\Recent"), FlagKey("\\Seen", False)))  # NEW as the parser builds it
    assert await box.seqs(new, recent={40, 50, 60}) == [4, 5]
    assert await box.seqs(FlagKey("\\Recent", False), recent={40, 50, 60}) == [1, 2, 3]
    assert await box.seqs(NotKey(NotKey(AllKey()))) == [1, 2, 3, 4, 5, 6]
    assert sum(box.loads.values()) == 0


async def test_sizes_modseq_and_within(flagged_box: Box) -> None:
    box = flagged_box
    sizes = {v.seq: v.size for v in box.views}
    assert await box.seqs(SizeKey("LARGER", sizes[4])) == [5, 6]  # strict comparisons
    assert await box.seqs(SizeKey("SMALLER", sizes[2])) == [1]
    assert await box.seqs(ModSeqKey(15)) == [3, 4, 5, 6]
    assert await box.seqs(ModSeqKey(20, ("/flags/\\seen", "all"))) == [4, 5, 6]
    now = T0 + timedelta(hours=1)
    assert await box.seqs(WithinKey(True, 3599), now=now) == [1, 2, 3, 4, 5, 6]
    assert await box.seqs(WithinKey(True, 3600), now=now) == []  # exactly an hour: not older
    assert await box.seqs(WithinKey(False, 3600), now=now) == [1, 2, 3, 4, 5, 6]
    assert await box.seqs(WithinKey(False, 3599), now=now) == []
    assert await box.seqs(OrKey(WithinKey(True, 10), WithinKey(False, 10))) == [1, 2, 3, 4, 5, 6]
    assert sum(box.loads.values()) == 0


async def test_sequence_and_uid_sets(flagged_box: Box) -> None:
    box = flagged_box  # UIDs are 10, 20, ..., 60
    assert await box.seqs(SequenceKey(seqset("2:4"))) == [2, 3, 4]
    assert await box.seqs(SequenceKey(seqset("*"))) == [6]
    assert await box.seqs(SequenceKey(seqset("5:*,1"))) == [1, 5, 6]
    assert await box.seqs(SequenceKey(seqset("9:*"))) == [6]  # n:* above the top still means *:n
    assert await box.seqs(SequenceKey(seqset("7:9"))) == []
    assert await box.seqs(SequenceKey(seqset("15:35"), uid=True)) == [2, 3]
    assert await box.seqs(SequenceKey(seqset("55:*"), uid=True)) == [6]
    assert await box.seqs(SequenceKey(seqset("1000:*"), uid=True)) == [6]
    assert await box.seqs(SequenceKey(seqset("1:4294967295"), uid=True)) == [1, 2, 3, 4, 5, 6]
    # $ (RFC 5182) is the saved result, held as UIDs, in both UID and sequence-number keys.
    saved = SequenceSet.from_numbers([20, 50])
    assert await box.seqs(SequenceKey(seqset("$")), saved=saved) == [2, 5]
    assert await box.seqs(SequenceKey(seqset("$"), uid=True), saved=saved) == [2, 5]
    assert await box.seqs(SequenceKey(seqset("1,$")), saved=saved) == [1, 2, 5]
    assert await box.seqs(SequenceKey(seqset("$")), saved=None) == []
    assert await box.seqs(AndKey((SequenceKey(seqset("$")), FlagKey("\\Seen"))), saved=saved) == [2]
    assert sum(box.loads.values()) == 0


async def test_empty_mailbox() -> None:
    box = Box([])
    assert await box.seqs(SequenceKey(seqset("1:*"))) == []
    assert await box.seqs(BodyKey("x")) == []


async def test_internal_dates_compare_the_utc_day() -> None:
    paris = timezone(timedelta(hours=2))
    internal = {
        1: datetime(2024, 3, 10, 23, 59, 59, tzinfo=UTC),
        2: datetime(2024, 3, 11, 0, 0, tzinfo=UTC),
        3: datetime(2024, 3, 11, 0, 30, tzinfo=paris),  # 2024-03-10 22:30 UTC
        4: datetime(2024, 3, 9, 12, 0),  # naive: read as UTC
    }
    box = Box([message({"Subject": str(i)}) for i in range(1, 5)], internal=internal)

    def on(op: str, d: date) -> DateKey:
        return DateKey(DateField.INTERNAL, op, d)

    assert await box.seqs(on("ON", date(2024, 3, 10))) == [1, 3]
    assert await box.seqs(on("ON", date(2024, 3, 11))) == [2]
    assert await box.seqs(on("BEFORE", date(2024, 3, 11))) == [1, 3, 4]
    assert await box.seqs(on("SINCE", date(2024, 3, 11))) == [2]
    assert await box.seqs(on("SINCE", date(2024, 3, 10))) == [1, 2, 3]
    assert await box.seqs(on("BEFORE", date(2024, 3, 9))) == []
    assert sum(box.loads.values()) == 0


async def test_sent_dates_use_the_senders_own_day() -> None:
    raws = [
        message({"Date": "Mon, 11 Mar 2024 00:30:00 +0200", "Subject": "a"}),  # 10 Mar 22:30 UTC
        message({"Date": "Sun, 10 Mar 2024 23:59:59 -0500", "Subject": "b"}),  # 11 Mar 04:59 UTC
        message({"Subject": "no date"}),
        message({"Date": "not a date", "Subject": "bad"}),
    ]
    box = Box(raws)

    def sent(op: str, d: date) -> DateKey:
        return DateKey(DateField.SENT, op, d)

    assert await box.seqs(sent("ON", date(2024, 3, 11))) == [1]
    assert await box.seqs(sent("ON", date(2024, 3, 10))) == [2]
    assert await box.seqs(sent("BEFORE", date(2024, 3, 11))) == [2]
    assert await box.seqs(sent("SINCE", date(2024, 3, 10))) == [1, 2]
    assert await box.seqs(NotKey(sent("SINCE", date(1970, 1, 1)))) == [3, 4]
    assert sum(box.loads.values()) == 0


def test_unknown_sort_key_and_algorithm_are_errors() -> None:
    with pytest.raises(SearchError):
        sort([SortCriterion("COLOUR")], [])
    with pytest.raises(SearchError):
        thread("XYZZY", [])


async def test_bad_date_op_raises() -> None:
    with pytest.raises(SearchError):
        await Box([]).seqs(DateKey(DateField.INTERNAL, "AFTER", date(2024, 1, 1)))


# --------------------------------------------------------------------------- headers and bodies

ACCENTED = [
    message(
        {
            "From": "=?utf-8?q?Ren=C3=A9e_Lef=C3=A8vre?= <renee@hopital.example>",
            "To": "Dr House <house@clinique.example>",
            "Subject": "=?iso-8859-1?q?R=E9sultats_d'analyse?=",
            "X-Priority": "1 (Highest)",
            "Message-ID": "<abc@hopital.example>",
        }
    ),
    message(
        {
            "From": "bob@example.org",
            "To": "=?utf-8?b?w4lsb8Ovc2U=?= <eloise@example.org>",
            "Cc": "Ａｌｉｃｅ <alice@example.org>",
            "Subject": "Réunion de service",
            "X-Mailer": "test\r\n =?utf-8?q?c=C5=93ur?=",
        }
    ),
    message({"From": "carol@example.org", "Subject": "plain", "Bcc": "secret@example.org"}),
]


async def test_cached_headers_decoded_and_folded() -> None:
    box = Box(ACCENTED)
    assert await box.seqs(HeaderKey("FROM", "renée")) == [1]
    assert await box.seqs(HeaderKey("FROM", "RENÉE LEFÈVRE")) == [1]
    assert await box.seqs(HeaderKey("FROM", "rene\u0301e")) == [1]  # decomposed query, composed text
    assert await box.seqs(HeaderKey("FROM", "renee lef")) == []  # accents stay significant
    assert await box.seqs(HeaderKey("SUBJECT", "RÉSULTATS D'")) == [1]
    assert await box.seqs(HeaderKey("SUBJECT", "réunion")) == [2]
    assert await box.seqs(HeaderKey("TO", "éloïse")) == [2]
    assert await box.seqs(HeaderKey("TO", "@")) == [1, 2]
    assert await box.seqs(HeaderKey("CC", "alice <")) == [2]  # full-width letters fold (NFKC)
    assert await box.seqs(HeaderKey("BCC", "secret")) == [3]
    assert await box.seqs(HeaderKey("BCC", "")) == [3]  # empty value: field present
    assert await box.seqs(HeaderKey("CC", "")) == [2]
    assert sum(box.loads.values()) == 0


async def test_other_headers_load_only_when_needed() -> None:
    box = Box(ACCENTED)
    assert await box.seqs(HeaderKey("X-PRIORITY", "highest")) == [1]
    assert await box.seqs(HeaderKey("X-MAILER", "CŒUR")) == [2]  # folded and RFC 2047 decoded
    assert await box.seqs(HeaderKey("MESSAGE-ID", "")) == [1]
    assert await box.seqs(HeaderKey("X-MAILER", "test c")) == [2]  # unfolded
    assert box.loads == Counter({1: 4, 2: 4, 3: 4})
    box.loads.clear()
    assert await box.seqs(AndKey((HeaderKey("X-PRIORITY", ""), FlagKey("\\Seen")))) == []
    assert (
        await box.seqs(AndKey((HeaderKey("SUBJECT", "plain"), HeaderKey("BCC", ""), HeaderKey("X-A", ""))))
        == []
    )
    assert box.loads == Counter({3: 1})


async def test_header_search_sees_every_occurrence() -> None:
    raw = b"Received: from a.example\r\nReceived: from b.example\r\n by c.example\r\nSubject: s\r\n\r\nx"
    box = Box([raw])
    assert await box.seqs(HeaderKey("RECEIVED", "b.example by c")) == [1]  # unfolded: CRLF removed
    assert await box.seqs(HeaderKey("RECEIVED", "a.example")) == [1]
    assert await box.seqs(HeaderKey("RECEIVED", "from a.example received")) == []


def test_fold() -> None:
    assert fold("ÉCOLE") == "école"
    assert fold("Straße") == "strasse"
    assert fold("ﬁchier") == "fichier"
    assert fold("ℌ") == "h"
    assert fold("e\u0301") == fold("é")
    assert fold("MiXeD") == "mixed"


def _multipart() -> bytes:
    """mixed( alternative( plain-QP-latin1, html-base64-utf8 ), pdf-base64, rfc822( plain ) )."""
    qp = "Le patient pr=E9sente une fi=\r\nevre l=E9g=E8re.\r\n"
    html = base64.encodebytes("<p>Électrocardiogramme normal — cœur</p>".encode()).decode()
    pdf = base64.encodebytes(b"%PDF-1.4 secretword inside an attachment").decode()
    inner = (
        "From: labo@example.org\r\nSubject: =?utf-8?q?Compte_rendu_h=C3=A9matologie?=\r\n\r\n"
        "Plaquettes normales.\r\n"
    )
    return (
        "From: doc@example.org\r\nSubject: dossier\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        "preamble mentions preamblemarker\r\n"
        "--outer\r\n"
        'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        "--inner\r\n"
        "Content-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        f"{qp}"
        "--inner\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
        f"{html}"
        "--inner--\r\n"
        "--outer\r\n"
        "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{pdf}"
        "--outer\r\n"
        "Content-Type: message/rfc822\r\n\r\n"
        f"{inner}"
        "--outer--\r\n"
    ).encode("latin-1")


async def test_body_and_text_in_encoded_nested_parts() -> None:
    single_b64 = message(
        {"Subject": "b64", "MIME-Version": "1.0"},
        base64.encodebytes("Ordonnance: amoxicilline 1 g, réévaluer à J3.".encode()),
        content="Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n",
    )
    box = Box([_multipart(), single_b64, message({"Subject": "fièvre"}, "nothing here")])
    assert await box.seqs(BodyKey("présente une fievre légère")) == [1]  # QP soft break, Latin-1
    assert await box.seqs(BodyKey("ÉLECTROCARDIOGRAMME normal — CŒUR")) == [1]  # base64 HTML
    assert await box.seqs(BodyKey("secretword")) == []  # non-text parts are skipped
    assert await box.seqs(BodyKey("preamblemarker")) == []
    assert await box.seqs(BodyKey("plaquettes")) == [1]  # inside message/rfc822
    assert await box.seqs(BodyKey("hématologie")) == [1]  # encapsulated header, decoded
    assert await box.seqs(BodyKey("RÉÉVALUER À J3")) == [2]
    assert await box.seqs(BodyKey("dossier")) == []  # BODY excludes the top-level header
    assert await box.seqs(TextKey("dossier")) == [1]
    assert await box.seqs(TextKey("doc@example")) == [1]
    assert await box.seqs(TextKey("application/pdf")) == []  # part headers are not text
    assert await box.seqs(TextKey("mime-version")) == [1, 2]
    assert await box.seqs(TextKey("fièvre")) == [3]
    assert await box.seqs(TextKey("amoxicilline")) == [2]
    assert await box.seqs(BodyKey("")) == [1, 2, 3]


async def test_load_raw_is_lazy_and_single() -> None:
    pdf_only = message(
        {"Subject": "scan"},
        base64.encodebytes(b"%PDF"),
        content="Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n",
    )
    raws = [message({"Subject": f"s{i}"}, f"body {i} common") for i in range(1, 6)] + [pdf_only]
    box = Box(raws, flags={2: ["\\Seen"], 4: ["\\Seen"]})

    async def loads(key: SearchKey) -> tuple[list[int], Counter[int]]:
        box.loads.clear()
        found = await box.seqs(key)
        return found, Counter(box.loads)

    # Cheap keys first, whatever the order the client wrote them in.
    assert await loads(AndKey((BodyKey("common"), FlagKey("\\Seen")))) == ([2, 4], Counter({2: 1, 4: 1}))
    # Several body keys share a single load per message.
    key = AndKey((BodyKey("body"), OrKey(BodyKey("3"), TextKey("s5"))))
    assert await loads(key) == ([3, 5], Counter({1: 1, 2: 1, 3: 1, 4: 1, 5: 1}))
    # A cached-header hit decides OR and TEXT without loading.
    found, counted = await loads(OrKey(BodyKey("zzz"), HeaderKey("SUBJECT", "s")))
    assert found == [1, 2, 3, 4, 5, 6]
    assert counted == Counter()
    assert await loads(TextKey("S4")) == ([4], Counter({1: 1, 2: 1, 3: 1, 5: 1, 6: 1}))
    # NOT on an undecided key still needs the body, but decided messages are skipped.
    assert await loads(NotKey(OrKey(FlagKey("\\Seen"), BodyKey("body 1")))) == (
        [3, 5, 6],
        Counter({1: 1, 3: 1, 5: 1}),
    )
    # A message without text parts cannot match BODY: no load.
    assert (await loads(BodyKey("PDF")))[1][6] == 0
    assert await loads(AndKey((FlagKey("\\Flagged"), TextKey("x")))) == ([], Counter())


async def test_flag_and_date_search_costs_linear_cpu_and_loads_nothing() -> None:
    """Flags, dates and sizes are answered from the index alone (``load_raw`` is never called), and
    the cost grows with the folder, no faster: 50,000 messages cost at most 40 times the CPU of 5,000
    (linear is 10; anything quadratic is 100). CPU time of this process, so other load does not count;
    how fast it is in absolute terms is a bench question."""
    meta = analyze(message({"Subject": "x"}))
    days = [T0 - timedelta(hours=i) for i in range(24 * 30)]
    flag_sets = [
        frozenset(),
        frozenset({"\\Seen"}),
        frozenset({"\\Seen", "\\Flagged"}),
        frozenset({"\\Deleted"}),
    ]
    key = AndKey(
        (
            FlagKey("\\Seen"),
            NotKey(FlagKey("\\Deleted")),
            DateKey(DateField.INTERNAL, "SINCE", date(2024, 3, 1)),
            OrKey(FlagKey("\\Flagged", False), SizeKey("LARGER", 1003)),
        )
    )

    async def never(v: MessageView) -> bytes:
        raise AssertionError("no load expected")

    async def cpu(count: int) -> float:
        views = [
            MessageView(i, i + 100, i, flag_sets[i % 4], 1000 + i % 7, days[i % len(days)], meta)
            for i in range(1, count + 1)
        ]
        best = float("inf")
        for _ in range(3):
            start = clock.process_time()
            found = await search(
                key,
                views,
                load_raw=never,
                largest_seq=count,
                largest_uid=count + 100,
                saved=None,
                recent=set(),
            )
            best = min(best, clock.process_time() - start)
        assert len(found) == sum(
            1
            for v in views
            if "\\Seen" in v.flags
            and v.internal_date >= datetime(2024, 3, 1, tzinfo=UTC)
            and ("\\Flagged" not in v.flags or v.size > 1003)
        )
        return max(best, 1e-4)

    small, large = await cpu(5_000), await cpu(50_000)
    assert large / small < 40, f"5,000: {small * 1000:.1f} ms, 50,000: {large * 1000:.1f} ms"


# --------------------------------------------------------------------------- SORT


def _sort_box() -> list[MessageView]:
    specs = [
        # (From, To, Cc, Subject, Date, internal hour, size)
        ('"Zoé" <b@x.org>', "c@x.org", "", "Re: Beta", "Mon, 04 Mar 2024 10:00:00 +0000", 5, 30),
        ("a@x.org", '"Yves" <z@x.org>', "k@x.org", "alpha", "Mon, 04 Mar 2024 09:00:00 -0200", 3, 10),
        ("C@x.org", "a@x.org", "", "[list] Fwd: ALPHA", "", 4, 20),
        ('"alain" <d@x.org>', "b@x.org", "j@x.org", "gamma", "Mon, 04 Mar 2024 10:00:00 +0000", 1, 30),
    ]
    views = []
    for seq, (frm, to, cc, subject, sent, hour, size) in enumerate(specs, 1):
        headers = {"From": frm, "To": to, "Subject": subject}
        if cc:
            headers["Cc"] = cc
        if sent:
            headers["Date"] = sent
        v = view(message(headers), seq, internal=datetime(2024, 3, 4, hour, 0, tzinfo=UTC))
        views.append(replace(v, size=size))
    return views


@pytest.mark.parametrize(
    ("key", "ascending", "descending"),
    [
        ("ARRIVAL", [4, 2, 3, 1], [1, 3, 2, 4]),
        # 3 has no Date: its internal 04:00 counts; 2 is 11:00 UTC; 1 and 4 tie (10:00).
        ("DATE", [3, 1, 4, 2], [2, 1, 4, 3]),
        ("FROM", [2, 1, 3, 4], [4, 3, 1, 2]),  # addr-mailbox a, b, C (case-folded), d
        ("TO", [3, 4, 1, 2], [2, 1, 4, 3]),
        ("CC", [1, 3, 4, 2], [2, 4, 1, 3]),  # a missing Cc sorts as ""
        ("SUBJECT", [2, 3, 1, 4], [4, 1, 2, 3]),  # base subjects alpha, alpha, beta, gamma
        ("SIZE", [2, 3, 1, 4], [1, 4, 3, 2]),
        ("DISPLAYFROM", [2, 4, 3, 1], [1, 3, 4, 2]),  # a@x.org, alain, c@x.org, zoé
        ("DISPLAYTO", [3, 4, 1, 2], [2, 1, 4, 3]),  # a@, b@, c@, yves
    ],
)
def test_sort_each_key_and_reverse(key: str, ascending: list[int], descending: list[int]) -> None:
    views = _sort_box()
    assert [v.seq for v in sort([SortCriterion(key)], views)] == ascending
    # REVERSE flips the key but ties keep ascending sequence numbers (RFC 5256 §3).
    assert [v.seq for v in sort([SortCriterion(key, reverse=True)], views[::-1])] == descending


def test_sort_ties_and_multiple_keys() -> None:
    views = _sort_box()

    def seqs(criteria: list[SortCriterion]) -> list[int]:
        return [v.seq for v in sort(criteria, views[::-1])]

    assert seqs([SortCriterion("SUBJECT")]) == [2, 3, 1, 4]  # tie alpha/alpha: sequence order
    assert seqs([SortCriterion("SUBJECT", True)]) == [4, 1, 2, 3]  # tie still ascending
    assert seqs([SortCriterion("SIZE"), SortCriterion("ARRIVAL", True)]) == [2, 3, 1, 4]
    assert seqs([SortCriterion("SIZE", True), SortCriterion("ARRIVAL")]) == [4, 1, 3, 2]
    assert seqs([SortCriterion("DATE", True)]) == [2, 1, 4, 3]
    assert seqs([SortCriterion("SUBJECT"), SortCriterion("DATE", True)]) == [2, 3, 1, 4]
    assert seqs([]) == [1, 2, 3, 4]


# --------------------------------------------------------------------------- THREAD


def _thread_views(specs: list[tuple[int, dict[str, str]]]) -> list[MessageView]:
    views = []
    for minute, (seq, headers) in enumerate(specs):
        full = {
            "Date": (datetime(2024, 3, 4, 8, 0, tzinfo=UTC) + timedelta(minutes=minute)).strftime(
                "%a, %d %b %Y %H:%M:%S +0000"
            ),
            **headers,
        }
        views.append(view(message(full), seq))
    return views


def rendered(nodes: list) -> bytes:
    return encoder.thread(nodes)


def test_references_rfc5256_response_example() -> None:
    """Reproduces the RFC 5256 §4 example response (2)(3 6 (4 23)(44 7 96))."""
    views = _thread_views(
        [
            (2, {"Message-ID": "<2@x>", "Subject": "other"}),
            (3, {"Message-ID": "<3@x>", "Subject": "topic"}),
            (6, {"Message-ID": "<6@x>", "Subject": "Re: topic", "References": "<3@x>"}),
            (4, {"Message-ID": "<4@x>", "Subject": "Re: topic", "In-Reply-To": "<6@x>"}),
            (44, {"Message-ID": "<44@x>", "Subject": "Re: topic", "References": "<3@x> <6@x>"}),
            (23, {"Message-ID": "<23@x>", "Subject": "Re: topic", "References": "<3@x> <6@x> <4@x>"}),
            (7, {"Message-ID": "<7@x>", "Subject": "Re: topic", "References": "<3@x> <6@x> <44@x>"}),
            (96, {"Message-ID": "<96@x>", "Subject": "Re: topic", "References": "<6@x> <44@x> <7@x>"}),
        ]
    )
    assert rendered(thread("REFERENCES", views)) == b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n"
    uids = thread("REFERENCES", views, use_uid=True)
    assert rendered(uids) == b"* THREAD (20)(30 60 (40 230)(440 70 960))\r\n"


def test_ordered_subject_rfc5256_shapes() -> None:
    views = _thread_views(
        [
            (1, {"Subject": "alpha"}),
            (3, {"Subject": "beta"}),
            (2, {"Subject": "Re: alpha"}),
            (5, {"Subject": "[list] ALPHA (fwd)"}),
            (4, {"Subject": "re: Beta"}),
            (6, {"Subject": "gamma"}),
        ]
    )
    assert rendered(thread("orderedsubject", views)) == b"* THREAD (1 (2)(5))(3 4)(6)\r\n"


def test_references_subject_merging_and_dummies() -> None:
    views = _thread_views(
        [
            (1, {"Message-ID": "<a@x>", "Subject": "Rapport"}),
            (2, {"Message-ID": "<b@x>", "Subject": "rapport"}),  # same base subject, not a reply
            (3, {"Message-ID": "<c@x>", "Subject": "Re: Bilan"}),
            (4, {"Message-ID": "<d@x>", "Subject": "Bilan"}),  # the non-reply holds the thread
            (5, {"Message-ID": "<e@x>", "Subject": "Re: rapport"}),
            (6, {"Message-ID": "<f@x>", "Subject": "x", "References": "<missing@x>"}),
            (7, {"Message-ID": "<g@x>", "Subject": "y", "References": "<gone@x>"}),
            (8, {"Message-ID": "<h@x>", "Subject": "y", "References": "<gone@x>"}),
            (9, {"Message-ID": "<i@x>", "Subject": ""}),
            (10, {"Message-ID": "<j@x>", "Subject": ""}),
        ]
    )
    expected = b"* THREAD ((1)(2)(5))(4 3)(6)((7)(8))(9)(10)\r\n"
    assert rendered(thread("REFERENCES", views)) == expected


def test_references_broken_graphs() -> None:
    views = _thread_views(
        [
            (1, {"Message-ID": "<loop1@x>", "References": "<loop2@x>", "Subject": "l"}),
            (2, {"Message-ID": "<loop2@x>", "References": "<loop1@x>", "Subject": "l2"}),
            (3, {"Message-ID": "<self@x>", "References": "<self@x> <self@x>", "Subject": "s"}),
            (4, {"Message-ID": "<dup@x>", "Subject": "d"}),
            (5, {"Message-ID": "<dup@x>", "Subject": "d2"}),  # duplicate ID: a distinct message
            (6, {"Message-ID": "<r@x>", "References": "<dup@x>", "Subject": "Re: d"}),
            (7, {"Subject": "no id", "References": "<dup@x> <ghost@x>"}),  # dummy mid-chain is pruned
            (8, {"Message-ID": "<deep@x>", "In-Reply-To": "junk <r@x> <zzz@x>", "Subject": "deep"}),
        ]
    )
    nodes = thread("REFERENCES", views)
    assert rendered(nodes) == b"* THREAD (2 1)(3)(4 (6 8)(7))(5)\r\n"  # the loop is cut where it closes
    assert sorted(_numbers(nodes)) == list(range(1, 9))


def test_long_chain_does_not_recurse() -> None:
    views = [
        view(message({"Message-ID": f"<{i}@x>", "References": f"<{i - 1}@x>", "Subject": "c"}), i)
        for i in range(1, 3001)
    ]
    nodes = thread("REFERENCES", views)
    assert len(nodes) == 1
    depth, node = 1, nodes[0]
    while node[1]:
        node, depth = node[1][0], depth + 1
    assert depth == 3000


def _numbers(nodes: list) -> list[int]:
    out, stack = [], list(nodes)
    while stack:
        number, children = stack.pop()
        if number is not None:
            out.append(number)
        else:
            assert children, "dummies always have children"
        stack.extend(children)
    return out


# --------------------------------------------------------------------------- properties

IDS = [f"<{c}@x>" for c in "abcdefgh"]
_message_spec = st.fixed_dictionaries(
    {
        "id": st.one_of(st.none(), st.sampled_from(IDS)),
        "refs": st.lists(st.sampled_from(IDS), max_size=5),
        "reply": st.one_of(st.none(), st.sampled_from(IDS)),
        "subject": st.sampled_from(["", "a", "Re: a", "b", "Fwd: b", "[x] c"]),
        "minute": st.integers(0, 5),
        "dated": st.booleans(),
    }
)


def _random_views(specs: list[dict]) -> list[MessageView]:
    views = []
    for seq, spec in enumerate(specs, 1):
        headers = {"Subject": spec["subject"]}
        if spec["id"]:
            headers["Message-ID"] = spec["id"]
        if spec["refs"]:
            headers["References"] = " ".join(spec["refs"])
        if spec["reply"]:
            headers["In-Reply-To"] = spec["reply"]
        if spec["dated"]:
            headers["Date"] = f"Mon, 04 Mar 2024 08:{spec['minute']:02d}:00 +0000"
        views.append(view(message(headers), seq, internal=T0 + timedelta(minutes=spec["minute"])))
    return views


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message_spec, max_size=12), st.sampled_from(["REFERENCES", "ORDEREDSUBJECT"]))
def test_thread_contains_each_message_once(specs: list[dict], algorithm: str) -> None:
    views = _random_views(specs)
    nodes = thread(algorithm, views)
    assert sorted(_numbers(nodes)) == [v.seq for v in views]
    assert rendered(nodes).startswith(b"* THREAD")
    assert sorted(_numbers(thread(algorithm, views, use_uid=True))) == [v.uid for v in views]


_criteria = st.lists(
    st.builds(
        SortCriterion,
        st.sampled_from(
            ["ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"]
        ),
        st.booleans(),
    ),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_message_spec, max_size=12), _criteria, st.randoms(use_true_random=False))
def test_sort_is_a_permutation(specs: list[dict], criteria: list[SortCriterion], rnd: Random) -> None:
    views = _random_views(specs)
    shuffled = list(views)
    rnd.shuffle(shuffled)
    out = sort(criteria, shuffled)
    assert sorted(v.seq for v in out) == [v.seq for v in views]
    assert [v.seq for v in out] == [v.seq for v in sort(criteria, views)]  # input order is irrelevant


# --------------------------------------------------------------------------- RFC 5256 keys vs a reference


def _ref_blob(s: str, i: int) -> int:
    """Length of a subj-blob (``"[" *BLOBCHAR "]" *WSP``) at ``i``, 0 if none."""
    if s[i : i + 1] != "[":
        return 0
    j = s.find("]", i + 1)
    if j < 0 or "[" in s[i + 1 : j]:
        return 0
    j += 1
    while s[j : j + 1] == " ":
        j += 1
    return j - i


def _ref_leader(s: str) -> int:
    """Length of a subj-leader (``(*subj-blob subj-refwd) / WSP``) at the start, 0 if none."""
    if s.startswith(" "):
        return 1
    i = 0
    while n := _ref_blob(s, i):
        i += n
    for token in ("re", "fwd", "fw"):
        if s[i : i + len(token)].lower() == token:
            j = i + len(token)
            while s[j : j + 1] == " ":
                j += 1
            for k in (j + _ref_blob(s, j), j):
                if s[k : k + 1] == ":":
                    return k + 1
    return 0


def ref_base_subject(subject: str) -> str:
    """RFC 5256 §2.1 steps 1-7, written from the ABNF one token at a time (no regular expressions)."""
    s = " ".join(subject.replace("\t", " ").replace("\r\n", " ").split(" "))
    while "  " in s:
        s = s.replace("  ", " ")
    while True:
        while s.endswith(" ") or s.lower().endswith("(fwd)"):  # (2)
            s = s[:-1] if s.endswith(" ") else s[:-5]
        while True:  # (3) (4) (5)
            before = s
            while n := _ref_leader(s):
                s = s[n:]
            n = _ref_blob(s, 0)
            if n and s[n:]:
                s = s[n:]
            if s == before:
                break
        if s[:5].lower() == "[fwd:" and s.endswith("]"):  # (6)
            s = s[5:-1]
            continue
        return s


def ref_casemap(text: str) -> bytes:
    """RFC 5051 §2: titlecase each character, decompose, compare the UTF-8 octets."""
    out = []
    for ch in text:
        title = ch.title()
        out.append(unicodedata.normalize("NFD", title if len(title) == 1 else ch))
    return "".join(out).encode("utf-8")


def _parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)  # type: ignore[return-value]


def _ref_first(raw: bytes, field: str) -> tuple[str, str] | None:
    """(addr-mailbox, display key) of the first address of ``field``, parsed by the standard library."""
    header = _parsed(raw)[field]
    if header is None or not header.groups:
        return None
    group = header.groups[0]
    if group.display_name is not None:  # a group: its start carries the group name
        return group.display_name, group.display_name
    address = group.addresses[0]
    return address.username, address.display_name or f"{address.username}@{address.domain}"


def ref_sort(key: str, raws: list[bytes], sizes: list[int], arrivals: list[datetime]) -> list[int]:
    def value(i: int) -> object:
        raw = raws[i]
        if key == "SUBJECT":
            subject = _parsed(raw)["Subject"]
            return ref_casemap(ref_base_subject(str(subject)) if subject is not None else "")
        if key in ("FROM", "TO", "CC", "DISPLAYFROM", "DISPLAYTO"):
            first = _ref_first(raw, key.removeprefix("DISPLAY"))
            return ref_casemap(first[key.startswith("DISPLAY")] if first else "")
        if key == "SIZE":
            return sizes[i]
        if key == "ARRIVAL":
            return arrivals[i]
        msg = _parsed(raw)
        return msg["Date"].datetime if msg["Date"] is not None else arrivals[i]

    return [i + 1 for i in sorted(range(len(raws)), key=lambda i: (value(i), i))]


RFC5256_SUBJECTS = [
    "a",
    "C",
    "b",
    "_",
    "[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)",
    "b (a)",
    "Re: [FWD: c]",
    "[xyz]",
]
"""Leaders, trailers, blobs and cases that the base subject and the collation must get right."""
_SUBJECTS = [
    *RFC5256_SUBJECTS,
    None,
    "=?utf-8?q?R=C3=A9union?= du lundi",
    "Reunion du lundi",
    "=?iso-8859-1?q?Re=3A_=C9cole?=",
    "RE:\t[liste]  Zoé",
    "Fwd: [Fwd: Re: [PATCH] x] (fwd)",
    "[a][b] Re [c]: ZZ",
    "re:re: Fw :  yy",
    "   ",
    "[Fwd: ]",
    "Eric",
    "Éric",
    "ǆungla",
]
_ADDRESSES = [
    "user@x.test",
    "Zoé <z@x.test>",
    "=?utf-8?q?=C3=89ric?= <eric@x.test>",
    '"Dupont, Jean" <jean@x.test>',
    "undisclosed-recipients:;",
    "team: Bob <bob@x.test>, carol@x.test;",
    '"quoted local"@x.test',
    "_under@x.test",
    "Alice Martin <ALICE@x.test>",
    "zed@x.test (a comment)",
    "éloïse@x.test",
    None,
]


def _corpus() -> tuple[list[bytes], list[int], list[datetime]]:
    raws, sizes, arrivals = [], [], []
    for i, subject in enumerate(_SUBJECTS):
        headers = {}
        for offset, field in enumerate(("From", "To", "Cc")):
            address = _ADDRESSES[(i * (offset + 2) + offset) % len(_ADDRESSES)]
            if address is not None:
                headers[field] = address
        if subject is not None:
            headers["Subject"] = subject
        if i % 4:
            headers["Date"] = f"Mon, 04 Mar 2024 {(i * 7) % 24:02d}:00:00 {'+0200' if i % 3 else '-0500'}"
        raws.append(message(headers))
        sizes.append((i * 37) % 5)
        arrivals.append(T0 + timedelta(minutes=(i * 11) % 7))
    return raws, sizes, arrivals


@pytest.mark.parametrize(
    "key", ["SUBJECT", "FROM", "TO", "CC", "DISPLAYFROM", "DISPLAYTO", "SIZE", "ARRIVAL", "DATE"]
)
def test_sort_matches_the_rfc_reference(key: str) -> None:
    raws, sizes, arrivals = _corpus()
    views = [
        replace(view(raw, seq, internal=arrivals[seq - 1]), size=sizes[seq - 1])
        for seq, raw in enumerate(raws, 1)
    ]
    expected = ref_sort(key, raws, sizes, arrivals)
    assert [v.seq for v in sort([SortCriterion(key)], views[::-1])] == expected
    assert len(set(expected)) == len(raws)


def test_sort_subject_rfc5256_examples() -> None:
    """Base subjects and the collation: letters (as uppercase) before "[" and "_" (RFC 5256 §2.1, §7)."""
    views = [view(message({"Subject": s}, "x" * seq), seq) for seq, s in enumerate(RFC5256_SUBJECTS, 1)]
    views.append(view(message({}), 9))
    assert [v.seq for v in sort([SortCriterion("SUBJECT")], views)] == [9, 1, 3, 5, 6, 2, 7, 8, 4]
    assert [v.seq for v in sort([SortCriterion("SUBJECT", True)], views)] == [4, 8, 2, 7, 6, 3, 5, 1, 9]
    both = [SortCriterion("SUBJECT"), SortCriterion("SIZE", True)]
    assert [v.seq for v in sort(both, views)] == [9, 1, 5, 3, 6, 7, 2, 8, 4]


def test_thread_groups_subjects_under_the_collation() -> None:
    views = [
        view(message({"Subject": "RÉUNION", "Date": "Mon, 04 Mar 2024 08:00:00 +0000"}), 1),
        view(message({"Subject": "Re: réunion", "Date": "Mon, 04 Mar 2024 09:00:00 +0000"}), 2),
        view(message({"Subject": "reunion", "Date": "Mon, 04 Mar 2024 10:00:00 +0000"}), 3),
    ]
    assert rendered(thread("ORDEREDSUBJECT", views)) == b"* THREAD (1 2)(3)\r\n"
    assert rendered(thread("REFERENCES", views)) == b"* THREAD (1 2)(3)\r\n"


@pytest.mark.parametrize(
    ("field", "header"),
    [
        ("FROM", "<user-from (comment)@ (comment) domain.org>"),
        ("FROM", "user-from@domain.org (RealFrom)"),
        ("TO", '"Real To" <user-from@\r\n domain.org>'),
        ("CC", "group: =?utf-8?q?R=C3=A9al?= <user-from@domain.org>;"),
        ("BCC", "<user-from@domain.org>"),
    ],
)
async def test_address_search_matches_the_envelope_address(field: str, header: str) -> None:
    """RFC 9051 §6.4.4: FROM/TO/CC/BCC search the envelope's address, not only the header's text."""
    box = Box([message({field.title(): header}), message({field.title(): "other@domain.org"})])
    assert await box.seqs(HeaderKey(field, "user-from@domain.org")) == [1]
    assert await box.seqs(HeaderKey(field, "USER-FROM@DOMAIN")) == [1]
    assert await box.seqs(HeaderKey(field, "domain.org")) == [1, 2]
    assert sum(box.loads.values()) == 0


async def test_address_search_sees_decoded_names_and_groups() -> None:
    raw = message(
        {"To": "équipe: =?utf-8?q?Ren=C3=A9e?= <r@x.test>, b@x.test;", "From": "=?utf-8?q?Zo=C3=A9?= <z@x>"}
    )
    box = Box([raw])
    assert await box.seqs(HeaderKey("TO", "équipe")) == [1]
    assert await box.seqs(HeaderKey("TO", "renée <r@x.test>")) == [1]
    assert await box.seqs(HeaderKey("FROM", "zoé <z@x>")) == [1]
    assert await box.seqs(HeaderKey("FROM", "b@x.test")) == []


_SUBJECT_TOKENS = [
    "re",
    "RE",
    "Fw",
    "fwd",
    ":",
    " ",
    "  ",
    "\t",
    "[",
    "]",
    "[x]",
    "(fwd)",
    "(FWD)",
    "[fwd:",
    "a",
    "é",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_SUBJECT_TOKENS), max_size=12).map("".join))
def test_base_subject_is_exactly_rfc5256(subject: str) -> None:
    """RFC 5256 §2.1: "All servers ... MUST use exactly this algorithm"."""
    assert base_subject(subject)[0] == ref_base_subject(subject)


@pytest.mark.parametrize("key", ["SUBJECT", "FROM", "TO", "CC", "DISPLAYFROM", "DISPLAYTO"])
async def test_messages_analysed_before_the_cached_keys(key: str) -> None:
    """Metas stored by earlier versions (no cached sort keys or address texts, lowercase base
    subjects) sort, thread and search the same way."""
    raws = _corpus()[0]
    views = [view(raw, seq) for seq, raw in enumerate(raws, 1)]
    old = []
    for v in views:
        headers = {k: x for k, x in v.meta["headers"].items() if k not in ("sort", "addresses")}
        headers["base_subject"] = headers["base_subject"].lower()
        old.append(replace(v, meta={**v.meta, "headers": headers}))
    assert [v.seq for v in sort([SortCriterion(key)], old)] == [
        v.seq for v in sort([SortCriterion(key)], views)
    ]
    assert rendered(thread("ORDEREDSUBJECT", old)) == rendered(thread("ORDEREDSUBJECT", views))
    if key in ("FROM", "TO", "CC"):
        for needle in ("x.test", "éric <", "team", "quoted local"):
            found = await search(
                HeaderKey(key, needle),
                old,
                load_raw=Box([]).load,
                largest_seq=99,
                largest_uid=99,
                saved=None,
                recent=set(),
            )
            assert [v.seq for v in found] == await Box(raws).seqs(HeaderKey(key, needle))
