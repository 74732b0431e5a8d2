"""Failed TLS handshakes, on every listener alike: one log line and one audit event, never a traceback.

A client offering only TLS 1.0/1.1, sharing no cipher with us, or presenting a certificate that does not
chain to ``tls.peer_ca`` is refused during the handshake, before any protocol exchange. Anyone can do
that, so it must cost one line: ``{"event":"tls-handshake-failed","service":..,"peer":..,"reason":..}``
and the audit event ``tls-refused`` (actor ``peer:IP``).

Every listener but the admin one opens through :func:`create_server`, which also shares the port
between worker processes (``[server] workers``).

STARTTLS (SMTP, IMAP, LDAP) catches the failure where it upgrades the connection. Every listener opens
through :func:`create_server`; for implicit TLS (submissions, imaps, ldaps) it does not hand the
context to asyncio, whose server-side TLS drops a failed handshake silently (it only logs in debug
mode): it accepts the TCP connection, runs the handshake with ``loop.start_tls`` and gives the
service's protocol the connection only once it is encrypted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from mailserver.logs import log_event
from mailserver.runtime import Runtime


def reason(exc: BaseException) -> str:
    """What went wrong, in the words of OpenSSL when it has some (``UNSUPPORTED_PROTOCOL``,
    ``NO_SHARED_CIPHER``, ``CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.reason or 'CERTIFICATE_VERIFY_FAILED'}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__  # a reset, or asyncio's handshake timeout


async def report(rt: Runtime, service: str, peer: str, exc: BaseException) -> None:
    """Log and audit one failed handshake (``peer`` is the client's IP address)."""
    why = reason(exc)
    rt.metrics.tls_failure(service)
    log_event("tls-handshake-failed", logging.WARNING, service=service, peer=peer, reason=why)
    await rt.audit.record(f"peer:{peer}", "tls-refused", peer, f"{service} TLS handshake", why)


def peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else ""


class _Handshake(asyncio.Protocol):
    """One accepted TCP connection until its TLS handshake is over; then the service's protocol takes
    the encrypted transport. What the TLS layer delivers in between (data, EOF, loss), which can happen
    before the waiting task runs again, is kept and handed over in order."""

    def __init__(
        self,
        rt: Runtime,
        service: str,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        pending: set[asyncio.Task[None]],
    ) -> None:
        self.rt = rt
        self.service = service
        self.factory = factory
        self.context = context
        self.pending = pending
        self.early: list[bytes] = []
        self.eof = False
        self.lost: tuple[Exception | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # nothing is read until the TLS layer owns the socket
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        peer = peer_ip(transport)
        try:
            tls = await asyncio.get_running_loop().start_tls(transport, self, self.context, server_side=True)
        except OSError as exc:  # ssl.SSLError, a reset or the handshake timeout
            await report(self.rt, self.service, peer, exc)
            return
        if tls is None:  # lost right after the handshake
            return
        protocol = self.factory()
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        if self.early:
            protocol.data_received(b"".join(self.early))
        if self.eof:
            protocol.eof_received()
        if self.lost is not None:
            protocol.connection_lost(self.lost[0])

    def data_received(self, data: bytes) -> None:
        self.early.append(data)

    def eof_received(self) -> None:
        self.eof = True  # over TLS the transport closes after EOF whatever this returns

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)


async def create_server(
    rt: Runtime,
    service: str,
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    implicit_tls: ssl.SSLContext | None,
    **kwargs: Any,
) -> asyncio.Server:
    """``loop.create_server(factory, host, port, **kwargs)``; with ``implicit_tls``, every connection is
    TLS from its first byte and a failed handshake is reported. Under ``[server] workers`` > 1 the
    socket is opened with SO_REUSEPORT, so the kernel spreads connections over the workers."""
    loop = asyncio.get_running_loop()
    kwargs.setdefault("reuse_port", rt.worker is not None)
    if implicit_tls is None:
        return await loop.create_server(factory, host, port, **kwargs)
    pending: set[asyncio.Task[None]] = set()
    return await loop.create_server(
        lambda: _Handshake(rt, service, factory, implicit_tls, pending), host, port, **kwargs
    )
