"""SORT, SORT=DISPLAY, ESORT and SEARCH/SORT contexts (RFC 5256, 5957, 5267) over a real connection."""

from __future__ import annotations

from typing import Any

from tests.imap.conftest import MARTIN, IMAPEnv, running
from tests.imap.helpers import Client
from tests.imap.test_search_engine import RFC5256_SUBJECTS


def raw(subject: str | None, **headers: str) -> bytes:
    fields = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    if subject is not None:
        fields += f"Subject: {subject}\r\n"
    return f"{fields}\r\nbody\r\n".encode()


async def selected(imap: IMAPEnv, messages: list[bytes]) -> Client:
    for data in messages:
        await imap.deliver(data)
    c = await imap.connect()
    await c.ok("SELECT INBOX")
    return c


async def test_sort_subject_uses_the_base_subject_and_the_collation(imap: IMAPEnv) -> None:
    """RFC 5256 §2.1 base subject; §7 collation: letters (uppercase-folded) sort before "[" and "_"."""
    c = await selected(imap, [raw(s) for s in RFC5256_SUBJECTS] + [raw(None)])
    assert (await c.ok("SORT (SUBJECT) US-ASCII ALL"))[0] == "* SORT 9 1 3 5 6 2 7 8 4"
    assert (await c.ok("SORT (REVERSE SUBJECT) UTF-8 ALL"))[0] == "* SORT 4 8 2 7 6 3 5 1 9"
    assert (await c.ok("THREAD ORDEREDSUBJECT UTF-8 ALL"))[0] == "* THREAD (1)(2 7)(3 5)(4)(6)(8)(9)"
    await c.close()


async def test_sort_addresses_by_first_mailbox(imap: IMAPEnv) -> None:
    """RFC 5256 §3: CC/FROM/TO sort on the addr-mailbox of the first address; none sorts first."""
    c = await selected(
        imap,
        [
            raw("1", From="zed@x.test", Cc='"Aaron" <_low@x.test>, aaron@x.test'),
            raw("2", From="Bob <bob@x.test>", Cc="Zoé <mike@x.test>"),
            raw("3", From="=?utf-8?q?=C3=89ric?= <eric@x.test>"),
            raw("4", From="alice@x.test", Cc="team: zed@x.test;"),
            raw("5", From='"quoted local"@x.test', Cc="<@relay.test:Bob@x.test>"),
        ],
    )
    assert (await c.ok("SORT (CC) UTF-8 ALL"))[0] == "* SORT 3 5 2 4 1"  # "", BOB, MIKE, TEAM, _LOW
    assert (await c.ok("SORT (FROM) UTF-8 ALL"))[0] == "* SORT 4 2 3 5 1"  # ALICE BOB ERIC QUOTED ZED
    assert (await c.ok("UID SORT (REVERSE CC) UTF-8 ALL"))[0] == "* SORT 1 4 2 5 3"
    await c.close()


async def test_sort_display(imap: IMAPEnv) -> None:
    """RFC 5957: SORT=DISPLAY is advertised; the display name, else the address, decoded and collated."""
    c = await selected(
        imap,
        [
            raw("1", From="Zoé <a@x.test>", To="b@x.test"),
            raw("2", From="=?utf-8?q?=C3=89ric?= <z@x.test>", To='"Yves" <a@x.test>'),
            raw("3", From="eric@x.test", To="undisclosed-recipients:;"),
            raw("4", From="Alain <y@x.test>"),
        ],
    )
    caps = (await c.ok("CAPABILITY"))[0].split()
    assert "SORT=DISPLAY" in caps and "SORT" in caps
    assert (await c.ok("SORT (DISPLAYFROM) UTF-8 ALL"))[
        0
    ] == "* SORT 4 3 2 1"  # ALAIN, ERIC@X.TEST, E\u0301RIC, ZOE\u0301
    assert (await c.ok("SORT (DISPLAYTO) UTF-8 ALL"))[0] == "* SORT 4 1 3 2"  # "", B@, UNDISCLOSED, YVES
    await c.close()


