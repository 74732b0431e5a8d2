"""Shared ORG/CAB mailboxes (issue 16), the rights and updates the other shared tests leave out:
DELETE and RENAME need ``x`` (RENAME ``k`` too), CREATE ``k``, STORE of a keyword or ``\\Flagged``
``w`` (RFC 4314 §4); a CAB mailbox in the shared namespace; an IDLE session (aioimaplib) hearing
another member's changes; all on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re

import aioimaplib
from imapclient import IMAPClient

from mailserver import accounts
from mailserver.imap.protocol import mutf7
from tests.imap.conftest import PASSWORD, SECRETARIAT, IMAPEnv, message
from tests.imap.test_server_shared import BERNARD, DUPONT, SHARED, SHARED_INBOX, login, members, names

CABINET = "cabinet@a.mssante.test"


def refused(answer: tuple[str, list[bytes]], right: str) -> bool:
    """A tagged ``NO [NOPERM]`` naming the missing right (RFC 4314 §4, RFC 5530)."""
    typ, data = answer
    return typ == "NO" and data[0].startswith(b"[NOPERM]") and f"right(s) {right} ".encode() in data[0]


def folder_rights(env: IMAPEnv) -> dict[str, list[str]]:
    """BERNARD (lrstie) may neither create, delete, rename nor set other flags than \\Seen and
    \\Deleted; DUPONT (lrswikx) may; the ORG's own login sees what each did."""
    bernard, dupont, org = login(env, BERNARD), login(env, DUPONT), login(env, SECRETARIAT)
    seen: dict[str, list[str]] = {}
    try:
        assert refused(bernard.create(SHARED + "Nouveau"), "k")
        assert refused(bernard.delete(SHARED + "Dossiers"), "x")
        assert refused(bernard.rename(SHARED + "Dossiers", SHARED + "Archives"), "x")
        assert bernard.select(SHARED_INBOX)[0] == "OK"
        assert refused(bernard.store("1", "+FLAGS", "(\\Flagged)"), "w")
        assert refused(bernard.store("1", "+FLAGS", "($Urgent)"), "w")
        assert refused(bernard.store("1", "-FLAGS", "($Urgent)"), "w")
        assert bernard.store("1", "+FLAGS", "(\\Seen)")[0] == "OK"  # s is held
        seen["org after refusals"] = names(org)

        assert dupont.create(SHARED + "Nouveau")[0] == "OK"
        assert dupont.rename(SHARED + "Dossiers", SHARED + "Archives")[0] == "OK"
        assert dupont.delete(SHARED + "Nouveau")[0] == "OK"
        # RFC 9051 §6.3.6 moves an INBOX's mail when it is renamed: not the team's INBOX, where mail arrives.
        typ, data = dupont.rename(SHARED_INBOX, SHARED + "Vide")
        assert typ == "NO" and data[0].startswith(b"[CANNOT]"), data
        assert dupont.select(SHARED_INBOX)[0] == "OK"
        typ, data = dupont.store("1", "+FLAGS", "(\\Flagged $Urgent)")
        assert typ == "OK" and b"\\Flagged" in data[0] and b"$Urgent" in data[0]
        seen["org after changes"] = names(org)
        org.select("INBOX")
        typ, data = org.fetch("1", "(FLAGS)")
        seen["org flags"] = re.findall(r"[\\$]?\w+", data[0].decode().split("FLAGS", 1)[1])
    finally:
        for client in (bernard, dupont, org):
            client.logout()
    return seen


