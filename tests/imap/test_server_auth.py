"""Greeting, CAPABILITY, STARTTLS, LOGINDISABLED, LOGIN, AUTHENTICATE PLAIN + SASL-IR, lock-out, ENABLE."""

from __future__ import annotations

import asyncio
import base64
import imaplib

from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv
from tests.imap.helpers import Client


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_plain_port_offers_starttls_and_refuses_login(imap: IMAPEnv) -> None:
    c = await Client.connect(imap.plain_port)
    assert c.greeting.startswith("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED")
    caps = (await c.ok("CAPABILITY"))[0]
    assert "AUTH=PLAIN" not in caps and "LOGINDISABLED" in caps
    lines = await c.command(f'LOGIN "{MARTIN}" "{PASSWORD}"')
    assert lines[-1].startswith("t2 NO [PRIVACYREQUIRED]")
    lines = await c.command(f"AUTHENTICATE PLAIN {b64(chr(0) + MARTIN + chr(0) + PASSWORD)}")
    assert lines[-1].startswith("t3 NO [PRIVACYREQUIRED]")
    await c.starttls(imap.ctx)
    caps = (await c.ok("CAPABILITY"))[0]
    assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps
    lines = await c.login(MARTIN, PASSWORD)
    assert "[CAPABILITY " in lines[-1] and "IDLE" in lines[-1] and "AUTH=PLAIN" not in lines[-1]
    await c.ok("LOGOUT")
    await c.close()


async def test_starttls_discards_pipelined_plaintext(imap: IMAPEnv) -> None:
    c = await Client.connect(imap.plain_port)
    await c.send("a STARTTLS\r\nb NOOP\r\n")
    assert (await c.line()).startswith("a OK")
    await c.writer.start_tls(imap.ctx)
    assert (await c.command("NOOP"))[0].startswith("t1 OK")  # no answer to the injected "b"
    await c.close()


async def test_authenticate_plain_with_and_without_initial_response(imap: IMAPEnv) -> None:
    c = await imap.connect(None)
    assert "SASL-IR" in c.greeting and "AUTH=PLAIN" in c.greeting
    await c.ok(f"AUTHENTICATE PLAIN {b64(chr(0) + MARTIN + chr(0) + PASSWORD)}")
    await c.close()
    c = await imap.connect(None)
    await c.send("a AUTHENTICATE PLAIN\r\n")
    assert await c.line() == "+ "
    await c.send(b64(MARTIN + "\0" + MARTIN + "\0" + PASSWORD) + "\r\n")
    assert (await c.line()).startswith("a OK [CAPABILITY")
    await c.close()
    c = await imap.connect(None)
    await c.send("a AUTHENTICATE PLAIN\r\n")
    assert await c.line() == "+ "
    await c.send("*\r\n")
    assert (await c.line()).startswith("a BAD")
    assert (await c.command("NOOP"))[-1].startswith("t1 OK")
    lines = await c.command("AUTHENTICATE CRAM-MD5")
    assert lines[-1].startswith("t2 NO")
    await c.close()


async def test_wrong_password_and_lockout(imap: IMAPEnv) -> None:
    c = await imap.connect(None)
    for _ in range(3):
        lines = await c.command(f'LOGIN "{MARTIN}" "wrong"')
        assert lines[-1].split()[1:3] == ["NO", "[AUTHENTICATIONFAILED]"]
    lines = await c.command(f'LOGIN "{MARTIN}" "{PASSWORD}"')
    assert lines[-1].split()[1:3] == ["NO", "[UNAVAILABLE]"]
    events = await imap.rt.audit.events(actor=MARTIN, action="login-failure")
    assert len(events) == 4
    await c.close()


