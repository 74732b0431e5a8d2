"""Quota over real sockets: SMTP refuses at RCPT (declared SIZE) or per recipient at commit, with a DSN;
IMAP APPEND/COPY answer NO [OVERQUOTA] without side effects, and EXPUNGE gives the space back at once."""

from __future__ import annotations

import re

from mailserver import accounts
from tests.imap.conftest import IMAPEnv, message
from tests.imap.helpers import Client
from tests.integration.conftest import parsed, peer_b, send_data, submitter, usage
from tests.smtp.conftest import MARTIN, SECRETARIAT, SMTPEnv, wait_for

AUTRE = "dr.autre@a.mssante.test"
BODY = b"Subject: compte rendu\r\n\r\n" + b"ligne de compte rendu\r\n" * 40


async def _id(env: SMTPEnv, address: str) -> int:
    return (await accounts.get_mailbox(env.rt, address)).id


async def test_mta_rcpt_with_size_over_quota_is_452(smtp_env: SMTPEnv) -> None:
    await accounts.set_mailbox_quota(smtp_env.rt, MARTIN, 4000, None)
    raw = await peer_b(smtp_env)
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test> SIZE=5000")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{MARTIN}>")).startswith("452 4.2.2")
    assert (await raw.cmd(f"RCPT TO:<{SECRETARIAT}>")).startswith("250")
    await raw.cmd("RSET")
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test> SIZE=3000")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{MARTIN}>")).startswith("250")
    await raw.close()


async def test_submission_rcpt_with_size_over_quota_is_452(smtp_env: SMTPEnv) -> None:
    """The remaining quota counts what the mailbox already holds; the message-count limit applies too."""
    await smtp_env.rt.store.deliver(await smtp_env.rt.store.prepare(BODY), [await _id(smtp_env, AUTRE)])
    await accounts.set_mailbox_quota(smtp_env.rt, AUTRE, len(BODY) + 3000, None)
    raw = await submitter(smtp_env, MARTIN)
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}> SIZE=3001")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{AUTRE}>")).startswith("452 4.2.2")
    assert (await raw.cmd(f"RCPT TO:<{SECRETARIAT}>")).startswith("250")
    await raw.cmd("RSET")
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}> SIZE=3000")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{AUTRE}>")).startswith("250")
    await raw.cmd("RSET")
    await accounts.set_mailbox_quota(smtp_env.rt, AUTRE, None, 1)
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}> SIZE=10")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{AUTRE}>")).startswith("452 4.2.2")
    await raw.close()


async def test_mta_one_full_recipient_is_refused_alone(smtp_env: SMTPEnv) -> None:
    """Without SIZE the quota is only known at commit: the full mailbox loses its copy, not the others."""
    await accounts.set_mailbox_quota(smtp_env.rt, AUTRE, 200, None)
    before = await usage(smtp_env.rt, AUTRE)
    raw = await peer_b(smtp_env)
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{AUTRE}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{MARTIN}>")).startswith("250")
    assert (await send_data(raw, BODY)).startswith("250")
    await raw.close()
    (stored,) = await smtp_env.inbox(MARTIN)
    assert b"ligne de compte rendu" in stored
    assert await smtp_env.inbox(AUTRE) == []
    assert await usage(smtp_env.rt, AUTRE) == before


async def test_submission_full_recipient_gets_failure_dsn(smtp_env: SMTPEnv) -> None:
    await accounts.set_mailbox_quota(smtp_env.rt, AUTRE, 200, None)
    before = await usage(smtp_env.rt, AUTRE)
    raw = await submitter(smtp_env, MARTIN)
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{AUTRE}> NOTIFY=FAILURE")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{SECRETARIAT}> NOTIFY=FAILURE")).startswith("250")
    assert (await send_data(raw, b"From: <" + MARTIN.encode() + b">\r\n" + BODY)).startswith("250")
    await raw.close()
    (stored,) = await smtp_env.inbox(SECRETARIAT)
    assert b"ligne de compte rendu" in stored
    assert await smtp_env.inbox(AUTRE) == []
    assert await usage(smtp_env.rt, AUTRE) == before
    (report,) = await wait_for(lambda: smtp_env.inbox(MARTIN))
    msg = parsed(report)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    status = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert f"rfc822;{AUTRE}" in text.replace(" ", "")
    assert re.search(r"Action:\s*failed", text) and re.search(r"Status:\s*5\.2\.2", text)
    assert SECRETARIAT not in text


# --------------------------------------------------------------------------- IMAP (RFC 9208)

NOTE_SIZE = 3000
LIMIT = 8192  # two notes fit, a third does not; 8 KiB in GETQUOTA


def note(n: int) -> bytes:
    head = message(f"Quota {n}", "")
    return head + b"x" * (NOTE_SIZE - len(head) - 2) + b"\r\n"


def untagged(lines: list[str], word: str) -> list[str]:
    return [line for line in lines if line.startswith("* ") and word in line]


def completion(lines: list[str]) -> list[str]:
    """[status, response code] of the tagged completion."""
    return lines[-1].split(" ", 3)[1:3]


