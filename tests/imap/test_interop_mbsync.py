"""Interop (issue 16): Debian's mbsync (isync) lists and syncs an ORG's shared folder over implicit TLS
as a member, into a local Maildir, and a flag set in that Maildir syncs back: \\Flagged for everyone,
\\Seen for that member alone. mbsync comes from scripts/system-deps (package isync)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from mailserver.imap.protocol import mutf7
from mailserver.store.store import Viewer
from tests.imap.conftest import PASSWORD, SECRETARIAT, IMAPEnv, message
from tests.imap.test_server_shared import BERNARD, DUPONT, members

MBSYNC = shutil.which("mbsync") or "/usr/bin/mbsync"


def config(env: IMAPEnv, home: Path) -> Path:
    """One member's account: implicit TLS to "localhost" (a name of the test certificate), its CA
    trusted, every folder of the shared namespace (``Partag*``, as LIST names it) synced both ways."""
    (home / "mail").mkdir()
    rc = home / "mbsyncrc"
    rc.write_text(
        f"""IMAPAccount bernard
Host localhost
Port {env.tls_port}
User {BERNARD}
Pass {PASSWORD}
SSLType IMAPS
CertificateFile {env.pki.peer_ca}
AuthMechs LOGIN

IMAPStore far
Account bernard

MaildirStore near
Path {home}/mail/
Inbox {home}/mail/INBOX
SubFolders Verbatim

Channel shared
Far :far:
Near :near:
Patterns "Partag*"
Create Near
Sync All
Expunge None
SyncState *
""",
        encoding="utf-8",
    )
    return rc


async def mbsync(rc: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        MBSYNC, "-c", str(rc), "-V", "-a", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


async def test_mbsync_syncs_a_shared_folder_both_ways(imap_both: IMAPEnv, tmp_path: Path) -> None:
    env = imap_both
    await members(env, "lrswite", "lrswite")
    await env.deliver(message("premier"), SECRETARIAT)
    await env.deliver(message("second"), SECRETARIAT)
    rc = config(env, tmp_path)
    await mbsync(rc)

    folder = tmp_path / "mail" / mutf7.encode(f"Partagé/{SECRETARIAT}") / "INBOX"
    files = sorted([*(folder / "cur").iterdir(), *(folder / "new").iterdir()])
    # Maildir keeps local line ends (LF): the Subject line up to them.
    subjects = sorted(
        f.read_bytes().split(b"Subject: ", 1)[1].split(b"\n", 1)[0].rstrip(b"\r") for f in files
    )
    assert subjects == [b"premier", b"second"]
    assert (tmp_path / "mail" / mutf7.encode(f"Partagé/{SECRETARIAT}") / "Sent").is_dir(), "every folder"

    # Read and flagged in BERNARD's Maildir: "S" and "F" in the file name's info (Maildir ":2,").
    first = next(f for f in files if b"Subject: premier" in f.read_bytes())
    cur = folder / "cur" / (first.name.split(":2,", 1)[0] + ":2,FS")
    first.rename(cur)
    await mbsync(rc)

    org = env.mailboxes[SECRETARIAT]
    inbox = await env.rt.store.folder(org, "INBOX")
    viewer = {address: env.mailboxes[address] for address in (BERNARD, DUPONT)}
    seen = frozenset({"\\Seen"})
    by_bernard = await env.rt.store.snapshot(inbox.id, Viewer(viewer[BERNARD], seen))
    by_dupont = await env.rt.store.snapshot(inbox.id, Viewer(viewer[DUPONT], seen))
    by_org = await env.rt.store.snapshot(inbox.id)
    assert [sorted(m.flags) for m in by_bernard[1]] == [["\\Flagged", "\\Seen"], []]
    assert [sorted(m.flags) for m in by_dupont[1]] == [["\\Flagged"], []], "\\Seen was BERNARD's"
    assert [sorted(m.flags) for m in by_org[1]] == [["\\Flagged"], []]
