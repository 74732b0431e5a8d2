"""Shared ORG mailboxes over IMAP (issue 16): the RFC 2342 shared namespace ``Partagé/<ORG>/`` and
RFC 4314 rights enforced per command, with two members of one ORG in real imaplib sessions at once."""

from __future__ import annotations

import asyncio
import imaplib
import re

from imapclient import IMAPClient

from mailserver import accounts
from mailserver.imap.protocol import mutf7
from tests.imap.conftest import PASSWORD, SECRETARIAT, IMAPEnv, message

BERNARD = "dr.bernard@a.mssante.test"
DUPONT = "dr.dupont@a.mssante.test"
SHARED = mutf7.encode(f"Partagé/{SECRETARIAT}/")  # as an IMAP4rev1 (mUTF-7) client writes it
SHARED_INBOX = SHARED + "INBOX"


async def members(env: IMAPEnv, bernard: str, dupont: str) -> None:
    """Two people (PER mailboxes) and their rights on the ORG mailbox SECRETARIAT."""
    for address, rpps in ((BERNARD, "10000000009"), (DUPONT, "10000000017")):
        env.mailboxes[address] = (
            await accounts.add_mailbox(env.rt, address, "PER", rpps=rpps, password=PASSWORD)
        ).id
    await accounts.add_member(env.rt, SECRETARIAT, BERNARD, bernard)
    await accounts.add_member(env.rt, SECRETARIAT, DUPONT, dupont)