async def test_search_address_keys_match_the_envelope(imap: IMAPEnv) -> None:
    """RFC 9051 §6.4.4: FROM/TO/CC/BCC "contain the specified string in the envelope structure's field"."""
    c = await selected(
        imap,
        [
            raw("1", From="user-from@domain.org", To="user-to@domain.org", Cc="user-cc@domain.org"),
            raw("2", From="RealFrom <user-from@domain.org>", To="RealTo <user-to@domain.org>"),
            raw("3", From="<user-from (comment)@ (comment) domain.org>", To="<user-to@\r\n domain.org>"),
            raw("4", From="user-from@domain.org (RealFrom)", Bcc="user-bcc@domain.org"),
            raw("5", To="groupname: groupuser1@domain.org, =?utf-8?q?R=C3=A9al?= <g2@domain.org>;"),
        ],
    )
    assert (await c.ok("SEARCH FROM user-from@domain.org"))[0] == "* SEARCH 1 2 3 4"
    assert (await c.ok("SEARCH TO user-to@domain.org"))[0] == "* SEARCH 1 2 3"
    assert (await c.ok("SEARCH FROM realfrom"))[0] == "* SEARCH 2 4"
    assert (await c.ok("SEARCH FROM ser-fro"))[0] == "* SEARCH 1 2 3 4"
    assert (await c.ok("SEARCH TO groupname"))[0] == "* SEARCH 5"
    assert (await c.ok('SEARCH TO "réal <g2@"'))[0] == "* SEARCH 5"
    assert (await c.ok("SEARCH BCC user-bcc@domain.org"))[0] == "* SEARCH 4"
    assert (await c.ok("SEARCH CC nobody"))[0] == "* SEARCH"
    await c.close()


async def test_esort_return_options(imap: IMAPEnv) -> None:
    """RFC 5267 §3: SORT RETURN answers ESEARCH; MIN/MAX are the first/last sorted, ALL in sort order
    with ascending ranges only (§3.2); RETURN () means ALL (§3.3)."""
    c = await selected(
        imap, [raw(s, From=f) for s, f in [("c", "a@x"), ("a", "b@x"), ("b", "c@x"), ("d", "d@x")]]
    )
    assert "ESORT" in (await c.ok("CAPABILITY"))[0].split()
    lines = await c.ok("SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL")
    assert lines[0] == f'* ESEARCH (TAG "{c.tag_of(lines)}") MIN 2 MAX 4 COUNT 4 ALL 2:3,1,4'
    lines = await c.ok("SORT RETURN () (REVERSE FROM) UTF-8 ALL")
    assert lines[0] == f'* ESEARCH (TAG "{c.tag_of(lines)}") ALL 4,3,2,1'
    lines = await c.ok("UID SORT RETURN (COUNT) (SUBJECT) UTF-8 SUBJECT nothing")
    assert lines[0] == f'* ESEARCH (TAG "{c.tag_of(lines)}") UID COUNT 0'
    lines = await c.ok("SORT RETURN (MIN) (ARRIVAL) US-ASCII 2:4")
    assert lines[0] == f'* ESEARCH (TAG "{c.tag_of(lines)}") MIN 2'
    assert (await c.ok("SORT (SUBJECT) UTF-8 ALL"))[0] == "* SORT 2 3 1 4"  # plain SORT unchanged
    await c.close()


async def test_partial_results(imap: IMAPEnv) -> None:
    """RFC 5267 §4.4: PARTIAL lo:hi returns that window of the (sorted) results, NIL past the end."""
    c = await selected(imap, [raw(s) for s in "edcba"])
    for command, data in [
        ("SEARCH RETURN (PARTIAL 1:1) ALL", "PARTIAL (1:1 1)"),
        ("SEARCH RETURN (PARTIAL 2:4) ALL", "PARTIAL (2:4 2:4)"),
        ("SEARCH RETURN (PARTIAL 4:2) ALL", "PARTIAL (2:4 2:4)"),
        ("SEARCH RETURN (PARTIAL 1:6) ALL", "PARTIAL (1:6 1:5)"),
        ("SEARCH RETURN (PARTIAL 6:9) ALL", "PARTIAL (6:9 NIL)"),
        ("UID SEARCH RETURN (COUNT PARTIAL 2:3) NOT 1", "UID COUNT 4 PARTIAL (2:3 3:4)"),
        ("SORT RETURN (PARTIAL 2:4) (SUBJECT) UTF-8 ALL", "PARTIAL (2:4 4,3,2)"),
        ("UID SORT RETURN (PARTIAL 1:2 MIN) (REVERSE SUBJECT) UTF-8 ALL", "UID MIN 1 PARTIAL (1:2 1:2)"),
    ]:
        lines = await c.ok(command)
        assert lines[0] == f'* ESEARCH (TAG "{c.tag_of(lines)}") {data}', command
    for bogus in ("PARTIAL 1", "PARTIAL 1:*", "PARTIAL *:1", "PARTIAL 1:2 ALL"):
        assert (await c.command(f"SEARCH RETURN ({bogus}) ALL"))[-1].split()[1] == "BAD"
    await c.close()


def esearch(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("* ESEARCH")]


async def tagged(c: Client, tag: str, command: str) -> list[str]:
    await c.send(f"{tag} {command}\r\n")
    return await c.until(tag)


