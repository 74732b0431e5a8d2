"""SELECT/EXAMINE, LIST variants (LIST-EXTENDED, SPECIAL-USE, LIST-STATUS), LSUB, CREATE/DELETE/RENAME,
SUBSCRIBE, NAMESPACE, STATUS, quota commands; mUTF-7 vs UTF-8 names."""

from __future__ import annotations

import asyncio

from imapclient import IMAPClient

from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv, message


async def test_select_and_examine_responses(imap: IMAPEnv) -> None:
    await imap.deliver(message("one"))
    c = await imap.connect()
    lines = await c.ok("SELECT INBOX")
    assert lines[0] == "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
    assert lines[1] == "* 1 EXISTS"
    assert lines[2] == "* 1 RECENT"  # rev1 client: the first session to see it gets \Recent
    assert lines[3].startswith("* OK [UNSEEN 1]")
    assert any(
        x.startswith("* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]")
        for x in lines
    )
    assert any(x.startswith("* OK [UIDVALIDITY ") for x in lines)
    assert any(x.startswith("* OK [UIDNEXT 2]") for x in lines)
    assert any(x.startswith("* OK [HIGHESTMODSEQ ") for x in lines)
    assert lines[-1].endswith("OK [READ-WRITE] SELECT completed")
    other = await imap.connect()
    lines = await other.ok("EXAMINE inbox")
    assert "* 0 RECENT" in lines and lines[-1].endswith("OK [READ-ONLY] EXAMINE completed")
    assert any(x.startswith("* OK [PERMANENTFLAGS ()]") for x in lines)
    assert (await other.command("STORE 1 +FLAGS (\\Seen)"))[-1].split()[1] == "NO"
    lines = await c.ok("SELECT Sent")
    assert lines[0] == "* OK [CLOSED] previous mailbox is now closed"
    lines = await c.command("SELECT Nowhere")
    assert lines[-1].split()[1:3] == ["NO", "[NONEXISTENT]"]
    assert (await c.command("FETCH 1 FLAGS"))[-1].split()[1] == "BAD"  # failed SELECT leaves no mailbox
    await c.close()
    await other.close()


async def test_rev2_select_has_no_recent_but_a_list(imap: IMAPEnv) -> None:
    c = await imap.connect()
    await c.ok("ENABLE IMAP4rev2")
    lines = await c.ok("SELECT INBOX")
    assert not any("RECENT" in x for x in lines)
    assert '* LIST () "/" INBOX' in lines
    await c.close()


async def test_list_variants(imap: IMAPEnv) -> None:
    c = await imap.connect()
    await c.ok("CREATE Projets/2026/Janvier")
    await c.ok('CREATE "&AMk-t&AOk-"')  # Été in mUTF-7
    # 8-bit needs UTF8=ACCEPT: without it, not a name a mailbox can have (RFC 3501 §5.1.3).
    assert (await c.command('CREATE "Été2"'))[-1].split()[1:3] == ["NO", "[CANNOT]"]
    lines = await c.ok('LIST "" "*"')
    assert '* LIST (\\HasNoChildren \\Sent) "/" Sent' in lines
    assert '* LIST (\\HasChildren) "/" Projets' in lines
    assert '* LIST (\\HasNoChildren) "/" Projets/2026/Janvier' in lines
    assert '* LIST (\\HasNoChildren) "/" &AMk-t&AOk-' in lines  # mUTF-7 for a rev1 client
    lines = await c.ok('LIST "" "%"')
    assert not any("Janvier" in x for x in lines) and any(x.endswith(" Projets") for x in lines)
    lines = await c.ok('LIST "Projets" "%"')
    assert lines[:-1] == ['* LIST (\\HasChildren) "/" Projets/2026']
    lines = await c.ok('LIST "" ""')
    assert lines[0] == '* LIST (\\Noselect) "/" ""'
    lines = await c.ok('LIST (SPECIAL-USE) "" "*"')
    assert sorted(x.rsplit(" ", 1)[1] for x in lines[:-1]) == ["Archive", "Drafts", "Junk", "Sent", "Trash"]
    lines = await c.ok('LIST "" "inbox"')
    assert lines[0] == '* LIST (\\HasNoChildren) "/" INBOX'
    lines = await c.ok('LIST "" ("INBOX" "Sent") RETURN (STATUS (MESSAGES UIDNEXT))')
    assert (
        lines[1] == "* STATUS INBOX (MESSAGES 0 UIDNEXT 1)"
        and lines[3] == "* STATUS Sent (MESSAGES 0 UIDNEXT 1)"
    )
    await c.ok("UNSUBSCRIBE Projets")
    await c.ok("UNSUBSCRIBE Projets/2026")
    lines = await c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert '* LIST (\\HasChildren) "/" Projets ("CHILDINFO" ("SUBSCRIBED"))' in lines
    lines = await c.ok('LIST "" "*" RETURN (SUBSCRIBED)')
    assert '* LIST (\\HasChildren \\Subscribed) "/" Projets/2026/Janvier' not in lines
    assert '* LIST (\\HasNoChildren \\Subscribed) "/" Projets/2026/Janvier' in lines
    lines = await c.ok('LSUB "" "Projets/%"')
    assert lines[0] == '* LSUB (\\Noselect) "/" Projets/2026'
    await c.ok("ENABLE UTF8=ACCEPT")
    lines = await c.ok('LIST "" "É*"')
    assert lines[0] == '* LIST (\\HasNoChildren) "/" "Été"'
    lines = await c.ok("NAMESPACE")
    assert lines[0] == '* NAMESPACE (("" "/")) NIL (("Partagé/" "/"))'
    await c.close()