def login(env: IMAPEnv, user: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL("127.0.0.1", env.tls_port, ssl_context=env.ctx, timeout=10)
    client.login(user, PASSWORD)
    return client


def names(client: imaplib.IMAP4_SSL) -> list[str]:
    typ, data = client.list()
    assert typ == "OK"
    return [re.match(rb'\(.*?\) "/" (.*)', line).group(1).decode().strip('"') for line in data]  # type: ignore[union-attr]


def reader_and_stranger(env: IMAPEnv) -> None:
    """BERNARD (lrw) reads the ORG's INBOX; DUPONT (r, no l) does not learn it exists; both at once."""
    bernard, dupont = login(env, BERNARD), login(env, DUPONT)
    try:
        typ, data = bernard.namespace()
        assert typ == "OK"
        assert data[0] == b'(("" "/")) NIL (("Partag&AOk-/" "/"))'
        assert SHARED_INBOX in names(bernard) and SHARED + "Sent" in names(bernard)
        assert not [n for n in names(dupont) if n.startswith("Partag")]

        assert bernard.select("INBOX") == ("OK", [b"0"])  # the member's own INBOX stays theirs
        typ, data = bernard.select(SHARED_INBOX)
        assert (typ, data) == ("OK", [b"1"])
        typ, data = bernard.fetch("1", "(BODY[] FLAGS)")
        assert typ == "OK" and b"Subject: partage" in data[0][1]
        typ, data = bernard.fetch("1", "(FLAGS)")
        assert b"\\Seen" not in data[0], "no s right: reading does not set \\Seen"
        typ, data = bernard.store("1", "+FLAGS", "(\\Deleted)")
        assert typ == "NO" and b"[NOPERM]" in data[0] and b"t" in data[0]
        # RFC 3501 §9 resp-text is 7-bit: the folder is named as this mUTF-7 client knows it.
        assert data[0].isascii() and SHARED_INBOX.encode() in data[0]
        typ, data = bernard.status(SHARED_INBOX, "(MESSAGES UNSEEN)")
        assert typ == "OK" and b"(MESSAGES 1 UNSEEN 1)" in data[0]
        typ, data = bernard.expunge()
        assert typ == "NO" and b"[NOPERM]" in data[0]

        typ, missing = dupont.select(mutf7.encode("Partagé/nobody@a.mssante.test/INBOX"))
        assert typ == "NO" and missing[0].startswith(b"[NONEXISTENT]")
        assert dupont.select(SHARED_INBOX) == (typ, missing), "answered exactly as a missing folder"
        assert dupont.status(SHARED_INBOX, "(MESSAGES)") == ("NO", missing)
    finally:
        for client in (bernard, dupont):
            client.logout()


async def test_rights_decide_what_members_see_and_do(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrw", "r")
    await env.deliver(message("partage"), SECRETARIAT)
    await asyncio.to_thread(reader_and_stranger, env)


def append_and_copy(env: IMAPEnv) -> None:
    """BERNARD (lri) appends into the ORG's Sent and copies there; DUPONT (lr) may not."""
    bernard, dupont = login(env, BERNARD), login(env, DUPONT)
    org = login(env, SECRETARIAT)
    try:
        typ, data = bernard.append(SHARED + "Sent", "(\\Seen $Label1)", None, message("copie"))
        assert typ == "OK" and b"APPENDUID" in data[0]
        typ, data = dupont.append(SHARED + "Sent", None, None, message("refus"))
        assert typ == "NO" and b"[NOPERM]" in data[0]
        org.select("Sent")
        typ, data = org.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert len([d for d in data if isinstance(d, tuple)]) == 1
        assert b"Subject: copie" in data[0][1]
        assert b"\\Seen" not in data[0][0] and b"$Label1" not in data[0][0], "flags beyond lri are dropped"

        bernard.select(SHARED_INBOX)
        typ, data = bernard.copy("1", SHARED + "Sent")
        assert typ == "OK" and b"COPYUID" in data[0]
        typ, data = bernard.copy("1", "INBOX")  # into his own INBOX: r on the ORG's is enough
        assert typ == "OK" and b"COPYUID" in data[0]
        dupont.select(SHARED_INBOX, readonly=True)  # lr: READ-ONLY, which imaplib wants asked for
        typ, data = dupont.copy("1", SHARED + "Sent")
        assert typ == "NO" and b"[NOPERM]" in data[0]
        typ, data = bernard.create(SHARED + "Dossiers")
        assert typ == "NO" and b"[NOPERM]" in data[0]
    finally:
        for client in (bernard, dupont, org):
            client.logout()


async def test_append_and_copy_into_the_org_need_insert(imap: IMAPEnv) -> None:
    await members(imap, "lri", "lr")
    await imap.deliver(message("partage"), SECRETARIAT)
    await asyncio.to_thread(append_and_copy, imap)


async def test_idle_on_a_shared_folder_wakes_on_delivery_to_the_org(imap: IMAPEnv) -> None:
    await members(imap, "lrs", "lr")
    c = await imap.connect(BERNARD)
    await c.ok(f'SELECT "{SHARED_INBOX}"')
    await c.send("i1 IDLE\r\n")
    assert await c.line() == "+ idling"
    await imap.deliver(message("arrivée"), SECRETARIAT)
    assert await c.line(wait=5) == "* 1 EXISTS"  # pushed by the ORG's notification
    await c.send("DONE\r\n")
    assert (await c.until("i1"))[-1] == "i1 OK IDLE terminated"
    await c.close()


def acl_round_trip(env: IMAPEnv) -> None:
    """BERNARD (lra) administers the ORG's ACL; DUPONT (lr) may read it only through MYRIGHTS."""
    bernard, dupont = login(env, BERNARD), login(env, DUPONT)
    try:
        typ, caps = bernard.capability()
        assert b" ACL " in caps[0] + b" " and b"RIGHTS=texk" in caps[0]
        assert bernard.myrights(SHARED_INBOX) == ("OK", [f"{SHARED_INBOX} lra".encode()])
        typ, data = bernard.getacl(SHARED_INBOX)
        assert typ == "OK"
        assert data[0] == f"{SHARED_INBOX} {SECRETARIAT} lrswipkxtea {BERNARD} lra {DUPONT} lr".encode()
        typ, data = dupont.getacl(SHARED_INBOX)
        assert typ == "NO" and b"[NOPERM]" in data[0]
        typ, data = dupont.setacl(SHARED_INBOX, DUPONT, "lrswipkxtea")
        assert typ == "NO" and b"[NOPERM]" in data[0]

        assert bernard.setacl(SHARED_INBOX, DUPONT, "+ic")[0] == "OK"  # c: the obsolete k (RFC 4314 §2.1.1)
        assert dupont.myrights(SHARED + "Sent") == ("OK", [f"{SHARED}Sent lrik".encode()])
        assert dupont.append(SHARED_INBOX, None, None, message("admis"))[0] == "OK"
        typ, data = bernard.xatom("LISTRIGHTS", SHARED_INBOX, DUPONT)
        assert typ == "OK"
        assert bernard._untagged_response(typ, data, "LISTRIGHTS")[1] == [
            f'{SHARED_INBOX} {DUPONT} "" l r s w i p k x t e a'.encode()
        ]
        typ, data = bernard.setacl(SHARED_INBOX, SECRETARIAT, "lr")
        assert typ == "NO" and b"[CANNOT]" in data[0]

        assert bernard.setacl(SHARED_INBOX, DUPONT, "-l")[0] == "OK"
        typ, data = dupont.myrights(SHARED_INBOX)
        assert typ == "NO" and data[0].startswith(b"[NONEXISTENT]"), "without l it is gone from view"
        assert bernard.deleteacl(SHARED_INBOX, DUPONT)[0] == "OK"
        typ, data = bernard.getacl(SHARED_INBOX)
        assert data[0] == f"{SHARED_INBOX} {SECRETARIAT} lrswipkxtea {BERNARD} lra".encode()
    finally:
        for client in (bernard, dupont):
            client.logout()


async def test_acl_commands_edit_the_memberships(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lra", "lr")
    await asyncio.to_thread(acl_round_trip, env)
    assert [(m.member, m.rights) for m in await accounts.list_members(env.rt, SECRETARIAT)] == [
        (BERNARD, "lra")
    ]
    events = [e for e in await env.rt.audit.events(action="admin") if e.request.startswith("member ")]
    assert [(e.actor, e.request) for e in events[-3:]] == [
        (BERNARD, f"member add {DUPONT} to {SECRETARIAT} rights lrik"),
        (BERNARD, f"member add {DUPONT} to {SECRETARIAT} rights rik"),
        (BERNARD, f"member remove {DUPONT} from {SECRETARIAT}"),
    ]


def with_imapclient(env: IMAPEnv) -> tuple[object, list[tuple[bytes, bytes]], list[str]]:
    """imapclient parses the shared namespace and the ACL, and lists the ORG's folders (UTF-8 names)."""
    client = IMAPClient("127.0.0.1", port=env.tls_port, ssl=True, ssl_context=env.ctx, timeout=10)
    try:
        client.login(BERNARD, PASSWORD)
        namespace = client.namespace()
        acl = client.getacl(f"Partagé/{SECRETARIAT}/INBOX")
        folders = [name for _, _, name in client.list_folders("Partagé/", "*")]
        return namespace, acl, folders
    finally:
        client.logout()


async def test_imapclient_sees_the_shared_namespace(imap: IMAPEnv) -> None:
    await members(imap, "lra", "lr")
    namespace, acl, folders = await asyncio.to_thread(with_imapclient, imap)
    assert namespace.personal == (("", "/"),) and namespace.other is None  # type: ignore[attr-defined]
    assert namespace.shared == (("Partagé/", "/"),)  # type: ignore[attr-defined]
    assert (BERNARD.encode(), b"lra") in acl and (SECRETARIAT.encode(), b"lrswipkxtea") in acl
    assert f"Partagé/{SECRETARIAT}/INBOX" in folders and f"Partagé/{SECRETARIAT}/Sent" in folders


async def test_list_status_and_rev2_select_follow_the_rights(imap: IMAPEnv) -> None:
    """LIST-STATUS answers STATUS only where the member holds ``r``; IMAP4rev2 SELECT names the folder
    with its namespace prefix."""
    await members(imap, "lr", "l")
    await imap.deliver(message("partage"), SECRETARIAT)
    reader, looker = await imap.connect(BERNARD), await imap.connect(DUPONT)
    lines = await reader.ok(f'LIST "" "{SHARED}%" RETURN (STATUS (MESSAGES))')
    assert f"* STATUS {SHARED_INBOX} (MESSAGES 1)" in lines
    lines = await looker.ok(f'LIST "" "{SHARED}%" RETURN (STATUS (MESSAGES))')
    assert f'* LIST (\\HasNoChildren) "/" {SHARED_INBOX}' in lines
    assert not [line for line in lines if line.startswith("* STATUS")]
    lines = await looker.command(f"SELECT {SHARED_INBOX}")
    assert lines[-1].split(" ", 3)[1:3] == ["NO", "[NOPERM]"] and SHARED_INBOX in lines[-1]
    lines = await looker.command(f'SELECT "Partagé/{SECRETARIAT}/INBOX"')  # raw UTF-8, not enabled
    assert lines[-1].split(" ", 2)[1] in ("NO", "BAD") and lines[-1].isascii(), lines[-1]
    await looker.ok("ENABLE UTF8=ACCEPT")  # RFC 6855 §3: UTF-8 in responses from now on
    lines = await looker.command(f'SELECT "Partagé/{SECRETARIAT}/INBOX"')
    assert f"Partagé/{SECRETARIAT}/INBOX" in lines[-1]
    await reader.ok("ENABLE IMAP4rev2")  # names are UTF-8 from now on (RFC 9051 §5.1)
    lines = await reader.ok(f'SELECT "Partagé/{SECRETARIAT}/INBOX"')
    assert f'* LIST () "/" "Partagé/{SECRETARIAT}/INBOX"' in lines
    for c in (reader, looker):
        await c.close()


async def test_select_reflects_the_rights(imap: IMAPEnv) -> None:
    """RFC 4314 §4: READ-ONLY without i, e or a flag right; PERMANENTFLAGS only what STORE may change."""
    await members(imap, "lr", "lrs")
    await imap.deliver(message("partage"), SECRETARIAT)
    reader, seer = await imap.connect(BERNARD), await imap.connect(DUPONT)
    lines = await reader.ok(f'SELECT "{SHARED_INBOX}"')
    assert "[READ-ONLY]" in lines[-1] and "* OK [PERMANENTFLAGS ()] flags permitted" in lines
    lines = await seer.ok(f'SELECT "{SHARED_INBOX}"')
    assert "[READ-WRITE]" in lines[-1] and "* OK [PERMANENTFLAGS (\\Seen)] flags permitted" in lines
    for c in (reader, seer):
        await c.close()


async def test_a_removed_member_loses_the_selected_shared_folder_at_the_next_command(
    imap_both: IMAPEnv,
) -> None:
    """Rights are read again before each command on a shared folder: removal closes it, with no
    further FETCH or STORE of the ORG's messages in that session."""
    env = imap_both
    await members(env, "lrsw", "lrs")
    await env.deliver(message("partage"), SECRETARIAT)
    bernard, dupont = await env.connect(BERNARD), await env.connect(DUPONT)
    for c in (bernard, dupont):
        await c.ok(f'SELECT "{SHARED_INBOX}"')
        await c.ok("FETCH 1 (BODY.PEEK[TEXT])")
    await accounts.remove_member(env.rt, SECRETARIAT, BERNARD)
    lines = await bernard.command("FETCH 1 (BODY.PEEK[TEXT])")
    assert lines[0] == "* OK [CLOSED] access to the shared folder withdrawn, it is closed"
    assert lines[-1].split(" ")[1] == "BAD" and not any("BODY" in line for line in lines)
    lines = await bernard.command("STORE 1 +FLAGS (\\Flagged)")
    assert lines[-1].split(" ")[1] == "BAD"
    await bernard.ok("SELECT INBOX")  # their own mailbox stays theirs
    # a right taken (r) closes it too; the other member keeps theirs
    await accounts.add_member(env.rt, SECRETARIAT, DUPONT, "ls")
    lines = await dupont.command("NOOP")
    assert lines[0].startswith("* OK [CLOSED]")
    closed = await env.rt.audit.events(action="unselect")
    assert [(e.actor, e.response) for e in closed] == [
        (BERNARD, f"rights on Partagé/{SECRETARIAT}/INBOX withdrawn"),
        (DUPONT, f"rights on Partagé/{SECRETARIAT}/INBOX withdrawn"),
    ]
    for c in (bernard, dupont):
        await c.close()


async def test_a_member_removed_while_idling_hears_no_more_of_the_org(imap: IMAPEnv) -> None:
    await members(imap, "lrs", "lr")
    c = await imap.connect(BERNARD)
    await c.ok(f'SELECT "{SHARED_INBOX}"')
    await c.send("i1 IDLE\r\n")
    assert await c.line() == "+ idling"
    await accounts.remove_member(imap.rt, SECRETARIAT, BERNARD)
    await imap.deliver(message("après le départ"), SECRETARIAT)
    assert await c.line(wait=5) == "* OK [CLOSED] access to the shared folder withdrawn, it is closed"
    await c.send("DONE\r\n")
    assert await c.until("i1") == ["i1 OK IDLE terminated"]  # no EXISTS for the ORG's new message
    await c.close()