async def test_search_context_updates(imap: IMAPEnv) -> None:
    """RFC 5267 §4.3: RETURN (UPDATE) sends ADDTO/REMOVEFROM as flags change, messages arrive or go."""
    c = await selected(imap, [raw(f"m{i}") for i in range(1, 7)])
    caps = (await c.ok("CAPABILITY"))[0].split()
    assert "CONTEXT=SEARCH" in caps and "CONTEXT=SORT" in caps
    assert esearch(await tagged(c, "S1", "SEARCH RETURN (UPDATE) SEEN")) == ['* ESEARCH (TAG "S1")']
    lines = await c.ok("STORE 1,2,5 +FLAGS (\\Seen)")
    assert esearch(lines) == ['* ESEARCH (TAG "S1") ADDTO (0 1:2,5)']
    assert lines.index(esearch(lines)[0]) == 3  # after the three FETCH responses
    assert esearch(await c.ok("STORE 1,2 -FLAGS.SILENT (\\Seen)")) == [
        '* ESEARCH (TAG "S1") REMOVEFROM (0 1:2)'
    ]
    assert esearch(await c.ok("FETCH 3 BODY[]")) == ['* ESEARCH (TAG "S1") ADDTO (0 3)']  # implicit \Seen
    await c.ok("STORE 3:6 +FLAGS.SILENT (\\Deleted)")
    lines = await c.ok("EXPUNGE")
    assert lines[:5] == ['* ESEARCH (TAG "S1") REMOVEFROM (0 3,5)', *(f"* {n} EXPUNGE" for n in (6, 5, 4, 3))]
    # A UID context, changes by another session, a new message.
    assert esearch(await tagged(c, "U1", "UID SEARCH RETURN (UPDATE COUNT) UNSEEN")) == [
        '* ESEARCH (TAG "U1") UID COUNT 2'
    ]
    other = await imap.connect()
    await other.ok("SELECT INBOX")
    await other.ok("STORE 1 +FLAGS (\\Seen)")
    await imap.deliver(raw("m7"))
    lines = await c.ok("NOOP")
    assert esearch(lines) == [
        '* ESEARCH (TAG "S1") ADDTO (0 1)',
        '* ESEARCH (TAG "U1") UID REMOVEFROM (0 1) ADDTO (0 7)',
    ]
    assert lines.index("* 3 EXISTS") < lines.index(esearch(lines)[0])  # ADDTO after EXISTS (§4.3.3)
    # Tag reuse is BAD while the context lives (§4.3); CANCELUPDATE ends it (§4.3.5).
    assert (await tagged(c, "S1", "SEARCH RETURN (UPDATE) ALL"))[-1].startswith("S1 BAD")
    assert (await c.ok('CANCELUPDATE "S1"'))[-1].split()[1] == "OK"
    assert esearch(await c.ok("STORE 2 +FLAGS (\\Seen)")) == ['* ESEARCH (TAG "U1") UID REMOVEFROM (0 2)']
    await other.ok("EXPUNGE")  # nothing deleted: no change
    await other.ok("STORE 1:* -FLAGS (\\Seen)")
    assert esearch(await c.ok("NOOP")) == ['* ESEARCH (TAG "U1") UID ADDTO (0 1:2)']
    await c.ok("UNSELECT")
    await c.ok("SELECT INBOX")
    assert esearch(await c.ok("STORE 1:* +FLAGS (\\Seen)")) == []  # contexts end with the selection
    await c.close()
    await other.close()


async def test_search_context_freezes_sequence_numbers(imap: IMAPEnv) -> None:
    """RFC 5267 §4.3 / RFC 3501 errata: numbers and "*" in the program are evaluated once."""
    c = await selected(imap, [raw(f"m{i}") for i in range(1, 4)])
    assert esearch(await tagged(c, "F", "SEARCH RETURN (UPDATE ALL) 2:* UNFLAGGED")) == [
        '* ESEARCH (TAG "F") ALL 2:3'
    ]
    await imap.deliver(raw("m4"))
    lines = await c.ok("NOOP")
    assert "* 4 EXISTS" in lines and esearch(lines) == []  # message 4 was not designated by 2:*
    assert esearch(await c.ok("STORE 1,3 +FLAGS (\\Flagged)")) == ['* ESEARCH (TAG "F") REMOVEFROM (0 3)']
    await c.close()


