"""Per-member flags on shared ORG folders (issue 16): each member's own ``\\Seen`` (``[imap]
private_flags``), shared ``\\Deleted``/EXPUNGE, CONDSTORE per member, and COPY/MOVE between one's own
folders and the ORG's; two members and the ORG's own login in real sessions at once."""

from __future__ import annotations

import asyncio
import imaplib
import re

from imapclient import IMAPClient
from sqlalchemy import func, select

from mailserver import accounts
from mailserver.db.models import AuditEvent, MemberFlags
from mailserver.store.store import Viewer
from tests.imap.conftest import PASSWORD, SECRETARIAT, IMAPEnv, message
from tests.imap.test_server_shared import BERNARD, DUPONT, SHARED, SHARED_INBOX, login, members


def flags_of(client: imaplib.IMAP4_SSL, seq: str = "1:*") -> dict[int, set[str]]:
    """FLAGS of each message, by sequence number, as the client sees them (\\Recent aside)."""
    typ, data = client.fetch(seq, "(FLAGS)")
    assert typ == "OK"
    out = {}
    for line in data:
        m = re.match(rb"(\d+) \((?:UID \d+ )?FLAGS \((.*?)\)", line)  # type: ignore[arg-type]
        assert m, line
        out[int(m.group(1))] = set(m.group(2).decode().split()) - {"\\Recent"}
    return out


def no_recent(flags: dict[int, tuple[bytes, ...]]) -> dict[int, tuple[bytes, ...]]:
    return {n: tuple(f for f in fl if f != b"\\Recent") for n, fl in flags.items()}


def unsolicited(client: imaplib.IMAP4_SSL) -> list[bytes]:
    """What a NOOP brings: the FETCH responses announcing flag changes, and EXPUNGEs."""
    client.untagged_responses.clear()
    assert client.noop()[0] == "OK"
    return [
        *client.untagged_responses.get("FETCH", []),
        *(b"EXPUNGE " + e for e in client.untagged_responses.get("EXPUNGE", [])),
    ]


def unseen(client: imaplib.IMAP4_SSL) -> list[bytes]:
    typ, data = client.search(None, "UNSEEN")
    assert typ == "OK"
    return data[0].split()


def status_unseen(client: imaplib.IMAP4_SSL, name: str) -> bytes:
    typ, data = client.status(name, "(MESSAGES UNSEEN)")
    assert typ == "OK"
    return re.search(rb"\((.*)\)", data[0]).group(1)  # type: ignore[arg-type, union-attr]


