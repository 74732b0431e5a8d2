"""Integration fixtures: operator A's real SMTP and IMAP listeners (reused from tests/smtp and tests/imap)
and small socket-level clients for the peer (mutual TLS) and submission (STARTTLS + AUTH) sides."""

from __future__ import annotations

import base64
from email import message_from_bytes
from email.message import Message

from mailserver import accounts
from mailserver.runtime import Runtime
from tests.imap.conftest import imap_both
from tests.smtp.conftest import PASSWORD, Raw, SMTPEnv, smtp_env, sqlite_env

__all__ = ["imap_both", "smtp_env", "sqlite_env"]


async def peer_b(env: SMTPEnv) -> Raw:
    """An MTA session of operator B: STARTTLS with its client certificate, ready for MAIL."""
    raw = await Raw.connect(env.ports["smtp"])
    await raw.cmd("EHLO mx.b.mssante.test")
    await raw.starttls(env.peer())
    assert (await raw.cmd("EHLO mx.b.mssante.test")).startswith("250")
    return raw


async def submitter(env: SMTPEnv, user: str) -> Raw:
    """A submission session after STARTTLS and AUTH PLAIN as ``user``, ready for MAIL."""
    raw = await Raw.connect(env.ports["submission"])
    await raw.cmd("EHLO client.example")
    await raw.starttls(env.user())
    assert (await raw.cmd("EHLO client.example")).startswith("250")
    plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    assert (await raw.cmd(f"AUTH PLAIN {plain}")).startswith("235")
    return raw


async def send_data(raw: Raw, message: bytes) -> str:
    """DATA with dot-stuffing; the final reply line."""
    assert (await raw.cmd("DATA")).startswith("354")
    lines = message.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    await raw.send(body + b".\r\n")
    return (await raw.reply())[-1]


async def usage(rt: Runtime, address: str) -> tuple[int, int]:
    """(bytes, messages) the quota counters hold for ``address``."""
    (line,) = await accounts.quota_lines(rt, address)
    return line.used_bytes, line.used_messages


def parsed(data: bytes) -> Message:
    return message_from_bytes(data)
