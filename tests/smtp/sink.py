"""A slow peer operator for queue tests: an aiosmtpd server on loopback that delays its replies.

It offers STARTTLS with operator B's certificate (so the outbound side's trust-list check passes),
runs in its own thread and event loop (the test's blocking clients never stall it), and records each
transaction: the client's EHLO name, the sender, the recipients of that one transaction and the
subject. ``started`` holds every DATA received, ``done`` only those answered with the final 250 (a
client that disconnects during the delay cancels the handler, so its transaction never gets there).
"""

from __future__ import annotations

import asyncio
import email.parser
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.ports import free_port


@dataclass(frozen=True)
class Transaction:
    helo: str
    sender: str
    recipients: tuple[str, ...]
    subject: str


@dataclass
class SlowSink:
    """``final_delay(transaction)`` is how long the reply to the final "." waits (seconds), or at most
    how long when ``release`` is given: then the replies wait until the test sets it."""

    pki: Any
    final_delay: Callable[[Transaction], float] = lambda _t: 0.0
    started: list[Transaction] = field(default_factory=list)
    done: list[Transaction] = field(default_factory=list)
    release: threading.Event | None = None
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        headers = email.parser.BytesHeaderParser().parsebytes(envelope.content)
        txn = Transaction(
            session.host_name or "",
            envelope.mail_from or "",
            tuple(envelope.rcpt_tos),
            str(headers.get("Subject", "")),
        )
        with self._lock:
            self.started.append(txn)
        if self.release is not None:
            await asyncio.to_thread(self.release.wait, self.final_delay(txn))
        else:
            await asyncio.sleep(self.final_delay(txn))
        with self._lock:
            self.done.append(txn)
        return "250 2.0.0 queued at the sink"

    def start(self) -> None:
        ident = self.pki.tls["b.mssante.test"]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(ident.chain_path), str(ident.key_path))
        self.port = free_port()
        self._controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="mx.b.mssante.test",
            tls_context=ctx,
            require_starttls=True,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def snapshot(self) -> tuple[list[Transaction], list[Transaction]]:
        with self._lock:
            return list(self.started), list(self.done)