async def test_create_delete_rename(imap: IMAPEnv) -> None:
    c = await imap.connect()
    for bad in ('"/abs"', '"a//b"', '"a//"', '"a*"', '"a%b"', '""'):
        assert (await c.command(f"CREATE {bad}"))[-1].split()[1] in ("NO", "BAD"), bad
    assert (await c.command("CREATE INBOX"))[-1].split()[1:3] == ["NO", "[ALREADYEXISTS]"]
    await c.ok("CREATE Dossiers/")
    await c.ok("CREATE Important (USE (\\Flagged))")
    assert '* LIST (\\HasNoChildren \\Flagged) "/" Important' in await c.ok('LIST "" Important')
    await c.ok("RENAME Dossiers Classement")
    assert (await c.command("RENAME Nowhere Other"))[-1].split()[1:3] == ["NO", "[NONEXISTENT]"]
    assert (await c.command("RENAME Classement Sent"))[-1].split()[1:3] == ["NO", "[ALREADYEXISTS]"]
    await c.ok("DELETE Classement")
    assert (await c.command("DELETE INBOX"))[-1].split()[1] == "NO"
    assert (await c.command("DELETE Classement"))[-1].split()[1:3] == ["NO", "[NONEXISTENT]"]
    await imap.deliver(message("kept"))
    await c.ok("RENAME INBOX Ancien")  # RFC 9051 §6.3.6: messages move, INBOX stays, empty
    assert "* STATUS Ancien (MESSAGES 1)" in await c.ok("STATUS Ancien (MESSAGES)")
    assert "* STATUS INBOX (MESSAGES 0)" in await c.ok("STATUS INBOX (MESSAGES)")
    await c.close()


async def test_status_items(imap: IMAPEnv) -> None:
    await imap.deliver(message("a"))
    await imap.deliver(message("b"))
    c = await imap.connect()
    await c.ok("SELECT INBOX")
    await c.ok("STORE 1 +FLAGS (\\Seen \\Deleted)")
    lines = await c.ok(
        "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE RECENT APPENDLIMIT DELETED-STORAGE)"
    )
    st = lines[0]
    assert "MESSAGES 2" in st and "UIDNEXT 3" in st and "UNSEEN 1" in st and "DELETED 1" in st
    assert "RECENT 2" in st  # both are \Recent in this session, which selected the folder first
    assert "APPENDLIMIT 26214400" in st and "SIZE " in st
    lines = await c.ok("STATUS INBOX (HIGHESTMODSEQ)")
    assert lines[0].startswith("* STATUS INBOX (HIGHESTMODSEQ ")
    await c.close()


async def test_quota(imap: IMAPEnv) -> None:
    await imap.deliver(message("x", "y" * 3000))
    c = await imap.connect()
    lines = await c.ok("GETQUOTAROOT INBOX")
    assert lines[0] == '* QUOTAROOT INBOX ""'
    assert lines[1].startswith('* QUOTA "" (STORAGE 4 1048576)')
    assert (await c.ok('GETQUOTA ""'))[0] == lines[1]
    assert (await c.command('GETQUOTA "other"'))[-1].split()[1] == "NO"
    assert (await c.command('SETQUOTA "" (STORAGE 10)'))[-1].split()[1:3] == ["NO", "[NOPERM]"]
    await c.close()


async def test_imapclient_folders(imap: IMAPEnv) -> None:
    def work() -> tuple[list, dict, bool]:
        with IMAPClient("127.0.0.1", port=imap.tls_port, ssl=True, ssl_context=imap.ctx) as client:
            client.login(MARTIN, PASSWORD)
            client.create_folder("Patients/Dupont")
            folders = client.list_folders()
            status = client.folder_status("INBOX", ["MESSAGES", "UIDNEXT"])
            exists = client.folder_exists("Patients/Dupont")
            return folders, status, exists

    folders, status, exists = await asyncio.to_thread(work)
    assert any(name == "Patients/Dupont" for _f, _d, name in folders)
    assert status[b"MESSAGES"] == 0 and status[b"UIDNEXT"] == 1 and exists
