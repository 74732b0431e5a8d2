"""Issue 13 §8: every listener admits connections through the same gate, with the same limits.

All services run in one process, as ``caducee serve`` starts them. Per listener: with a ceiling of 3
connections per address and 5 in all, 3 sockets from 127.0.0.1 and 2 from 127.0.0.2 are held; the next
from 127.0.0.1 is refused for its address, the next from 127.0.0.3 because the server is full, each in
the protocol's own words (SMTP 421, IMAP BYE [UNAVAILABLE], LDAP notice of disconnection busy (51), HTTP
503); closing a socket frees its place. LDAP and the portal had no limit at all, SMTP no global one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.operation.search import search_operation
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder, encoder

from mailserver import accounts, app
from mailserver.db import migrate
from mailserver.limits import ConnectionGate
from mailserver.runtime import Runtime
from tests.conftest import make_settings
from tests.smtp.conftest import tls_client, wait_for

SERVICES = ["smtp", "submission", "submissions", "imap", "imaps", "ldap", "ldaps", "portal", "admin"]
IMPLICIT_TLS = {"submissions", "imaps", "ldaps"}
ANY = ["127.0.0.1:0"]
# What precedes the refusal's text (the portal's is the body of an HTTP 503, checked in ``refusal``).
REPLIES = {
    "smtp": "421 4.7.0 ",
    "submission": "421 4.7.0 ",
    "submissions": "421 4.7.0 ",
    "imap": "* BYE [UNAVAILABLE] ",
    "imaps": "* BYE [UNAVAILABLE] ",
    "ldap": "51 ",
    "ldaps": "51 ",
    "portal": "",
    "admin": "",
}


@contextlib.asynccontextmanager
async def everything(tmp_path: Path, pki: Any, **limits: Any) -> AsyncIterator[dict[str, Any]]:
    """Every listener of ``app.SERVICES`` on a free port; yields them by service name."""
    a = pki.tls["a.mssante.test"]
    url = f"sqlite+aiosqlite:///{tmp_path}/caducee.db"
    await migrate.upgrade_async(url)
    settings = make_settings(
        tmp_path,
        url,
        tls={"cert": str(a.chain_path), "key": str(a.key_path), "peer_ca": str(pki.peer_ca)},
        smtp={"listen": ANY},
        submission={"listen": ANY, "tls_listen": ANY},
        imap={"listen": ANY, "tls_listen": ANY},
        ldap={"listen": ANY, "tls_listen": ANY},
        portal={"listen": ANY, "secure_cookies": False},
        delivery={"workers": 1},
        limits=limits,
    )
    rt = Runtime.build(settings)
    await asyncio.to_thread(rt.blobs.ensure)
    await accounts.add_domain(rt, "a.mssante.test", patients=False)
    started: list[Any] = []
    try:
        for module in app.SERVICES:
            started.extend(await importlib.import_module(module).start(rt))
        yield {listener.service: listener for listener in started}
    finally:
        for listener in reversed(started):
            await listener.close()
        await rt.close()


def client_tls(pki: Any, service: str) -> ssl.SSLContext | None:
    return tls_client(pki) if service in IMPLICIT_TLS else None


async def open_from(source: str, port: int, ctx: ssl.SSLContext | None) -> tuple[Any, Any]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx, local_addr=(source, 0))


def root_dse_search() -> bytes:
    message = LDAPMessage()
    message["messageID"] = 1
    request = search_operation(
        "", "(objectClass=*)", ldap3.BASE, ldap3.DEREF_NEVER, ["*"], 0, 0, False, False, False
    )
    message["protocolOp"].setComponentByName("searchRequest", request)
    return encoder.encode(message)


async def refusal(service: str, source: str, port: int, ctx: ssl.SSLContext | None) -> str:
    """What the server says, unasked, to a connection it refuses, and that it then closes."""
    reader, writer = await open_from(source, port, ctx)
    try:
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    if service.startswith("ldap"):
        message, _ = decoder.decode(data, asn1Spec=LDAPMessage())
        notice = message["protocolOp"].getComponent()
        assert message["protocolOp"].getName() == "extendedResp" and int(message["messageID"]) == 0
        assert str(notice["responseName"]) == "1.3.6.1.4.1.1466.20036"
        return f"{int(notice['resultCode'])} {notice['diagnosticMessage']}"
    text = data.decode()
    if service in ("portal", "admin"):
        head, _, body = text.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 503 Service Unavailable\r\n") and "Connection: close" in head
        return body
    return text.splitlines()[0]


async def admitted(service: str, source: str, port: int, ctx: ssl.SSLContext | None) -> tuple[Any, Any]:
    """A connection that the server serves (its greeting, or its answer to a first request), kept open."""
    reader, writer = await open_from(source, port, ctx)
    if service.startswith("ldap"):
        writer.write(root_dse_search())
        expected = b"0"  # an LDAPMessage SEQUENCE: the root DSE entry
    elif service == "portal":
        writer.write(b"GET /favicon.ico HTTP/1.1\r\nHost: portal.a.mssante.test\r\n\r\n")
        expected = b"HTTP/1.1 204"
    elif service == "admin":
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        expected = b"HTTP/1.1 200"
    else:
        expected = b"* OK" if service.startswith("imap") else b"220 "
    first = await asyncio.wait_for(reader.read(65536), 10)
    assert first.startswith(expected), first
    return reader, writer


@pytest.mark.parametrize("service", SERVICES)
async def test_connection_ceilings_on_every_listener(tmp_path: Path, pki: Any, service: str) -> None:
    async with everything(tmp_path, pki, connections_per_ip=3, max_connections=5) as listeners:
        listener = listeners[service]
        port, ctx = int(listener.address.rsplit(":", 1)[1]), client_tls(pki, service)

        async def holding(total: int) -> bool:
            gate: ConnectionGate = listener.gate
            return gate.total == total

        held = [await admitted(service, "127.0.0.1", port, ctx) for _ in range(3)]
        per_address = await refusal(service, "127.0.0.1", port, ctx)
        held += [await admitted(service, "127.0.0.2", port, ctx) for _ in range(2)]
        full = await refusal(service, "127.0.0.3", port, ctx)
        assert per_address.startswith(REPLIES[service] + "too many connections from your address"), (
            per_address
        )
        assert full.startswith(REPLIES[service] + "too many connections to this server"), full

        held.pop(0)[1].close()  # one of 127.0.0.1's: its place is free again
        await wait_for(lambda: holding(4))
        again = [await admitted(service, "127.0.0.1", port, ctx)]
        held.pop()[1].close()  # one of 127.0.0.2's: any address may have the place
        await wait_for(lambda: holding(4))
        again.append(await admitted(service, "127.0.0.3", port, ctx))

        events = await listener.gate.audit.events(action=f"{listener.gate.service}-refused")
        assert sorted((e.actor, e.response.rsplit("(", 1)[1]) for e in events) == [
            ("client:127.0.0.1", "[limits] connections_per_ip = 3)"),
            ("client:127.0.0.3", "[limits] max_connections = 5)"),
        ]
        for _reader, writer in held + again:
            writer.close()


async def test_idle_portal_and_ldap_connections_are_closed(tmp_path: Path, pki: Any) -> None:
    """An idle socket holds a place: the portal's (aiohttp keeps one for an hour by default, whether it
    sent a request or not) and LDAP's close after their ``[limits]`` idle timeouts."""
    async with everything(tmp_path, pki, portal_idle_timeout="1s", ldap_idle_timeout="1s") as listeners:
        portal = int(listeners["portal"].address.rsplit(":", 1)[1])
        ldap = int(listeners["ldap"].address.rsplit(":", 1)[1])
        silent = [await open_from("127.0.0.1", port, None) for port in (portal, ldap)]
        kept_alive = await admitted("portal", "127.0.0.1", portal, None)
        for reader, _writer in [*silent, kept_alive]:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        for _reader, writer in [*silent, kept_alive]:
            writer.close()
