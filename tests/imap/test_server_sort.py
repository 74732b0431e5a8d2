"""SORT, SORT=DISPLAY, ESORT and SEARCH/SORT contexts (RFC 5256, 5957, 5267) over a real connection."""

from __future__ import annotations

from tests.imap.conftest import IMAPEnv
from tests.imap.helpers import Client


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
    subjects = [
        "a",
        "C",
        "b",
        "_",
        "[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)",
        "b (a)",
        "Re: [FWD: c]",
        "[xyz]",
    ]
    c = await selected(imap, [raw(s) for s in subjects] + [raw(None)])
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
