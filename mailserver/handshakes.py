"""Failed TLS handshakes, on every listener alike: one log line and one audit event, never a traceback.

A client offering only TLS 1.0/1.1, sharing no cipher with us, or presenting a certificate that does not
chain to ``tls.peer_ca`` is refused during the handshake, before any protocol exchange. Anyone can do
that, so it must cost one line: ``{"event":"tls-handshake-failed","service":..,"peer":..,"reason":..}``
and the audit event ``tls-refused`` (actor ``peer:IP``).

Every listener but the admin one opens through :func:`create_server`. Under ``[server] workers`` > 1
the supervisor binds each of their addresses once, before it forks (:func:`bind_shared`, a plain socket
without SO_REUSEPORT, so a second instance on the same ports is refused at start with EADDRINUSE
instead of silently sharing them); every worker inherits the sockets through ``fork`` and accepts on
them, and the kernel hands each new connection to one of the accepting workers.

STARTTLS (SMTP, IMAP, LDAP) catches the failure where it upgrades the connection. Every listener opens
through :func:`create_server`; for implicit TLS (submissions, imaps, ldaps) it does not hand the
context to asyncio, whose server-side TLS drops a failed handshake silently (it only logs in debug
mode): it accepts the TCP connection, runs the handshake with ``loop.start_tls`` and gives the
service's protocol the connection only once it is encrypted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from config.settings import Settings, parse_listen
from mailserver.logs import log_event
from mailserver.runtime import Runtime

# The settings naming every listener that :func:`create_server` opens (all but ``[admin] listen``).
SHARED_LISTENERS = (
    ("smtp", "listen"),
    ("submission", "listen"),
    ("submission", "tls_listen"),
    ("imap", "listen"),
    ("imap", "tls_listen"),
    ("portal", "listen"),
    ("api", "listen_tls"),
    ("ldap", "listen"),
    ("ldap", "tls_listen"),
)

# Filled by the supervisor of ``[server] workers`` > 1 before it forks: the listening socket of each
# configured (host, port), several when the same one is configured again (port 0). The supervisor keeps
# them open to start workers again; a worker takes each from its own copy (fork copied the dict).
prebound: dict[tuple[str, int], list[socket.socket]] = {}


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
    TLS from its first byte and a failed handshake is reported. In a worker of ``[server] workers`` > 1
    it serves the socket the supervisor bound for ``host:port`` (:func:`bind_shared`)."""
    loop = asyncio.get_running_loop()
    shared = prebound.get((host, port))  # asyncio ignores reuse_address and the like with sock=
    where: dict[str, Any] = {"sock": shared.pop(0)} if shared else {"host": host, "port": port}
    if implicit_tls is None:
        return await loop.create_server(factory, **where, **kwargs)
    pending: set[asyncio.Task[None]] = set()
    return await loop.create_server(
        lambda: _Handshake(rt, service, factory, implicit_tls, pending), **where, **kwargs
    )


def bind_shared(settings: Settings) -> None:
    """Bind and listen on every address of :data:`SHARED_LISTENERS` once, as asyncio would but without
    SO_REUSEPORT, into :data:`prebound`: the supervisor's, before it forks the workers. A port already
    taken, by another program or another Caducée, is an ``OSError`` naming the setting."""
    try:
        for section, key in SHARED_LISTENERS:
            for address in getattr(getattr(settings, section), key):
                host, port = parse_listen(address)
                sock = _bind(f"[{section}] {key}: {address}", host, port)
                prebound.setdefault((host, port), []).append(sock)
    except BaseException:
        for sockets in prebound.values():
            for sock in sockets:
                sock.close()
        prebound.clear()
        raise


def _bind(name: str, host: str, port: int) -> socket.socket:
    """One listening socket for ``host:port`` (SO_REUSEADDR, IPv6 only for an IPv6 address, like
    asyncio); a host name must name one address, since a worker serves one socket per listener."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"{name}: {exc.strerror}") from None
    addresses = sorted({(family, sockaddr) for family, _, _, _, sockaddr in infos})
    if len(addresses) != 1:
        found = ", ".join(str(sockaddr[0]) for _, sockaddr in addresses)
        raise OSError(
            f"{name}: names several addresses ({found}); with [server] workers > 1 give one per listener"
        )
    family, sockaddr = addresses[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(100)  # asyncio's default; each worker's create_server sets the listener's own backlog
    except OSError as exc:
        sock.close()
        refused = OSError(f"{name}: {(exc.strerror or str(exc)).lower()}")  # one line, naming the setting
        refused.errno = exc.errno
        raise refused from None
    return sock
