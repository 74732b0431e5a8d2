"""The API over mutual TLS (``[api] listen_tls``): hospital software logs its APP mailbox in with its
IGC-Santé certificate instead of a password.

Each listener serves the portal's application (``web.make_app``: the sending API, the directory API)
over TLS with ``[tls] cert``/``key``, asking for a client certificate that OpenSSL verifies against
``tls.peer_ca``: a certificate from another PKI, or expired, fails the handshake (one
``tls-handshake-failed`` line and a ``tls-refused`` audit event, ``mailserver.handshakes``). A request
without an ``Authorization`` header is then logged in by its certificate through
``Authenticator.authenticate_certificate``, the very function SASL EXTERNAL uses: the same revocation
checker (``[tls] crl``, ``[auth] client_crl``, distribution points, OCSP), the same registrations
(``caducee mailbox cert add``), the mailbox's allowed methods, the lock-out and the ``login`` /
``login-failure`` audit events. A refused certificate is a 403 problem (the reason stays in the
audit trail, as for EXTERNAL). Connections count in the ``api`` gate of ``[limits]``.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from config.settings import parse_listen
from mailserver import handshakes
from mailserver.auth import AuthOutcome
from mailserver.limits import ConnectionGate
from mailserver.portal.http import RT, remote
from mailserver.runtime import Runtime
from mailserver.tls import server_context

if TYPE_CHECKING:
    from mailserver.portal import web as portal_web


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER client certificate of the request's TLS connection, None on plain HTTP or without one."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


async def certificate_login(request: web.Request, service: str) -> AuthOutcome | None:
    """The mailbox the connection's client certificate is registered for (None without a
    certificate); a refused one is an outcome that is not ``ok``, already audited."""
    der = peer_certificate(request)
    if der is None:
        return None
    return await request.app[RT].auth.authenticate_certificate(der, None, remote(request), service)


async def start(rt: Runtime) -> list[portal_web.PortalListener]:
    """One mutual-TLS listener per ``[api] listen_tls`` address, all behind one connection gate."""
    # Here, not at the top: the portal's application itself asks this module for the certificate.
    from mailserver.portal import web as portal_web

    if not rt.settings.api.listen_tls:
        return []
    context = server_context(rt.settings.tls, "optional")
    gate = ConnectionGate("api", rt.settings.limits, rt.audit, rt.metrics)
    listeners = []
    for address in rt.settings.api.listen_tls:
        host, port = parse_listen(address)
        runner = web.AppRunner(
            portal_web.make_app(rt, rt.queue.enqueue_hook()),
            access_log=None,
            shutdown_timeout=5,
            keepalive_timeout=rt.settings.limits.portal_idle_timeout,
        )
        await runner.setup()
        handlers = runner.server
        assert handlers is not None
        server = await handshakes.create_server(
            rt,
            "api",
            lambda handlers=handlers: portal_web.Admission(gate, handlers),
            host,
            port,
            context,
            reuse_address=True,
        )
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        listener = portal_web.PortalListener(runner, server, gate, f"{bound_host}:{bound_port}")
        listener.service = "api"
        listeners.append(listener)
    return listeners
