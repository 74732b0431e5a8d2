"""Submission on both ports: AUTH only inside TLS, PLAIN and LOGIN, lock-out, sender rules, routing."""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib

import aiosmtplib
import pytest

from mailserver.queue.queue import Queue
from tests.smtp.conftest import MARTIN, PASSWORD, SECRETARIAT, Raw, SMTPEnv


async def client(env: SMTPEnv, port_name: str) -> aiosmtplib.SMTP:
    implicit = port_name == "submissions"
    c = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=env.ports[port_name],
        use_tls=implicit,
        start_tls=False,
        tls_context=env.user(),
    )
    await c.connect()
    if not implicit:
        await c.starttls()
    await c.ehlo()
    return c


async def test_auth_refused_before_starttls(sqlite_env: SMTPEnv) -> None:
    raw = await Raw.connect(sqlite_env.ports["submission"])
    await raw.send("EHLO client\r\n")
    assert not any("AUTH" in line for line in await raw.reply())
    plain = base64.b64encode(f"\0{MARTIN}\0{PASSWORD}".encode()).decode()
    assert (await raw.cmd(f"AUTH PLAIN {plain}")).startswith("530")
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}>")).startswith("530")


@pytest.mark.parametrize("port_name", ["submission", "submissions"])
@pytest.mark.parametrize("mechanism", ["plain", "login"])
async def test_auth_and_local_delivery(sqlite_env: SMTPEnv, port_name: str, mechanism: str) -> None:
    c = await client(sqlite_env, port_name)
    assert "auth" in c.esmtp_extensions
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as before:
        await c.mail(MARTIN)
    assert before.value.code == 530
    await getattr(c, f"auth_{mechanism}")(MARTIN, PASSWORD)
    errors, _ = await c.sendmail(MARTIN, ["dr.autre@a.mssante.test"], b"Subject: x\r\n\r\nbody\r\n")
    await c.quit()
    assert not errors
    (msg,) = await sqlite_env.inbox("dr.autre@a.mssante.test")
    assert b"with ESMTPSA" in msg
    # RFC 6409 §8: the submission server completes a message that lacks Message-ID and Date.
    assert re.search(rb"\r\nMessage-ID: <[^>]+@mx\.a\.mssante\.test>\r\n", msg)
    assert re.search(rb"\r\nDate: \w{3}, \d", msg)
    sends = await sqlite_env.rt.audit.events(action="send")
    assert sends[-1].actor == MARTIN


async def test_implicit_tls_with_smtplib(sqlite_env: SMTPEnv) -> None:
    ctx = sqlite_env.user()

    def send() -> None:
        with smtplib.SMTP_SSL("127.0.0.1", sqlite_env.ports["submissions"], context=ctx, timeout=10) as s:
            s.login(MARTIN, PASSWORD)
            s.sendmail(SECRETARIAT, ["dr.autre@a.mssante.test"], b"Subject: as org\r\n\r\nhi\r\n")

    await asyncio.to_thread(send)
    assert len(await sqlite_env.inbox("dr.autre@a.mssante.test")) == 1


async def test_wrong_password_and_lockout(sqlite_env: SMTPEnv) -> None:
    c = await client(sqlite_env, "submission")
    for _ in range(3):
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as exc:
            await c.auth_plain(MARTIN, "wrong-password")
        assert exc.value.code == 535
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as locked:
        await c.auth_plain(MARTIN, PASSWORD)
    assert locked.value.code == 454
    failures = await sqlite_env.rt.audit.events(action="login-failure")
    assert len(failures) == 4


async def test_sender_must_be_the_user_or_a_granted_org(sqlite_env: SMTPEnv) -> None:
    c = await client(sqlite_env, "submission")
    await c.auth_login(MARTIN, PASSWORD)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
        await c.mail("dr.autre@a.mssante.test")
    assert exc.value.code == 550 and exc.value.message.startswith("5.7.1")
    await c.rset()
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await c.mail("")
    await c.rset()
    assert (await c.mail(SECRETARIAT)).code == 250


async def test_recipient_routing(sqlite_env: SMTPEnv) -> None:
    c = await client(sqlite_env, "submissions")
    await c.auth_plain(MARTIN, PASSWORD)
    await c.mail(MARTIN)
    await c.rcpt("dr.autre@a.mssante.test")
    await c.rcpt("dr.durand@b.mssante.test", options=["NOTIFY=SUCCESS,FAILURE"])
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as outside:
        await c.rcpt("someone@gmail.example")
    assert outside.value.code == 550 and "not in the MSSanté trust space" in outside.value.message
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await c.rcpt("x%y@b.mssante.test")
    assert (await c.data(b"Subject: mixed\r\n\r\nhello\r\n")).code == 250
    await c.quit()
    assert len(await sqlite_env.inbox("dr.autre@a.mssante.test")) == 1
    entries = await Queue(sqlite_env.rt).entries()
    assert [r["address"] for e in entries for r in e["recipients"]] == ["dr.durand@b.mssante.test"]


async def test_plain_port_refuses_tls_less_auth_with_smtplib(sqlite_env: SMTPEnv) -> None:
    def attempt() -> None:
        with smtplib.SMTP("127.0.0.1", sqlite_env.ports["submission"], timeout=10) as s:
            s.ehlo()
            s.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{MARTIN}\0{PASSWORD}".encode()).decode())
            code, _ = s.docmd("MAIL", f"FROM:<{MARTIN}>")
            assert code == 530

    await asyncio.to_thread(attempt)


async def test_eleventh_auth_of_one_user_from_one_address_is_refused(sqlite_env: SMTPEnv) -> None:
    """Issue 13 §8: ``connections_per_user_ip`` (10) at AUTH on both submission ports together; a
    colleague behind the same address still gets in, and a place freed is taken."""
    limit = 10  # connections_per_user_ip's default
    leaving = await Raw.connect(sqlite_env.ports["submissions"], sqlite_env.user())
    await leaving.cmd("EHLO client.a.mssante.test")
    plain = base64.b64encode(f"\0{MARTIN}\0{PASSWORD}".encode()).decode()
    assert (await leaving.cmd(f"AUTH PLAIN {plain}")).startswith("235")
    mine = [await client(sqlite_env, ("submission", "submissions")[i % 2]) for i in range(limit)]
    for c in mine[: limit - 1]:
        await c.auth_plain(MARTIN, PASSWORD)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        await mine[-1].auth_plain(MARTIN, PASSWORD)
    assert refused.value.code == 454
    assert refused.value.message == "4.7.0 too many connections for this account from your address"
    colleague = await client(sqlite_env, "submission")
    await colleague.auth_plain(SECRETARIAT, PASSWORD)
    assert (await leaving.cmd("QUIT")).startswith("221")
    assert await leaving.reader.read() == b""  # closed by the server, which released the place first
    await mine[-1].auth_plain(MARTIN, PASSWORD)
    [event] = await sqlite_env.rt.audit.events(action="submission-refused")
    assert (event.actor, event.remote, event.request) == (MARTIN, "127.0.0.1", "login")
    for c in [*mine, colleague]:
        await c.quit()