def private_seen(env: IMAPEnv) -> None:
    bernard, org = login(env, BERNARD), login(env, SECRETARIAT)
    dupont = IMAPClient("127.0.0.1", env.tls_port, ssl_context=env.ctx, timeout=10)
    dupont.login(DUPONT, PASSWORD)
    try:
        bernard.select(SHARED_INBOX)
        dupont.select_folder(f"Partagé/{SECRETARIAT}/INBOX")
        org.select("INBOX")

        typ, data = bernard.fetch("1", "(BODY[])")  # reading sets BERNARD's \Seen, his alone
        assert typ == "OK" and b"\\Seen" in data[1] and b"Subject: premier" in data[0][1]
        assert flags_of(bernard) == {1: {"\\Seen"}, 2: set()}
        assert dupont.noop()[1] == [], "no unsolicited FETCH for someone else's \\Seen"
        assert no_recent(dupont.get_flags([1, 2])) == {1: (), 2: ()}
        assert unsolicited(org) == []
        assert flags_of(org) == {1: set(), 2: set()}, "the ORG's own login keeps the ORG's \\Seen"

        assert unseen(bernard) == [b"2"]
        assert dupont.search("UNSEEN") == [1, 2]
        assert unseen(org) == [b"1", b"2"]
        assert status_unseen(bernard, SHARED_INBOX) == b"MESSAGES 2 UNSEEN 1"
        assert dupont.folder_status(f"Partagé/{SECRETARIAT}/INBOX", ["UNSEEN"])[b"UNSEEN"] == 2
        assert status_unseen(org, "INBOX") == b"MESSAGES 2 UNSEEN 2"
        assert bernard.select(SHARED_INBOX)[0] == "OK"
        assert bernard.untagged_responses.get("UNSEEN") == [b"2"], "SELECT's first unseen is his"
        assert dupont.select_folder(f"Partagé/{SECRETARIAT}/INBOX")[b"UNSEEN"] == [b"1"]

        # The ORG's own \Seen is the ORG's: its members' stay as they were.
        assert org.store("2", "+FLAGS", "(\\Seen)")[0] == "OK"
        assert flags_of(bernard) == {1: {"\\Seen"}, 2: set()}
        assert no_recent(dupont.get_flags([1, 2])) == {1: (), 2: ()}
        # DUPONT's own \Seen, by STORE, and his -FLAGS: BERNARD's is untouched.
        dupont.add_flags([2], [b"\\Seen"])
        assert no_recent(dupont.get_flags([2])) == {2: (b"\\Seen",)}
        dupont.remove_flags([2], [b"\\Seen"])
        assert no_recent(dupont.get_flags([2])) == {2: ()}
        assert unsolicited(bernard) == [] and flags_of(bernard) == {1: {"\\Seen"}, 2: set()}
        # FLAGS (replace) by BERNARD: \Flagged is shared, his \Seen goes, the ORG's stays.
        assert bernard.store("2", "FLAGS", "(\\Flagged)")[0] == "OK"
        assert flags_of(bernard) == {1: {"\\Seen"}, 2: {"\\Flagged"}}
        assert no_recent(dupont.get_flags([2])) == {2: (b"\\Flagged",)}
        assert flags_of(org, "2") == {2: {"\\Seen", "\\Flagged"}}

        # \Deleted and EXPUNGE are shared: DUPONT's session hears of both.
        assert bernard.store("1", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        changes = dupont.noop()[1]
        assert (1, b"FETCH", (b"FLAGS", (b"\\Deleted",))) in changes or any(
            b"\\Deleted" in str(c).encode() for c in changes
        ), changes
        assert bernard.expunge()[0] == "OK"
        assert (1, b"EXPUNGE") in dupont.noop()[1]
        assert b"EXPUNGE 1" in unsolicited(org)
        assert flags_of(org) == {1: {"\\Seen", "\\Flagged"}}
    finally:
        for client in (bernard, org):
            client.logout()
        dupont.logout()


async def test_each_member_keeps_their_own_seen(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrswite", "lrswite")
    await env.deliver(message("premier"), SECRETARIAT)
    await env.deliver(message("second"), SECRETARIAT)
    await asyncio.to_thread(private_seen, env)
    async with env.rt.db.read() as session:  # EXPUNGE took BERNARD's row of message 1 with it
        rows = (await session.execute(select(func.count()).select_from(MemberFlags))).scalar_one()
    assert rows == 1  # DUPONT's (now empty) row of message 2, which carries his last change's modseq
    async with env.rt.db.read() as session:
        changes = (
            await session.execute(
                select(AuditEvent.actor, AuditEvent.request, AuditEvent.response).where(
                    AuditEvent.action == "flags"
                )
            )
        ).all()
    inbox = f"Partagé/{SECRETARIAT}/INBOX"
    assert (DUPONT, f"imap STORE {inbox} uids 2 +FLAGS (\\Seen)", f"ok as member of {SECRETARIAT}") in changes
    assert (
        BERNARD,
        f"imap STORE {inbox} uids 1 +FLAGS (\\Deleted)",
        f"ok as member of {SECRETARIAT}",
    ) in changes
    assert not [c for c in changes if c[0] == SECRETARIAT], "the ORG's own login is its own mailbox"


def modseq_of(data: list[bytes]) -> dict[int, tuple[int, set[str]]]:
    out = {}
    for line in data:
        uid = int(re.search(rb"UID (\d+)", line).group(1))  # type: ignore[union-attr]
        modseq = int(re.search(rb"MODSEQ \((\d+)\)", line).group(1))  # type: ignore[union-attr]
        flags = set(re.search(rb"FLAGS \((.*?)\)", line).group(1).decode().split())  # type: ignore[union-attr]
        out[uid] = (modseq, flags - {"\\Recent"})
    return out


def condstore(env: IMAPEnv) -> None:
    bernard, dupont = login(env, BERNARD), login(env, DUPONT)
    try:
        for client in (bernard, dupont):
            assert client.enable("CONDSTORE")[0] == "OK"
            client.select(SHARED_INBOX)
        start = int(bernard.untagged_responses["HIGHESTMODSEQ"][0])
        assert bernard.store("1", "+FLAGS.SILENT", "(\\Seen)")[0] == "OK"
        typ, data = bernard.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {start})")
        assert typ == "OK"
        changed = modseq_of(data)
        assert list(changed) == [1] and changed[1][1] == {"\\Seen"} and changed[1][0] > start
        typ, data = dupont.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {start})")
        assert typ == "OK" and data == [None], "nothing changed for DUPONT"
        assert unsolicited(dupont) == []

        after = changed[1][0]
        assert bernard.store("1", "-FLAGS.SILENT", "(\\Seen)")[0] == "OK"
        typ, data = bernard.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {after})")
        removed = modseq_of(data)
        assert list(removed) == [1] and removed[1][1] == set() and removed[1][0] > after
        # UNCHANGEDSINCE compares the member's own modseq: his change is newer than "after".
        # (imaplib keeps no tagged text of UID STORE: what it did shows in the flags.)
        assert bernard.uid("STORE", "1", f"(UNCHANGEDSINCE {after}) +FLAGS.SILENT (\\Seen)")[0] == "OK"
        assert flags_of(bernard, "1") == {1: set()}, "MODIFIED: not stored"
        assert dupont.uid("STORE", "1", f"(UNCHANGEDSINCE {after}) +FLAGS.SILENT (\\Seen)")[0] == "OK"
        assert flags_of(dupont, "1") == {1: {"\\Seen"}}, "DUPONT's message did not change since"
        # A shared flag moves the message's own modseq: both members hear of it.
        assert dupont.store("2", "+FLAGS.SILENT", "(\\Flagged)")[0] == "OK"
        typ, data = bernard.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {removed[1][0]})")
        assert modseq_of(data)[2][1] == {"\\Flagged"}
    finally:
        for client in (bernard, dupont):
            client.logout()