async def append(client: Client, folder: str, data: bytes) -> list[str]:
    tag = client.tag()
    await client.send(f"{tag} APPEND {folder} {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
    return await client.until(tag)


async def status(client: Client, folder: str, items: str) -> str:
    (line,) = untagged(await client.ok(f"STATUS {folder} ({items})"), "STATUS")
    return line


async def quota(client: Client) -> str:
    lines = await client.ok("GETQUOTAROOT INBOX")
    assert '* QUOTAROOT INBOX ""' in lines
    (line,) = [line for line in lines if line.startswith("* QUOTA ")]
    return line


async def test_imap_append_over_storage_is_overquota_without_change(imap_both: IMAPEnv) -> None:
    await accounts.set_mailbox_quota(imap_both.rt, MARTIN, LIMIT, None)
    client = await imap_both.connect()
    assert "* 0 EXISTS" in await client.ok("SELECT INBOX")
    for n in range(2):
        assert completion(await append(client, "INBOX", note(n)))[0] == "OK"
    assert not untagged(await client.ok("NOOP"), "EXISTS")
    before = await status(client, "INBOX", "MESSAGES UIDNEXT SIZE")
    refused = await append(client, "INBOX", note(2))
    assert completion(refused) == ["NO", "[OVERQUOTA]"]
    assert not untagged(refused, "EXISTS")
    assert not untagged(await client.ok("NOOP"), "EXISTS")
    assert await status(client, "INBOX", "MESSAGES UIDNEXT SIZE") == before
    assert await usage(imap_both.rt, MARTIN) == (2 * NOTE_SIZE, 2)
    assert await quota(client) == f'* QUOTA "" (STORAGE 6 {LIMIT // 1024})'
    await client.close()


async def test_imap_multiappend_is_all_or_nothing(imap_both: IMAPEnv) -> None:
    """RFC 3502: when the second message of a MULTIAPPEND does not fit, neither is appended."""
    await accounts.set_mailbox_quota(imap_both.rt, MARTIN, LIMIT, None)
    await imap_both.deliver(note(0), MARTIN)
    client = await imap_both.connect()
    before = await status(client, "INBOX", "MESSAGES UIDNEXT")
    first, second = note(1), note(2)
    tag = client.tag()
    await client.send(
        f"{tag} APPEND INBOX {{{len(first)}+}}\r\n".encode()
        + first
        + f" {{{len(second)}+}}\r\n".encode()
        + second
        + b"\r\n"
    )
    assert completion(await client.until(tag)) == ["NO", "[OVERQUOTA]"]
    assert await status(client, "INBOX", "MESSAGES UIDNEXT") == before
    assert await usage(imap_both.rt, MARTIN) == (NOTE_SIZE, 1)
    await client.close()


async def test_imap_copy_over_message_count_leaves_destination_unchanged(imap_both: IMAPEnv) -> None:
    for n in range(2):
        await imap_both.deliver(note(n), MARTIN)
    await accounts.set_mailbox_quota(imap_both.rt, MARTIN, None, 3)
    client = await imap_both.connect()
    await client.ok("CREATE Archives")
    await client.ok("SELECT INBOX")
    before = await status(client, "Archives", "MESSAGES UIDNEXT")
    refused = await client.command("COPY 1:2 Archives")
    assert completion(refused) == ["NO", "[OVERQUOTA]"], refused
    assert await status(client, "Archives", "MESSAGES UIDNEXT") == before
    assert await usage(imap_both.rt, MARTIN) == (2 * NOTE_SIZE, 2)
    assert completion(await client.command("COPY 1 Archives"))[0] == "OK"
    assert await usage(imap_both.rt, MARTIN) == (2 * NOTE_SIZE, 3), "a copy shares its blob's storage"
    moved = await client.command("MOVE 1:2 Archives")
    assert completion(moved)[0] == "OK", "a MOVE adds nothing to the mailbox, even at its limit"
    assert "MESSAGES 3" in await status(client, "Archives", "MESSAGES")
    assert await usage(imap_both.rt, MARTIN) == (2 * NOTE_SIZE, 3)
    await client.close()


async def test_imap_expunge_frees_quota_at_once(imap_both: IMAPEnv) -> None:
    await accounts.set_mailbox_quota(imap_both.rt, MARTIN, LIMIT, None)
    for n in range(2):
        await imap_both.deliver(note(n), MARTIN)
    client = await imap_both.connect()
    await client.ok("SELECT INBOX")
    assert completion(await append(client, "INBOX", note(2))) == ["NO", "[OVERQUOTA]"]
    await client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert "DELETED-STORAGE 3000" in await status(client, "INBOX", "DELETED DELETED-STORAGE")
    assert "DELETED 1" in await status(client, "INBOX", "DELETED")
    expunged = await client.ok("EXPUNGE")
    assert untagged(expunged, "EXPUNGE") == ["* 1 EXPUNGE"]
    assert await quota(client) == f'* QUOTA "" (STORAGE 3 {LIMIT // 1024})'
    assert await usage(imap_both.rt, MARTIN) == (NOTE_SIZE, 1)
    appended = await append(client, "INBOX", note(3))
    assert completion(appended)[0] == "OK" and untagged(appended, "EXISTS") == ["* 2 EXISTS"]
    assert "DELETED-STORAGE 0" in await status(client, "INBOX", "DELETED-STORAGE")
    await client.close()