async def test_delete_rename_create_and_flags_need_their_rights(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrstie", "lrswikx")
    await env.rt.store.create_folder(env.mailboxes[SECRETARIAT], "Dossiers")
    await env.deliver(message("partage"), SECRETARIAT)
    seen = await asyncio.to_thread(folder_rights, env)
    assert "Dossiers" in seen["org after refusals"] and "Nouveau" not in seen["org after refusals"]
    assert "Archives" in seen["org after changes"]
    assert "Dossiers" not in seen["org after changes"] and "Nouveau" not in seen["org after changes"]
    assert "\\Flagged" in seen["org flags"] and "$Urgent" in seen["org flags"]
    assert "\\Seen" not in seen["org flags"], "BERNARD's \\Seen is his own"
    (created,) = await env.rt.audit.events(action="create")
    assert (created.actor, created.request, created.response) == (
        DUPONT,
        f"imap CREATE folder Partagé/{SECRETARIAT}/Nouveau",
        f"ok as member of {SECRETARIAT}",
    )
    (renamed,) = await env.rt.audit.events(action="rename")
    assert (renamed.actor, renamed.request, renamed.response) == (
        DUPONT,
        f"imap RENAME folder Partagé/{SECRETARIAT}/Dossiers Partagé/{SECRETARIAT}/Archives",
        f"ok as member of {SECRETARIAT}",
    )
    (deleted,) = await env.rt.audit.events(action="delete")
    assert (deleted.actor, deleted.request, deleted.response) == (
        DUPONT,
        f"imap DELETE folder Partagé/{SECRETARIAT}/Nouveau",
        f"ok as member of {SECRETARIAT}",
    )


def rename_without_create(env: IMAPEnv) -> tuple[tuple[str, list[bytes]], list[str]]:
    bernard = login(env, BERNARD)
    try:
        return bernard.rename(SHARED + "Dossiers", SHARED + "Archives"), names(bernard)
    finally:
        bernard.logout()


async def test_rename_needs_create_on_the_new_name(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lrx", "lr")
    await env.rt.store.create_folder(env.mailboxes[SECRETARIAT], "Dossiers")
    answer, listed = await asyncio.to_thread(rename_without_create, env)
    assert refused(answer, "k")
    assert SHARED + "Dossiers" in listed and SHARED + "Archives" not in listed


def cab_member(env: IMAPEnv) -> tuple[object, list[str], dict[bytes, object], dict[int, dict[bytes, object]]]:
    """imapclient, a member of a CAB mailbox: NAMESPACE, LIST, SELECT and FETCH under ``Partagé/``."""
    client = IMAPClient("127.0.0.1", port=env.tls_port, ssl=True, ssl_context=env.ctx, timeout=10)
    try:
        client.login(BERNARD, PASSWORD)
        namespace = client.namespace()
        folders = [name for _, _, name in client.list_folders("Partagé/", "*")]
        selected = client.select_folder(f"Partagé/{CABINET}/INBOX")
        fetched = client.fetch([1], ["FLAGS", "BODY[HEADER.FIELDS (SUBJECT)]"])
        return namespace, folders, selected, fetched
    finally:
        client.logout()


async def test_a_cab_mailbox_appears_in_the_shared_namespace(imap_both: IMAPEnv) -> None:
    env = imap_both
    await members(env, "lr", "lr")
    env.mailboxes[CABINET] = (await accounts.add_mailbox(env.rt, CABINET, "CAB", password=PASSWORD)).id
    await accounts.add_member(env.rt, CABINET, BERNARD, "lrs")
    await env.deliver(message("au cabinet"), CABINET)
    namespace, folders, selected, fetched = await asyncio.to_thread(cab_member, env)
    assert namespace.shared == (("Partagé/", "/"),)  # type: ignore[attr-defined]
    assert f"Partagé/{CABINET}/INBOX" in folders and f"Partagé/{SECRETARIAT}/INBOX" in folders
    assert selected[b"EXISTS"] == 1
    (item,) = fetched.values()
    assert b"Subject: au cabinet" in item[b"BODY[HEADER.FIELDS (SUBJECT)]"]  # type: ignore[operator]
    assert b"\\Seen" in item[b"FLAGS"], "BODY[] with s keeps the member's \\Seen"  # type: ignore[operator]

    def dupont_does_not_see_it() -> list[str]:
        dupont = login(env, DUPONT)
        try:
            return names(dupont)
        finally:
            dupont.logout()

    listed = await asyncio.to_thread(dupont_does_not_see_it)
    assert mutf7.encode(f"Partagé/{CABINET}/INBOX") not in listed and SHARED_INBOX in listed


def other_member(env: IMAPEnv, step: str) -> str:
    """DUPONT's imaplib session, one step at a time while BERNARD idles."""
    dupont = login(env, DUPONT)
    try:
        assert dupont.select(SHARED_INBOX)[0] == "OK"
        if step == "flags":
            return dupont.store("1", "+FLAGS", "(\\Seen \\Flagged)")[0]
        if step == "append":
            return dupont.append(SHARED_INBOX, None, None, message("deuxième"))[0]
        assert dupont.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        return dupont.expunge()[0]
    finally:
        dupont.logout()


async def pushed(client: aioimaplib.IMAP4_SSL, wanted: str) -> list[str]:
    """What the server pushes to an idling client up to a line containing ``wanted``."""
    lines: list[str] = []
    while not any(wanted in line for line in lines):
        push = await client.wait_server_push(timeout=10)
        lines += [line.decode() if isinstance(line, bytes) else str(line) for line in push]
    return lines


async def test_idle_hears_another_members_changes(imap_both: IMAPEnv) -> None:
    """BERNARD idles on the ORG's INBOX with aioimaplib; DUPONT's flag change (his \\Seen stays his),
    APPEND and EXPUNGE reach him while idling (through NOTIFY on PostgreSQL)."""
    env = imap_both
    await members(env, "lrs", "lrswitep")
    await env.deliver(message("partage"), SECRETARIAT)
    bernard = aioimaplib.IMAP4_SSL("127.0.0.1", env.tls_port, ssl_context=env.ctx, timeout=10)
    await bernard.wait_hello_from_server()
    assert (await bernard.login(BERNARD, PASSWORD)).result == "OK"
    assert (await bernard.select(SHARED_INBOX)).result == "OK"
    try:
        idle = await bernard.idle_start(timeout=60)
        assert await asyncio.to_thread(other_member, env, "flags") == "OK"
        lines = await pushed(bernard, "FETCH")
        fetch = next(line for line in lines if "FETCH" in line)
        assert fetch.startswith("1 FETCH") and "\\Flagged" in fetch and "\\Seen" not in fetch, lines
        assert await asyncio.to_thread(other_member, env, "append") == "OK"
        assert "2 EXISTS" in await pushed(bernard, "EXISTS")
        assert await asyncio.to_thread(other_member, env, "expunge") == "OK"
        assert "1 EXPUNGE" in await pushed(bernard, "EXPUNGE")
        bernard.idle_done()
        assert (await asyncio.wait_for(idle, 10)).result == "OK"
        response = await bernard.fetch("1:*", "(FLAGS)")
        assert response.result == "OK" and response.lines[0].startswith(b"1 FETCH (FLAGS (")
        assert b"\\Flagged" not in response.lines[0], "the flagged message is gone, the new one is 1"
    finally:
        await bernard.logout()
