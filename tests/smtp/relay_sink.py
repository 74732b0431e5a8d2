"""The operator's relay as tests see it: a local aiosmtpd sink on 127.0.0.1 with STARTTLS (operator B's
certificate of the test PKI, SAN 127.0.0.1) and AUTH, keeping what it receives, for every message
Caducée sends to a patient's personal address (alerts, second-factor codes, activation links)."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.ports import free_port

RELAY_USER = "caducee"
RELAY_PASSWORD = "relay-secret-1"


@dataclass
class Sink:
    """The operator's relay: STARTTLS required (operator B's certificate, SAN 127.0.0.1), then AUTH."""

    pki: Any
    port: int = field(default_factory=free_port)
    received: list[tuple[str, tuple[str, ...], bytes]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            RELAY_USER.encode(),
            RELAY_PASSWORD.encode(),
        )
        if ok:
            with self._lock:
                self.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)  # aiosmtpd then answers 535 itself

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self._lock:
            self.received.append((envelope.mail_from or "", tuple(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 queued at the relay"

    def start(self) -> None:
        ident = self.pki.tls["b.mssante.test"]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(ident.chain_path), str(ident.key_path))
        self._controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="relay.perso.test",
            tls_context=ctx,
            require_starttls=True,
            authenticator=self.authenticate,
            auth_required=True,
            auth_require_tls=True,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[tuple[str, tuple[str, ...], EmailMessage]]:
        with self._lock:
            rows = list(self.received)
        return [
            (sender, rcpts, email.message_from_bytes(data, policy=email.policy.default))  # type: ignore[misc]
            for sender, rcpts, data in rows
        ]