async def test_sort_context_updates_keep_the_sort_order(imap: IMAPEnv) -> None:
    """RFC 5267 §4.3.3/§4.3.4: SORT contexts insert and remove at their context positions."""
    c = await selected(imap, [raw(s) for s in ("delta", "bravo", "foxtrot", "alpha")])
    lines = await tagged(c, "R", "SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNDELETED")
    assert esearch(lines) == ['* ESEARCH (TAG "R") ALL 4,2,1,3']
    await imap.deliver(raw("charlie"))
    await imap.deliver(raw("echo"))
    lines = await c.ok("NOOP")
    assert esearch(lines) == ['* ESEARCH (TAG "R") ADDTO (3 5 5 6)']  # alpha bravo CHARLIE delta ECHO
    assert esearch(await c.ok("STORE 2,6 +FLAGS (\\Deleted)")) == ['* ESEARCH (TAG "R") REMOVEFROM (2 2 4 6)']
    assert esearch(await c.ok("STORE 2 -FLAGS (\\Deleted)")) == ['* ESEARCH (TAG "R") ADDTO (2 2)']
    lines = await tagged(c, "U", "UID SORT RETURN (UPDATE MIN) (REVERSE SUBJECT) UTF-8 ALL")
    assert esearch(lines) == ['* ESEARCH (TAG "U") UID MIN 3']  # foxtrot echo delta charlie bravo alpha
    assert esearch(await c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")) == [
        '* ESEARCH (TAG "R") REMOVEFROM (4 1)'
    ]
    lines = await c.ok("EXPUNGE")  # UIDs 1 (delta) and 6 (echo): REMOVEFROM before the EXPUNGE
    assert lines[:3] == ['* ESEARCH (TAG "U") UID REMOVEFROM (3 1 2 6)', "* 6 EXPUNGE", "* 1 EXPUNGE"]
    await imap.deliver(raw("golf"))
    await imap.deliver(raw("bravo"))
    assert esearch(await c.ok("NOOP")) == [
        '* ESEARCH (TAG "R") ADDTO (5 5 3 6)',  # alpha bravo BRAVO' charlie foxtrot GOLF (numbers)
        '* ESEARCH (TAG "U") UID ADDTO (1 7 5 8)',  # GOLF foxtrot charlie bravo BRAVO' alpha (UIDs)
    ]
    await c.close()


async def test_update_contexts_are_limited(sqlite_runtime: Any, pki: Any) -> None:
    """RFC 5267 §4.3.1: beyond [limits] imap_update_contexts, NOUPDATE and the other results."""
    async with running(sqlite_runtime, pki, imap_update_contexts=2) as env:
        c = await selected(env, [raw("a"), raw("b")])
        assert esearch(await tagged(c, "A", "SEARCH RETURN (UPDATE) SEEN")) == ['* ESEARCH (TAG "A")']
        await tagged(c, "B", "SORT RETURN (UPDATE) (DATE) UTF-8 SEEN")
        lines = await tagged(c, "C", "UID SORT RETURN (UPDATE COUNT) (DATE) UTF-8 ALL")
        assert lines[:2] == [
            '* ESEARCH (TAG "C") UID COUNT 2',
            '* NO [NOUPDATE "C"] at most 2 updating contexts',
        ]
        assert lines[-1].startswith("C OK")
        events = await env.rt.audit.events(actor=MARTIN, action="limit")
        assert [(e.request, e.response) for e in events] == [("imap C RETURN (UPDATE)", "NOUPDATE")]
        assert esearch(await c.ok("STORE 1 +FLAGS (\\Seen)")) == [
            '* ESEARCH (TAG "A") ADDTO (0 1)',
            '* ESEARCH (TAG "B") ADDTO (1 1)',
        ]
        await c.ok('CANCELUPDATE "A" "nothing"')
        lines = await tagged(c, "D", "SEARCH RETURN (UPDATE) UNSEEN")
        assert lines[-1].startswith("D OK") and not any("NOUPDATE" in line for line in lines)
        await c.close()


async def test_updates_arrive_during_idle(imap: IMAPEnv) -> None:
    """RFC 5267 §4.3.2: updates may be sent at any time, IDLE included."""
    c = await selected(imap, [raw("a"), raw("b")])
    await tagged(c, "W", "SEARCH RETURN (UPDATE) FLAGGED")
    await c.send("i IDLE\r\n")
    assert (await c.line()).startswith("+ ")
    other = await imap.connect()
    await other.ok("SELECT INBOX")
    await other.ok("STORE 2 +FLAGS (\\Flagged)")
    assert (await c.line()).startswith("* 2 FETCH (UID 2 FLAGS (\\Flagged")
    assert await c.line() == '* ESEARCH (TAG "W") ADDTO (0 2)'
    await c.send("DONE\r\n")
    assert (await c.until("i"))[-1].startswith("i OK")
    await c.close()
    await other.close()
