"""Submission checks the header's author too (RFC 6409 §8): From and Sender must name only addresses
the authenticated user may send as (their mailbox, an ORG they were granted), not just MAIL FROM."""

from __future__ import annotations

import asyncio
import base64
import smtplib

import pytest

from tests.smtp.conftest import MARTIN, PASSWORD, SECRETARIAT, Raw, SMTPEnv

AUTRE = "dr.autre@a.mssante.test"
CHEF = "chef@a.mssante.test"
NOT_MARTINS = f"is not an address {MARTIN} may send as"


def _submit(env: SMTPEnv, header: str, *, mail_from: str = MARTIN) -> tuple[int, str]:
    """smtplib over STARTTLS + AUTH as dr.martin; (code, text) of the end of DATA."""
    raw = (header + "To: <dr.autre@a.mssante.test>\r\nSubject: Avis\r\n\r\nBonjour.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", env.ports["submission"], timeout=10) as s:
        s.starttls(context=env.user())
        s.login(MARTIN, PASSWORD)
        try:
            s.sendmail(mail_from, [AUTRE], raw)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        return 250, ""


@pytest.mark.parametrize(
    ("header", "refused"),
    [
        (f"From: Chef <{CHEF}>\r\n", f"From: <{CHEF}> {NOT_MARTINS}"),
        (f"from: <{CHEF}>\r\n", f"From: <{CHEF}> {NOT_MARTINS}"),
        (f"FROM: {CHEF}\r\n", f"From: <{CHEF}> {NOT_MARTINS}"),
        (f"From: <{MARTIN}>\r\nSender: <{CHEF}>\r\n", f"Sender: <{CHEF}> {NOT_MARTINS}"),
        (f"From: <{MARTIN}>, Chef <{CHEF}>\r\nSender: <{MARTIN}>\r\n", f"From: <{CHEF}> {NOT_MARTINS}"),
        (f"From: <{MARTIN}>\r\nFrom: <{CHEF}>\r\n", f"From: <{CHEF}> {NOT_MARTINS}"),
        (f'From: "{CHEF}" <{MARTIN}>\r\n', f"From: <{CHEF}> {NOT_MARTINS}"),
        (
            f"From: =?utf-8?q?chef=40a=2Emssante=2Etest?= <{MARTIN}>\r\n",
            f"From: <{CHEF}> {NOT_MARTINS}",
        ),
        (f"From: Direction: <{MARTIN}>, <{CHEF}>;\r\n", f"From: <{CHEF}> {NOT_MARTINS}"),
        ('From: "chef"@a.mssante.test\r\n', f'From: <"chef"@a.mssante.test> {NOT_MARTINS}'),
        ("From: Chef\r\n", f"From: <Chef> {NOT_MARTINS}"),
        ("From: Chef <>\r\n", "From: names no address (RFC 5322 §3.6.2)"),
    ],
    ids=[
        "other",
        "lower-case-name",
        "upper-case-name",
        "sender",
        "second-mailbox",
        "second-field",
        "address-as-display-name",
        "encoded-display-name",
        "group-member",
        "quoted-local-part",
        "no-domain",
        "no-address",
    ],
)
async def test_header_author_refused(sqlite_env: SMTPEnv, header: str, refused: str) -> None:
    code, text = await asyncio.to_thread(_submit, sqlite_env, header)
    assert (code, text) == (550, f"5.7.1 {refused}")
    assert await sqlite_env.inbox(AUTRE) == []
    [event] = await sqlite_env.rt.audit.events(action="submission-refused")
    assert (event.actor, event.request, event.response) == (MARTIN, "DATA", f"550 {text}")


@pytest.mark.parametrize(
    "header",
    [
        f"From: Dr Martin <{MARTIN.upper()}>\r\n",
        f"From: Secrétariat <{SECRETARIAT}>\r\nSender: Dr Martin <{MARTIN}>\r\n",
        f"From: <{MARTIN}>, <{SECRETARIAT}>\r\nSender: <{MARTIN}>\r\n",
        f'From: "Dr Martin ({MARTIN})" <{MARTIN}>\r\n',
        "",
    ],
    ids=["own-any-case", "granted-org-with-sender", "both", "own-in-display-name", "no-from"],
)
async def test_header_author_accepted(sqlite_env: SMTPEnv, header: str) -> None:
    assert await asyncio.to_thread(_submit, sqlite_env, header) == (250, "")
    [stored] = await sqlite_env.inbox(AUTRE)
    assert header.encode() in stored


async def test_header_author_refused_over_bdat(sqlite_env: SMTPEnv) -> None:
    """CHUNKING (RFC 3030) ends in the same check as DATA."""
    raw = await Raw.connect(sqlite_env.ports["submissions"], sqlite_env.user())
    try:
        await raw.cmd("EHLO client")
        plain = base64.b64encode(f"\0{MARTIN}\0{PASSWORD}".encode()).decode()
        assert (await raw.cmd(f"AUTH PLAIN {plain}")).startswith("235")
        assert (await raw.cmd(f"MAIL FROM:<{MARTIN}>")).startswith("250")
        assert (await raw.cmd(f"RCPT TO:<{AUTRE}>")).startswith("250")
        body = f"From: Chef <{CHEF}>\r\nSubject: x\r\n\r\nBonjour.\r\n".encode()
        await raw.send(b"BDAT %d LAST\r\n" % len(body) + body)
        [reply] = await raw.reply()
        assert reply == f"550 5.7.1 From: <{CHEF}> {NOT_MARTINS}"
    finally:
        await raw.close()
    assert await sqlite_env.inbox(AUTRE) == []