async def test_states_are_enforced(imap: IMAPEnv) -> None:
    c = await imap.connect(None)
    assert (await c.command("SELECT INBOX"))[-1].startswith("t1 BAD")
    assert (await c.command("FROBNICATE"))[-1].startswith("t2 BAD")
    await c.login(MARTIN, PASSWORD)
    assert (await c.command(f'LOGIN "{MARTIN}" "{PASSWORD}"'))[-1].startswith("t4 BAD")
    assert (await c.command("FETCH 1 FLAGS"))[-1].startswith("t5 BAD")
    assert (await c.command("STARTTLS"))[-1].startswith("t6 BAD")
    await c.close()


async def test_enable_and_id(imap: IMAPEnv) -> None:
    c = await imap.connect()
    lines = await c.ok("ENABLE CONDSTORE X-UNKNOWN QRESYNC")
    assert lines[0] == "* ENABLED CONDSTORE QRESYNC"
    lines = await c.ok("ENABLE QRESYNC IMAP4rev2")
    assert lines[0] == "* ENABLED IMAP4rev2"
    lines = await c.ok('ID ("name" "test")')
    assert lines[0].startswith('* ID ("name" "Caducée"') or lines[0].startswith("* ID (")
    await c.ok("SELECT INBOX")
    assert (await c.command("ENABLE UTF8=ACCEPT"))[-1].startswith("t6 BAD")
    await c.close()


async def test_logout_says_bye(imap: IMAPEnv) -> None:
    c = await imap.connect()
    lines = await c.command("LOGOUT")
    assert lines[0].startswith("* BYE") and lines[1] == "t2 OK LOGOUT completed"
    await c.close()


async def test_imaplib_starttls_login(imap: IMAPEnv) -> None:
    def session() -> list[bytes]:
        m = imaplib.IMAP4("127.0.0.1", imap.plain_port)
        m.starttls(imap.ctx)
        m.login(MARTIN, PASSWORD)
        _typ, data = m.list()
        m.logout()
        return data

    data = await asyncio.to_thread(session)
    assert any(b'"INBOX"' in d or b" INBOX" in d for d in data)


async def test_connection_limits(sqlite_runtime, pki) -> None:  # type: ignore[no-untyped-def]
    from tests.imap.conftest import running

    async with running(sqlite_runtime, pki, connections_per_ip=2, connections_per_user=1) as env:
        a = await env.connect()
        b = await env.connect(None)
        lines = await b.command(f'LOGIN "{MARTIN}" "{PASSWORD}"')
        assert lines[-1].split()[1:3] == ["NO", "[LIMIT]"]
        c = await Client.connect(env.tls_port, env.ctx)
        assert c.greeting.startswith("* BYE")
        for x in (a, b, c):
            await x.close()


async def test_eleventh_login_of_one_user_from_one_address_is_refused(imap: IMAPEnv) -> None:
    """Issue 13 §8: the limit that matters is per user *and* address (Dovecot's
    mail_max_userip_connections, 10): a hospital's clinicians all come from one NAT address."""
    from tests.imap.conftest import SECRETARIAT

    limit = 10  # connections_per_user_ip's default
    mine = [await imap.connect() for _ in range(limit)]
    extra = await imap.connect(None)
    lines = await extra.command(f'LOGIN "{MARTIN}" "{PASSWORD}"')
    assert lines[-1].split()[1:3] == ["NO", "[LIMIT]"]
    assert "too many connections for this account from your address" in lines[-1]
    colleagues = [await imap.connect(SECRETARIAT) for _ in range(3)]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", imap.tls_port, ssl=imap.ctx, local_addr=("127.0.0.2", 0)
    )
    elsewhere = Client(reader, writer)
    elsewhere.greeting = await elsewhere.line()
    await elsewhere.login(MARTIN, PASSWORD)  # the same user from another address
    leaving = mine.pop()
    await leaving.ok("LOGOUT")
    assert await leaving.reader.read() == b""  # closed by the server, which released the place first
    await extra.login(MARTIN, PASSWORD)  # the place freed is taken
    [event] = await imap.rt.audit.events(action="imap-refused")
    assert (event.actor, event.remote, event.request) == (MARTIN, "127.0.0.1", "login")
    for c in [*mine, extra, *colleagues, elsewhere]:
        await c.close()
