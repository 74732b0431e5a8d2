"""Inbound MTA: mutual TLS, trust-list identity of the peer, no relay, audit of every refusal."""

from __future__ import annotations

import ssl
from typing import Any

import aiosmtplib
import pytest

from tests.smtp.conftest import MARTIN, Raw, SMTPEnv, tls_client


async def peer_session(env: SMTPEnv, ctx: ssl.SSLContext | None = None) -> Raw:
    raw = await Raw.connect(env.ports["smtp"])
    await raw.cmd("EHLO mx.b.mssante.test")
    await raw.starttls(ctx or env.peer())
    assert (await raw.cmd("EHLO mx.b.mssante.test")).startswith("250")
    return raw


async def test_peer_delivers_with_trace(smtp_env: SMTPEnv) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=smtp_env.ports["smtp"], start_tls=False, tls_context=smtp_env.peer()
    )
    await client.connect()
    await client.starttls()
    errors, reply = await client.sendmail(
        "dr.durand@b.mssante.test", [MARTIN], b"Subject: bonjour\r\n\r\ncompte rendu\r\n"
    )
    await client.quit()
    assert not errors and reply.startswith("2.0.0 message accepted")
    (msg,) = await smtp_env.inbox(MARTIN)
    head = msg.split(b"\r\n\r\n", 1)[0].decode()
    assert "using TLSv1.3" in head or "using TLSv1.2" in head
    assert "peer certificate CN=mx.b.mssante.test,OU=Operateur,O=Operateur B,C=FR verified" in head
    assert "with ESMTPS" in head
    events = await smtp_env.rt.audit.events(action="receive")
    assert events[-1].actor == MARTIN and "dr.durand@b.mssante.test" in events[-1].request


async def test_mail_before_starttls_is_refused(sqlite_env: SMTPEnv) -> None:
    raw = await Raw.connect(sqlite_env.ports["smtp"])
    await raw.cmd("EHLO mx.b.mssante.test")
    assert (await raw.cmd("MAIL FROM:<x@b.mssante.test>")).startswith("530 5.7.0")


async def test_no_client_certificate(sqlite_env: SMTPEnv) -> None:
    raw = await peer_session(sqlite_env, sqlite_env.user())
    reply = await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")
    assert reply.startswith("530 5.7.0") and "client certificate" in reply
    events = await sqlite_env.rt.audit.events(action="mta-refused")
    assert "client certificate" in events[-1].response


@pytest.mark.parametrize("which", ["tls_impostor", "tls_expired"])
async def test_unknown_ca_impostor_and_expired_fail_the_handshake(sqlite_env: SMTPEnv, which: str) -> None:
    ctx = tls_client(sqlite_env.pki, getattr(sqlite_env.pki, which))
    raw = await Raw.connect(sqlite_env.ports["smtp"])
    await raw.cmd("EHLO mx.b.mssante.test")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await raw.starttls(ctx)
        await raw.cmd("EHLO mx.b.mssante.test")
        await raw.cmd("MAIL FROM:<x@a.mssante.test>")


async def test_unknown_ca_with_smtplib(sqlite_env: SMTPEnv) -> None:
    import asyncio
    import smtplib

    ctx = tls_client(sqlite_env.pki, sqlite_env.pki.tls_impostor)

    def attempt() -> None:
        with smtplib.SMTP("127.0.0.1", sqlite_env.ports["smtp"], timeout=10) as s:
            s.starttls(context=ctx)
            s.mail("x@a.mssante.test")

    with pytest.raises((ssl.SSLError, smtplib.SMTPException, OSError)):
        await asyncio.to_thread(attempt)


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("someone@c.mssante.test", "550 5.7.1"),  # listed, but with another DN
        ("someone@z.example", "550 5.7.1"),  # not in the trust list
        ("someone@a.mssante.test", "550 5.7.1"),  # B's certificate claiming A's domain
    ],
)
async def test_sender_identity_must_match_trust_list(sqlite_env: SMTPEnv, sender: str, expected: str) -> None:
    raw = await peer_session(sqlite_env)
    reply = await raw.cmd(f"MAIL FROM:<{sender}>")
    assert reply.startswith(expected), reply
    assert (await sqlite_env.rt.audit.events(action="mta-refused"))[-1].request.startswith("MAIL FROM")


async def test_null_sender_from_a_listed_peer(sqlite_env: SMTPEnv) -> None:
    raw = await peer_session(sqlite_env)
    assert (await raw.cmd("MAIL FROM:<>")).startswith("250 2.1.0")
    assert (await raw.cmd(f"RCPT TO:<{MARTIN}>")).startswith("250 2.1.5")


RELAY_BATTERY = [
    ("user@b.mssante.test", "550 5.7.1"),  # another operator, even in the trust space
    ("user@example.com", "550 5.7.1"),
    ("dr.martin%example.com@a.mssante.test", "550 5.7.1"),
    ('"dr.martin@example.com"@a.mssante.test', "550 5.7.1"),
    ("@a.mssante.test:dr.martin@example.com", "550 5.7.1"),
    ("@example.com:dr.martin@a.mssante.test", "550 5.7.1"),
    ("example.com!dr.martin@a.mssante.test", "550 5.7.1"),
    ("dr.martin@example.com@a.mssante.test", "553 5.1.3"),  # not an address (RFC 5321 §4.1.2)
    ("nobody@a.mssante.test", "550 5.1.1"),
    ("ancien@a.mssante.test", "550 5.2.1"),
]


@pytest.mark.parametrize(("rcpt", "expected"), RELAY_BATTERY)
async def test_never_relays(sqlite_env: SMTPEnv, rcpt: str, expected: str) -> None:
    raw = await peer_session(sqlite_env)
    await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")
    reply = await raw.cmd(f"RCPT TO:<{rcpt}>")
    assert reply.startswith(expected), reply
    events = await sqlite_env.rt.audit.events(action="mta-refused")
    assert events[-1].actor == "b.mssante.test" and rcpt in events[-1].request


async def test_plain_connection_is_not_an_open_relay(sqlite_env: Any) -> None:
    raw = await Raw.connect(sqlite_env.ports["smtp"])
    await raw.cmd("HELO relay.test")
    assert (await raw.cmd("RCPT TO:<user@example.com>")).startswith("530")