async def test_condstore_reports_a_members_own_seen_to_them(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrswi", "lrswi")
    await env.deliver(message("premier"), SECRETARIAT)
    await env.deliver(message("second"), SECRETARIAT)
    await asyncio.to_thread(condstore, env)


def without_s(env: IMAPEnv) -> None:
    bernard, dupont = login(env, BERNARD), login(env, DUPONT)
    try:
        dupont.select(SHARED_INBOX)
        typ, data = dupont.store("1", "+FLAGS", "(\\Seen)")
        assert typ == "NO" and b"[NOPERM]" in data[0] and b"s" in data[0]
        typ, data = dupont.fetch("1", "(BODY[])")
        assert typ == "OK" and b"\\Seen" not in data[0][0] + data[1]
        assert flags_of(dupont) == {1: set()}
        bernard.select(SHARED_INBOX)
        assert bernard.store("1", "+FLAGS", "(\\Seen)")[0] == "OK"
        assert flags_of(dupont) == {1: set()}
    finally:
        for client in (bernard, dupont):
            client.logout()


async def test_a_member_without_s_cannot_keep_seen(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrs", "lrw")
    await env.deliver(message("premier"), SECRETARIAT)
    await asyncio.to_thread(without_s, env)


def shared_seen(env: IMAPEnv) -> None:
    bernard, dupont = login(env, BERNARD), login(env, DUPONT)
    try:
        bernard.select(SHARED_INBOX)
        dupont.select(SHARED_INBOX)
        bernard.fetch("1", "(BODY[])")
        assert flags_of(dupont) == {1: {"\\Seen"}}
    finally:
        for client in (bernard, dupont):
            client.logout()


async def test_no_private_flags_shares_seen(imap: IMAPEnv) -> None:
    imap.rt.settings.imap.private_flags = []
    await members(imap, "lrs", "lrs")
    await imap.deliver(message("premier"), SECRETARIAT)
    await asyncio.to_thread(shared_seen, imap)


def append_private(env: IMAPEnv) -> None:
    bernard, dupont, org = login(env, BERNARD), login(env, DUPONT), login(env, SECRETARIAT)
    try:
        assert bernard.append(SHARED_INBOX, "(\\Seen \\Flagged)", None, message("brouillon"))[0] == "OK"
        bernard.select(SHARED_INBOX)
        dupont.select(SHARED_INBOX)
        org.select("INBOX")
        assert flags_of(bernard) == {1: {"\\Seen", "\\Flagged"}}
        assert flags_of(dupont) == {1: {"\\Flagged"}}
        assert flags_of(org) == {1: {"\\Flagged"}}
    finally:
        for client in (bernard, dupont, org):
            client.logout()


async def test_append_keeps_the_members_seen_as_theirs(imap: IMAPEnv) -> None:
    await members(imap, "lrswi", "lrswi")
    await asyncio.to_thread(append_private, imap)


# --------------------------------------------------------------------------- COPY / MOVE across


def copy_across(env: IMAPEnv) -> None:
    bernard, dupont = login(env, BERNARD), login(env, DUPONT)
    try:
        bernard.select(SHARED_INBOX)
        bernard.fetch("1", "(BODY[])")  # his \Seen
        assert bernard.store("1", "+FLAGS", "($Urgent)")[0] == "OK"
        typ, data = bernard.copy("1", "INBOX")
        assert typ == "OK" and b"COPYUID" in data[0]
        typ, data = bernard.uid("MOVE", "2", "INBOX")  # imaplib has no move(); UID 2 is message 2
        assert typ == "OK", data
        bernard.select("INBOX")
        assert flags_of(bernard) == {1: {"\\Seen", "$Urgent"}, 2: set()}, "his view of the flags"
        typ, data = bernard.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"Subject: second" in data[0][1]

        # From his own INBOX into the ORG's: his \Seen stays his in the ORG's folder.
        typ, data = bernard.copy("1", SHARED + "Sent")
        assert typ == "OK" and b"COPYUID" in data[0]
        dupont.select(SHARED + "Sent")
        assert flags_of(dupont) == {1: {"$Urgent"}}
        bernard.select(SHARED + "Sent")
        assert flags_of(bernard) == {1: {"\\Seen", "$Urgent"}}

        dupont.select(SHARED_INBOX)  # lrsi: MOVE out of the ORG needs t and e
        typ, data = dupont.uid("MOVE", "1", "INBOX")
        assert typ == "NO" and b"[NOPERM]" in data[0]
        assert dupont.copy("1", "INBOX")[0] == "OK"
        dupont.select("INBOX")
        assert flags_of(dupont) == {1: {"$Urgent"}}, "DUPONT's view: not seen by him"
        typ, data = dupont.copy("1", SHARED + "Archive")
        assert typ == "NO" and b"[OVERQUOTA]" in data[0], "the ORG's quota counts"

        # Within the ORG a MOVE keeps each member's own \Seen with the message.
        bernard.select(SHARED_INBOX)
        assert bernard.uid("MOVE", "1", SHARED + "Archive")[0] == "OK"
        bernard.select(SHARED + "Archive")
        assert flags_of(bernard) == {1: {"\\Seen", "$Urgent"}}
        dupont.select(SHARED + "Archive")
        assert flags_of(dupont) == {1: {"$Urgent"}}
    finally:
        for client in (bernard, dupont):
            client.logout()


async def test_copy_and_move_between_ones_own_folders_and_the_orgs(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrswitei", "lrsi")
    await env.deliver(message("premier"), SECRETARIAT)
    await env.deliver(message("second"), SECRETARIAT)
    await accounts.set_mailbox_quota(env.rt, SECRETARIAT, 10**9, 2)  # the ORG is full at 2 messages
    org_id, bernard_id = env.mailboxes[SECRETARIAT], env.mailboxes[BERNARD]
    before, _ = await env.rt.store.usage(org_id)
    await asyncio.to_thread(copy_across, env)
    after, _ = await env.rt.store.usage(org_id)
    mine, _ = await env.rt.store.usage(bernard_id)
    assert (after.messages, mine.messages) == (before.messages, 2), "one moved out, one copied in"
    async with env.rt.db.read() as session:
        rows = (
            await session.execute(
                select(AuditEvent.actor, AuditEvent.action, AuditEvent.request, AuditEvent.response).where(
                    AuditEvent.action.in_(["copy", "move"])
                )
            )
        ).all()
    assert (BERNARD, "move") in [(r[0], r[1]) for r in rows]
    assert all(r[3] == f"ok as member of {SECRETARIAT}" for r in rows), rows
    assert any(r[2].endswith(f"to Partagé/{SECRETARIAT}/Sent") for r in rows)


async def test_qresync_gives_each_member_their_own_changes(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrswi", "lrswi")
    await env.deliver(message("premier"), SECRETARIAT)
    await env.deliver(message("second"), SECRETARIAT)
    bernard, dupont = await env.connect(BERNARD), await env.connect(DUPONT)
    try:
        for c in (bernard, dupont):
            await c.ok("ENABLE QRESYNC")
        lines = await bernard.ok(f'SELECT "{SHARED_INBOX}"')
        validity = next(re.search(r"UIDVALIDITY (\d+)", x).group(1) for x in lines if "UIDVALIDITY" in x)  # type: ignore[union-attr]
        start = int(
            next(re.search(r"HIGHESTMODSEQ (\d+)", x).group(1) for x in lines if "HIGHESTMODSEQ" in x)
        )  # type: ignore[union-attr]
        lines = await bernard.ok("UID STORE 2 +FLAGS.SILENT (\\Seen)")
        assert lines[0].startswith("* 2 FETCH (UID 2 MODSEQ (")  # .SILENT under CONDSTORE: the MODSEQ
        lines = await bernard.command(f"UID STORE 2 (UNCHANGEDSINCE {start}) -FLAGS (\\Seen)")
        assert lines[-1].split(" ", 1)[1].startswith("OK [MODIFIED 2]"), lines
        await bernard.ok("UNSELECT")

        lines = await bernard.ok(f'SELECT "{SHARED_INBOX}" (QRESYNC ({validity} {start}))')
        fetches = [x for x in lines if " FETCH " in x]
        assert len(fetches) == 1 and "UID 2 " in fetches[0] and "\\Seen" in fetches[0], lines
        lines = await dupont.ok(f'SELECT "{SHARED_INBOX}" (QRESYNC ({validity} {start}))')
        assert [x for x in lines if " FETCH " in x] == [], "nothing changed for DUPONT since"
        # SORT and THREAD filter on the member's own \Seen too.
        assert (await bernard.ok("UID SORT (ARRIVAL) UTF-8 UNSEEN"))[0] == "* SORT 1"
        assert (await dupont.ok("UID SORT (ARRIVAL) UTF-8 UNSEEN"))[0] == "* SORT 1 2"
        assert (await bernard.ok("UID THREAD REFERENCES UTF-8 UNSEEN"))[0] == "* THREAD (1)"
        lines = await dupont.ok(f"UID STORE 2 (UNCHANGEDSINCE {start}) +FLAGS (\\Seen)")
        assert "MODIFIED" not in lines[-1] and "\\Seen" in lines[0]
    finally:
        for c in (bernard, dupont):
            await c.close()


async def test_removing_a_member_drops_their_own_flags(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrs", "lrs")
    await env.deliver(message("premier"), SECRETARIAT)
    inbox = await env.rt.store.folder(env.mailboxes[SECRETARIAT], "INBOX")
    for address in (BERNARD, DUPONT):
        viewer = Viewer(env.mailboxes[address], frozenset({"\\Seen"}))
        await env.rt.store.set_flags(inbox.id, [1], "add", ["\\Seen"], viewer=viewer)
    await accounts.remove_member(env.rt, SECRETARIAT, BERNARD)
    async with env.rt.db.read() as session:
        rows = (await session.execute(select(MemberFlags.member_id))).scalars().all()
    assert rows == [env.mailboxes[DUPONT]]


# --------------------------------------------------------------------------- other settings


def other_prefix_and_private_keyword(env: IMAPEnv) -> None:
    shared_inbox = f"Shared/{SECRETARIAT}/INBOX"
    bernard, dupont, org = login(env, BERNARD), login(env, DUPONT), login(env, SECRETARIAT)
    try:
        assert bernard.namespace() == ("OK", [b'(("" "/")) NIL (("Shared/" "/"))'])
        assert bernard.select(shared_inbox)[0] == "OK" and dupont.select(shared_inbox)[0] == "OK"
        assert bernard.select(SHARED_INBOX)[0] == "NO", "the default prefix names nothing now"
        bernard.select(shared_inbox)
        org.select("INBOX")
        assert bernard.store("1", "+FLAGS", "($Lu \\Flagged)")[0] == "OK"
        assert flags_of(bernard) == {1: {"$Lu", "\\Flagged"}}
        assert flags_of(dupont) == {1: {"\\Flagged"}}, "$Lu is Bernard's own, \\Flagged everyone's"
        assert flags_of(org) == {1: {"\\Flagged"}}
        typ, data = dupont.search(None, "KEYWORD", "$Lu")
        assert typ == "OK" and data == [b""]
    finally:
        for client in (bernard, dupont, org):
            client.logout()


async def test_another_prefix_and_a_private_keyword(imap: IMAPEnv) -> None:
    """``[imap] shared_prefix`` and ``private_flags`` are settings: with ``Shared/`` and the keyword
    ``$Lu`` made private, the ORG is under ``Shared/`` and each member keeps their own ``$Lu``."""
    imap.rt.settings.imap.shared_prefix = "Shared/"
    imap.rt.settings.imap.private_flags = ["\\Seen", "$Lu"]
    await members(imap, "lrsw", "lrsw")
    await imap.deliver(message("premier"), SECRETARIAT)
    await asyncio.to_thread(other_prefix_and_private_keyword, imap)
