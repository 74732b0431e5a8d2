"""The extended protocol over real sockets: EHLO, enhanced codes, PIPELINING, BDAT, DSN, SIZE, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mailserver.smtp.server import with_enhanced_code, xtext_decode, xtext_encode
from tests.smtp.conftest import MARTIN, Raw, SMTPEnv, start_env, wait_for
from tests.smtp.test_bad_input import submission_session
from tests.smtp.test_mta import peer_session


def test_enhanced_code_insertion() -> None:
    assert with_enhanced_code("250 OK") == "250 2.0.0 OK"
    assert with_enhanced_code("503 Error: need RCPT command") == "503 5.5.1 Error: need RCPT command"
    assert with_enhanced_code("550 5.1.1 no such user") == "550 5.1.1 no such user"
    assert with_enhanced_code("354 End data") == "354 End data"
    assert xtext_decode(xtext_encode("a+b=c d")) == "a+b=c d"


async def test_ehlo_advertises_extensions(sqlite_env: SMTPEnv) -> None:
    raw = await Raw.connect(sqlite_env.ports["smtp"])
    await raw.send("EHLO mx.b.mssante.test\r\n")
    before = await raw.reply()
    assert before[-1] == "250 STARTTLS" and not any("AUTH" in line for line in before)
    await raw.starttls(sqlite_env.peer())
    await raw.send("EHLO mx.b.mssante.test\r\n")
    after = [line[4:] for line in await raw.reply()]
    for ext in (
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "CHUNKING",
    ):
        assert ext in after
    assert "STARTTLS" not in after


async def test_pipelined_transaction(sqlite_env: SMTPEnv) -> None:
    raw = await peer_session(sqlite_env)
    await raw.send(
        "MAIL FROM:<dr.durand@b.mssante.test>\r\n"
        f"RCPT TO:<{MARTIN}>\r\nRCPT TO:<nobody@a.mssante.test>\r\n"
        "RCPT TO:<dr.autre@a.mssante.test>\r\nDATA\r\n"
    )
    replies = [(await raw.reply())[-1][:9] for _ in range(5)]
    assert replies == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354 End d"]
    assert (await raw.cmd("Subject: p\r\n\r\n..dot\r\n.")).startswith("250 2.0.0")
    (msg,) = await sqlite_env.inbox(MARTIN)
    assert msg.endswith(b"\r\n.dot\r\n")
    assert len(await sqlite_env.inbox("dr.autre@a.mssante.test")) == 1


async def test_bdat_chunks(sqlite_env: SMTPEnv) -> None:
    raw = await peer_session(sqlite_env)
    body1, body2 = b"Subject: chunks\r\n\r\n.line one\r\n", b"line two\r\n"
    await raw.send(
        b"MAIL FROM:<dr.durand@b.mssante.test> BODY=8BITMIME\r\n"
        + f"RCPT TO:<{MARTIN}>\r\n".encode()
        + f"BDAT {len(body1)}\r\n".encode()
        + body1
        + f"BDAT {len(body2)} LAST\r\n".encode()
        + body2
    )
    replies = [(await raw.reply())[-1] for _ in range(4)]
    assert replies[2].startswith("250 2.0.0 ") and replies[3].startswith("250 2.0.0 message accepted")
    (msg,) = await sqlite_env.inbox(MARTIN)
    assert msg.endswith(body1 + body2)
    assert (await raw.cmd("NOOP")).startswith("250 2.0.0")


async def test_bdat_refused_chunk_keeps_stream_in_step(sqlite_env: SMTPEnv) -> None:
    raw = await peer_session(sqlite_env)
    await raw.send(b"BDAT 10 LAST\r\n0123456789NOOP\r\n")
    assert (await raw.reply())[-1].startswith("503 5.5.1")
    assert (await raw.reply())[-1].startswith("250 2.0.0")
    await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")
    await raw.cmd(f"RCPT TO:<{MARTIN}>")
    await raw.send(b"BDAT 3\r\nabc")
    await raw.reply()
    assert (await raw.cmd("DATA")).startswith("503 5.5.1")
    assert (await raw.cmd("BDAT x")).startswith("501 5.5.4")


async def test_dsn_parameters(sqlite_env: SMTPEnv) -> None:
    raw = await peer_session(sqlite_env)
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test> RET=HDRS ENVID=QQ+2B1")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{MARTIN}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{MARTIN}")).startswith(
        "250"
    )
    assert (await raw.cmd("RCPT TO:<dr.autre@a.mssante.test> NOTIFY=NEVER,SUCCESS")).startswith("501 5.5.4")
    assert (await raw.cmd("RCPT TO:<dr.autre@a.mssante.test> FOO=BAR")).startswith("555 5.5.4")
    await raw.cmd("RSET")
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test> RET=ALL")).startswith("501 5.5.4")


async def test_size_limits(tmp_path: Path, pki: Any) -> None:
    env = await start_env(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path}/c.db", pki, limits={"message_size": "2KiB"}
    )
    try:
        raw = await peer_session(env)
        assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test> SIZE=999999")).startswith("552 5.3.4")
        await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")
        await raw.cmd(f"RCPT TO:<{MARTIN}>")
        await raw.cmd("DATA")
        assert (await raw.cmd("Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 40 + ".")).startswith(
            "552 5.3.4"
        )
        await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")
        await raw.cmd(f"RCPT TO:<{MARTIN}>")
        await raw.send(b"BDAT 3000 LAST\r\n" + b"x" * 3000)
        assert (await raw.reply())[-1].startswith("552 5.3.4")
        assert (await raw.cmd("NOOP")).startswith("250")
        assert await env.inbox(MARTIN) == []
    finally:
        await env.close()


async def test_line_length_recipients_idle_and_per_ip_limits(tmp_path: Path, pki: Any) -> None:
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/c.db",
        pki,
        limits={
            "smtp_line_length": 600,
            "recipients_per_message": 2,
            "smtp_idle_timeout": "1s",
            "connections_per_ip": 3,
        },
    )
    try:
        raw = await peer_session(env)
        assert (await raw.cmd("NOOP " + "x" * 700)).startswith("500 5.5.2")
        await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")
        await raw.cmd(f"RCPT TO:<{MARTIN}>")
        await raw.cmd("RCPT TO:<dr.autre@a.mssante.test>")
        assert (await raw.cmd("RCPT TO:<secretariat@a.mssante.test>")).startswith("452 4.5.3")
        await raw.cmd("DATA")
        assert (await raw.cmd("Subject: long\r\n\r\n" + "y" * 700 + "\r\n.")).startswith("500 5.5.2")
        others = [await Raw.connect(env.ports["smtp"]) for _ in range(2)]
        refused = await asyncio.open_connection("127.0.0.1", env.ports["smtp"])
        line = await asyncio.wait_for(refused[0].readline(), 10)
        assert line.startswith(b"421 4.7.0")
        assert await asyncio.wait_for(others[0].reader.read(), 10) == b""  # idle timeout closes it

        async def gone() -> bool:
            return not env.started[0].config.active

        await wait_for(gone)
        assert (await Raw.connect(env.ports["smtp"])) is not None
    finally:
        await env.close()


@pytest.mark.parametrize("address", ["médecin@a.mssante.test"])
async def test_smtputf8_recipient_is_parsed(sqlite_env: SMTPEnv, address: str) -> None:
    raw = await peer_session(sqlite_env)
    await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test> SMTPUTF8")
    assert (await raw.cmd(f"RCPT TO:<{address}>")).startswith("550 5.1.1")


async def test_a_stopping_server_finishes_the_message_in_flight_then_says_421(sqlite_env: SMTPEnv) -> None:
    """SIGTERM half-way through DATA: the message is read to its end, stored and answered 250, then
    the session hears 421 (RFC 5321 §3.8); a session between commands hears 421 at once."""
    sender, idle = await submission_session(sqlite_env), await submission_session(sqlite_env)
    assert (await sender.cmd(f"MAIL FROM:<{MARTIN}>")).startswith("250")
    assert (await sender.cmd("RCPT TO:<secretariat@a.mssante.test>")).startswith("250")
    assert (await sender.cmd("DATA")).startswith("354")
    await sender.send(f"From: {MARTIN}\r\nTo: secretariat@a.mssante.test\r\nSubject: en vol\r\n\r\n")
    await sender.send("ligne\r\n" * 20000)
    await asyncio.sleep(0.2)
    listeners = [item for item in sqlite_env.started if hasattr(item, "config")]
    closing = asyncio.gather(*(listener.close() for listener in listeners))
    assert (await idle.reply())[-1].startswith("421 4.3.2")
    await sender.send("fin\r\n.\r\n")
    assert (await sender.reply())[-1].startswith("250 2.0.0")
    assert (await sender.reply())[-1].startswith("421 4.3.2")
    await asyncio.wait_for(closing, 10)
    assert len(await sqlite_env.inbox("secretariat@a.mssante.test")) == 1
