"""Bad input gets a precise reply and an audit event, never a traceback nor a 451 (issue 13 items 11, 12).

Byte-exact sequences over real TLS sockets: non-UTF-8 and malformed paths at MAIL and RCPT, pipelined
commands after one that closes the connection, an AUTH response line longer than the limit, and
bytes that are not a TLS ClientHello after STARTTLS.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import socket
import ssl

import pytest

from mailserver.smtp.paths import syntax_error
from mailserver.untrusted import printable
from tests.smtp.conftest import MARTIN, PASSWORD, Raw, SMTPEnv
from tests.smtp.test_mta import peer_session


def no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


async def raw_reply(raw: Raw) -> bytes:
    """One reply line as bytes (``Raw.reply`` decodes, which is what must never fail)."""
    return (await asyncio.wait_for(raw.reader.readline(), 10)).rstrip(b"\r\n")


async def submission_session(env: SMTPEnv) -> Raw:
    raw = await Raw.connect(env.ports["submissions"], env.user())
    await raw.cmd("EHLO client.a.mssante.test")
    plain = base64.b64encode(f"\0{MARTIN}\0{PASSWORD}".encode()).decode()
    assert (await raw.cmd(f"AUTH PLAIN {plain}")).startswith("235")
    return raw


async def test_non_utf8_sender_is_refused_at_mail_and_audited(
    sqlite_env: SMTPEnv, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await peer_session(sqlite_env)
    await raw.send(b"MAIL FROM:<x\xff@b.mssante.test>\r\n")
    reply = await raw_reply(raw)
    assert reply.startswith(b"501 5.1.7 "), reply
    assert reply.decode("ascii").isprintable()
    [event] = await sqlite_env.rt.audit.events(action="mta-refused")
    assert event.request == "MAIL FROM:<x\\xff@b.mssante.test>"
    assert event.response == reply.decode()
    # The session goes on: a good sender is accepted next.
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")).startswith("250 2.1.0")
    await raw.close()
    no_error_logged(caplog)


async def test_non_utf8_relay_attempt_is_refused_at_rcpt_and_audited(
    smtp_env: SMTPEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """On both engines: the audit row is written (PostgreSQL refuses text that is not UTF-8)."""
    sqlite_env = smtp_env
    raw = await peer_session(sqlite_env)
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")).startswith("250 2.1.0")
    await raw.send(b"RCPT TO:<x\xff@evil.example>\r\n")
    reply = await raw_reply(raw)
    assert reply.startswith(b"553 5.1.3 "), reply
    [event] = await sqlite_env.rt.audit.events(action="mta-refused")
    assert (event.actor, event.request) == ("b.mssante.test", "RCPT TO:<x\\xff@evil.example>")
    assert (await raw.cmd(f"RCPT TO:<{MARTIN}>")).startswith("250 2.1.5")
    assert (await raw.cmd("DATA")).startswith("354")
    assert (await raw.cmd("Subject: after\r\n\r\nbody\r\n.")).startswith("250 2.0.0")
    await raw.close()
    assert len(await sqlite_env.inbox(MARTIN)) == 1
    no_error_logged(caplog)


async def test_non_utf8_sender_on_submission(sqlite_env: SMTPEnv, caplog: pytest.LogCaptureFixture) -> None:
    raw = await submission_session(sqlite_env)
    await raw.send(b"MAIL FROM:<dr.martin\xff@a.mssante.test>\r\n")
    assert (await raw_reply(raw)).startswith(b"501 5.1.7 ")
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}>")).startswith("250 2.1.0")
    await raw.send(b"RCPT TO:<dr.autre\xc3@a.mssante.test>\r\n")
    assert (await raw_reply(raw)).startswith(b"553 5.1.3 ")
    events = await sqlite_env.rt.audit.events(action="submission-refused")
    assert [(e.actor, e.request[:9]) for e in events] == [(MARTIN, "MAIL FROM"), (MARTIN, "RCPT TO:<")]
    await raw.close()
    no_error_logged(caplog)


MALFORMED = [
    "a b@b.mssante.test",
    "x@",
    "@b.mssante.test",
    "x@@b.mssante.test",
    "x.@b.mssante.test",
    ".x@b.mssante.test",
    "x..y@b.mssante.test",
    "x@-b.mssante.test",
    "x@b..mssante.test",
    "x@b_mssante.test",
    "x\x01@b.mssante.test",
    "x\x7f@b.mssante.test",
    '"x"y@b.mssante.test',
    "x@[127.0.0.1",
    "dr.martin@example.com@a.mssante.test",
]


VALID = [
    "dr.martin@a.mssante.test",
    "médecin@hôpital.mssante.test",
    "user+tag@b.mssante.test",
    "o'brien@b.mssante.test",
    '"a b"@b.mssante.test',
    '"a\\"b"@b.mssante.test',
    "x@[127.0.0.1]",
    "x@[IPv6:::1]",
    "@a.mssante.test,@b.mssante.test:x@c.mssante.test",
    "x@b-c.mssante.test",
]


@pytest.mark.parametrize("path", VALID)
def test_valid_paths_pass_the_syntax_check(path: str) -> None:
    """Syntax only: what policy then refuses (quoted local parts, source routes) is not malformed."""
    assert syntax_error(path) is None


def test_malformed_paths_fail_the_syntax_check() -> None:
    assert all(syntax_error(path) for path in MALFORMED)
    assert syntax_error("x\udcff@b.mssante.test") == "not UTF-8 or holds control characters"
    assert syntax_error("a" * 250 + "@b.mssante.test") == "longer than 256 octets"
    assert printable("x\udcff\r\n\u200bé") == "x\\xff\\x0d\\x0a\\u200bé"


@pytest.mark.parametrize("path", MALFORMED)
async def test_malformed_paths_are_refused_at_once(sqlite_env: SMTPEnv, path: str) -> None:
    raw = await peer_session(sqlite_env)
    await raw.send(f"MAIL FROM:<{path}>\r\n".encode())
    assert (await raw_reply(raw)).startswith(b"501 5.1.7 ")
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")).startswith("250 2.1.0")
    await raw.send(f"RCPT TO:<{path}>\r\n".encode())
    assert (await raw_reply(raw)).startswith(b"553 5.1.3 ")
    assert (await raw.cmd("RCPT TO:<>")).startswith("553 5.1.3")
    events = await sqlite_env.rt.audit.events(action="mta-refused")
    assert [e.response[:9] for e in events] == ["501 5.1.7", "553 5.1.3", "553 5.1.3"]
    await raw.close()


def _bdat_then_more(port: int, ctx: ssl.SSLContext, tail: bytes) -> bytes:
    """Over implicit TLS, one TLS record holding a BDAT that closes the session and what follows."""
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"EHLO client.a.mssante.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"BDAT x\r\n" + tail)  # one sendall of a short buffer: one TLS record
        return f.read()


@pytest.mark.parametrize("tail", [b"BDAT y\r\nNOOP\r\n", b"BDAT y\r\nEHLO again\r\nSTARTTLS\r\n"])
async def test_nothing_is_written_once_the_session_closes(
    sqlite_env: SMTPEnv, caplog: pytest.LogCaptureFixture, tail: bytes
) -> None:
    out = await asyncio.to_thread(_bdat_then_more, sqlite_env.ports["submissions"], sqlite_env.user(), tail)
    assert out.startswith(b"501 5.5.4 ") and out.count(b"\r\n") == 1, out
    # The server still serves, and logged no traceback.
    raw = await Raw.connect(sqlite_env.ports["submissions"], sqlite_env.user())
    assert (await raw.cmd("NOOP")).startswith("250")
    await raw.close()
    no_error_logged(caplog)


async def test_bdat_closing_on_starttls_session_of_the_mta(
    sqlite_env: SMTPEnv, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await peer_session(sqlite_env)
    await raw.send(b"BDAT x\r\nBDAT y\r\nNOOP\r\nEHLO again\r\n")
    assert (await raw_reply(raw)).startswith(b"501 5.5.4 ")
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""
    no_error_logged(caplog)


async def test_auth_response_line_too_long(sqlite_env: SMTPEnv, caplog: pytest.LogCaptureFixture) -> None:
    raw = await Raw.connect(sqlite_env.ports["submissions"], sqlite_env.user())
    await raw.cmd("EHLO client.a.mssante.test")
    assert (await raw.cmd("AUTH PLAIN")).startswith("334")
    # RFC 4954 §4: an AUTH response may be [limits] smtp_auth_line_length (12,288) octets, not more
    assert (await raw.cmd("A" * 13000)).startswith("500 5.5.2")
    plain = base64.b64encode(f"\0{MARTIN}\0{PASSWORD}".encode()).decode()
    assert (await raw.cmd(f"AUTH PLAIN {plain}")).startswith("235")
    await raw.close()
    no_error_logged(caplog)


@pytest.mark.parametrize("garbage", [b"EHLO client\r\n", b"\x16\x03\x01\x00\x05hello", b"\xff" * 300])
async def test_no_client_hello_after_starttls(
    sqlite_env: SMTPEnv, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    def attempt() -> bytes:
        with socket.create_connection(("127.0.0.1", sqlite_env.ports["smtp"]), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO mx.b.mssante.test\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            s.sendall(b"STARTTLS\r\n")
            assert f.readline().startswith(b"220 ")
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            return f.read()

    await asyncio.to_thread(attempt)

    def fresh() -> int:
        with smtplib.SMTP("127.0.0.1", sqlite_env.ports["smtp"], timeout=10) as s:
            return s.noop()[0]

    assert await asyncio.to_thread(fresh) == 250
    no_error_logged(caplog)


async def test_swaks_non_utf8_sender_gets_501(sqlite_env: SMTPEnv, caplog: pytest.LogCaptureFixture) -> None:
    """The issue's report with a real client: swaks sends the octet as given on its command line."""
    swaks = await asyncio.create_subprocess_exec(
        "swaks",
        "--server",
        f"127.0.0.1:{sqlite_env.ports['submission']}",
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(sqlite_env.pki.peer_ca),
        "--auth",
        "PLAIN",
        "--auth-user",
        MARTIN,
        "--auth-password",
        PASSWORD,
        b"--from",
        b"dr.martin\xff@a.mssante.test",
        "--to",
        "dr.autre@a.mssante.test",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(swaks.communicate(), 30)
    assert swaks.returncode != 0
    assert b"<~* 501 5.1.7 <dr.martin\\xff@a.mssante.test>: bad sender address syntax" in out, out + err
    assert await sqlite_env.inbox("dr.autre@a.mssante.test") == []
    [event] = await sqlite_env.rt.audit.events(action="submission-refused")
    assert event.request == "MAIL FROM:<dr.martin\\xff@a.mssante.test>"
    no_error_logged(caplog)
