"""A read-only LDAPv3 address book over the directory, so mail clients autocomplete recipients.

Thunderbird, Outlook and Apple Mail speak LDAP to their address book servers; serving the directory that
way answers the clinicians' "building an address book" pain without a plug-in. The BER codec is ldap3's
RFC 4511 ASN.1 definitions on pyasn1 (maintained, fuzzed by its users); this module only frames messages,
translates filters into indexed SQL and maps rows to attributes.

Rules:
- A simple bind with a mailbox's credentials (through ``rt.auth``: lock-out and audit as everywhere);
  the bind DN is the address itself or ``mail=ADDRESS,…`` / ``uid=ADDRESS,…``. Anonymous and
  unauthenticated binds are refused (48), and so is any bind before TLS (13): a password never crosses
  the network in clear. STARTTLS on ``[ldap] listen``, implicit TLS on ``[ldap] tls_listen``.
- Searching needs a bind (50), except the root DSE that clients read to discover STARTTLS.
- Filters: equality, substrings, presence, approx (as equality), and/or/not, on cn, sn, givenName, mail,
  o, ou, title, l, postalCode, displayName, objectClass; accent- and case-insensitive like the search.
  Ordering filters and extensible matches get unwillingToPerform (53); unknown attributes match nothing.
- Size and time limits: the smaller of the client's and ``[ldap] size_limit``/``time_limit``; the query
  asks for one row more than allowed and stops there (4 sizeLimitExceeded, 3 timeLimitExceeded).
- Writes (add, modify, delete, rename, compare) get unwillingToPerform (53); unknown extended operations
  protocolError (2); undecodable input a notice of disconnection.
- Connections go through the same gate as every listener (``mailserver.limits``): one beyond
  ``max_connections`` or ``connections_per_ip`` gets a notice of disconnection with busy (51), and a
  bind beyond ``connections_per_user_ip`` / ``connections_per_user`` a bindResponse busy (51). A
  connection idle for ``[limits] ldap_idle_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Iterable
from typing import Any

from ldap3.protocol import rfc4511
from ldap3.protocol.rfc4511 import (
    AddResponse,
    AttributeValue,
    BindResponse,
    CompareResponse,
    DelResponse,
    ExtendedResponse,
    LDAPMessage,
    ModifyDNResponse,
    ModifyResponse,
    PartialAttribute,
    ResponseName,
    SearchResultDone,
    SearchResultEntry,
)
from ldap3.strategy.base import BaseStrategy
from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type.namedtype import NamedType
from sqlalchemy import ColumnElement, and_, false, not_, or_, select, true

from config.settings import parse_listen
from directory.search import Entry, M, entry_columns, joined, to_entry, visible
from directory.text import fold
from mailserver import handshakes
from mailserver.limits import ConnectionGate, Refused, Slot
from mailserver.runtime import Runtime
from mailserver.tls import server_context

log = logging.getLogger("caducee.ldap")

STARTTLS_OID = "1.3.6.1.4.1.1466.20037"
NOTICE_OF_DISCONNECTION_OID = "1.3.6.1.4.1.1466.20036"
MAX_MESSAGE = 64 * 1024

SUCCESS = 0
OPERATIONS_ERROR = 1
PROTOCOL_ERROR = 2
TIME_LIMIT_EXCEEDED = 3
SIZE_LIMIT_EXCEEDED = 4
AUTH_METHOD_NOT_SUPPORTED = 7
CONFIDENTIALITY_REQUIRED = 13
NO_SUCH_OBJECT = 32
INVALID_DN_SYNTAX = 34
INAPPROPRIATE_AUTHENTICATION = 48
INVALID_CREDENTIALS = 49
INSUFFICIENT_ACCESS_RIGHTS = 50
BUSY = 51
UNWILLING_TO_PERFORM = 53

OBJECT_CLASSES = ("top", "person", "organizationalPerson", "inetOrgPerson")
# LDAP attribute (lower case) → folded column it is matched against.
_COLUMNS: dict[str, Any] = {
    "cn": M.cn_key,
    "displayname": M.cn_key,
    "sn": M.name_key,
    "givenname": M.first_key,
    "mail": M.address,
    "o": M.org_key,
    "ou": M.service_key,
    "title": M.profession_key,
    "l": M.city_key,
    "postalcode": M.postal_code,
}
# Response operation for each refused write request.
_WRITE_RESPONSES: dict[str, tuple[str, type]] = {
    "modifyRequest": ("modifyResponse", ModifyResponse),
    "addRequest": ("addResponse", AddResponse),
    "delRequest": ("delResponse", DelResponse),
    "modDNRequest": ("modDNResponse", ModifyDNResponse),
    "compareRequest": ("compareResponse", CompareResponse),
}


def _repair_filter_spec() -> None:
    """Make ldap3's recursive ``Filter`` definition decodable by pyasn1 (ldap3 #655, pyasn1 #116).

    ``rfc4511`` gives ``And``/``Or`` their component type and ``Not`` its tag only after ``Filter`` was
    built, so the instances inside ``Filter`` lack them and pyasn1 cannot decode ``(&…)``, ``(|…)`` or
    ``(!…)``. Re-initialising the shared ``NamedTypes`` with fresh instances fixes every ``Filter`` at
    once; encoding (what ldap3's client does) is unaffected.
    """
    named = rfc4511.Filter.componentType
    fresh = {"and": rfc4511.And, "or": rfc4511.Or, "notFilter": rfc4511.Not}
    named.__init__(
        *(
            NamedType(nt.name, fresh[nt.name]() if nt.name in fresh else nt.asn1Object)
            for nt in named.namedTypes
        )
    )


_repair_filter_spec()


class Unsupported(Exception):
    """A filter this server will not evaluate; answered with unwillingToPerform."""


# ---------------------------------------------------------------------------------------------- encoding


def _encode(message_id: int, op_name: str, op: Any) -> bytes:
    message = LDAPMessage()
    message["messageID"] = message_id
    message["protocolOp"].setComponentByName(op_name, op)
    return encoder.encode(message)


def _result(op: Any, code: int, diagnostic: str = "", matched: str = "") -> Any:
    op["resultCode"] = code
    op["matchedDN"] = matched
    op["diagnosticMessage"] = diagnostic
    return op


async def notify_disconnection(writer: asyncio.StreamWriter, code: int, reason: str) -> None:
    """RFC 4511 §4.4.1: the unsolicited notice of disconnection (message ID 0), sent before closing."""
    response = _result(ExtendedResponse(), code, reason)
    response["responseName"] = ResponseName(NOTICE_OF_DISCONNECTION_OID)
    writer.write(_encode(0, "extendedResp", response))
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def _entry(dn: str, attributes: Iterable[tuple[str, list[str]]], types_only: bool) -> Any:
    entry = SearchResultEntry()
    entry["object"] = dn
    attrs = entry["attributes"]
    for i, (name, values) in enumerate(attributes):
        attribute = PartialAttribute()
        attribute["type"] = name
        vals = attribute["vals"]
        for j, value in enumerate([] if types_only else values):
            vals.setComponentByPosition(j, AttributeValue(value.encode("utf-8")))
        attrs.setComponentByPosition(i, attribute)
    return entry


def entry_attributes(entry: Entry) -> list[tuple[str, list[str]]]:
    """The LDAP view of one directory mailbox (attributes with no value are left out)."""
    title = ", ".join(p for p in (entry.profession, entry.skill) if p)
    pairs = [
        ("objectClass", list(OBJECT_CLASSES)),
        ("cn", [entry.display_name]),
        ("displayName", [entry.display_name]),
        ("sn", [entry.last_name or entry.service or entry.organisation or entry.address]),
        ("givenName", [entry.first_name]),
        ("mail", [entry.address]),
        ("o", [entry.organisation]),
        ("ou", [entry.service]),
        ("title", [title]),
        ("street", [entry.street]),
        ("l", [entry.city]),
        ("postalCode", [entry.postal_code]),
    ]
    return [(name, values) for name, values in pairs if all(values)]


def _select(attributes: list[tuple[str, list[str]]], wanted: list[str]) -> list[tuple[str, list[str]]]:
    """RFC 4511 §4.5.1.8: none listed or ``*`` = all user attributes; ``1.1`` = none."""
    lowered = {w.lower() for w in wanted}
    if not lowered or "*" in lowered:
        return attributes
    return [(name, values) for name, values in attributes if name.lower() in lowered]


# ---------------------------------------------------------------------------------------------- filters


def _value(raw: Any) -> str:
    return bytes(raw).decode("utf-8", "replace")


def _needle(attribute: str, value: str) -> str:
    return value.strip().lower() if attribute == "mail" else fold(value)


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def translate(ldap_filter: Any) -> ColumnElement[bool]:
    """An RFC 4511 filter as a condition on ``dir_mailbox`` (never evaluated in Python, row by row)."""
    kind = ldap_filter.getName()
    inner = ldap_filter.getComponent()
    if kind == "and":
        return and_(*(translate(f) for f in inner))
    if kind == "or":
        return or_(*(translate(f) for f in inner))
    if kind == "notFilter":
        return not_(translate(inner["innerNotFilter"]))
    if kind == "present":
        attribute = _value(inner).lower()
        if attribute == "objectclass":
            return true()
        column = _COLUMNS.get(attribute)
        return column != "" if column is not None else false()
    if kind in ("equalityMatch", "approxMatch"):
        attribute, value = _value(inner["attributeDesc"]).lower(), _value(inner["assertionValue"])
        if attribute == "objectclass":
            return true() if value.lower() in {c.lower() for c in OBJECT_CLASSES} else false()
        column = _COLUMNS.get(attribute)
        return column == _needle(attribute, value) if column is not None else false()
    if kind == "substringFilter":
        attribute = _value(inner["type"]).lower()
        column = _COLUMNS.get(attribute)
        if column is None:
            return false()
        pattern = ""
        for part in inner["substrings"]:
            piece = _escape_like(_needle(attribute, _value(part.getComponent())))
            position = part.getName()
            pattern += piece if position == "initial" else f"%{piece}"
            if position == "final":
                break
        else:
            pattern += "%"
        return column.like(pattern, escape="\\")
    raise Unsupported(f"{kind} filters are not supported by this address book")


# ---------------------------------------------------------------------------------------------- sessions


def _parse_bind_name(name: str) -> str | None:
    """The mailbox address of a bind DN: ``ADDRESS``, ``mail=ADDRESS,…`` or ``uid=ADDRESS,…``."""
    name = name.strip()
    if "=" not in name:
        return name if "@" in name else None
    first = name.split(",", 1)[0]
    key, _, value = first.partition("=")
    if key.strip().lower() in ("mail", "uid") and "@" in value:
        return value.strip()
    return None


class Session:
    """One client connection: bind state, TLS state, and the request loop."""

    def __init__(
        self, server: LDAPServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: Slot
    ) -> None:
        self.server = server
        self.rt = server.rt
        self.reader = reader
        self.writer = writer
        self.slot = slot
        self.remote = slot.ip
        self.tls = writer.get_extra_info("ssl_object") is not None
        self.bound: str | None = None

    async def send(self, message_id: int, op_name: str, op: Any) -> None:
        self.writer.write(_encode(message_id, op_name, op))
        await self.writer.drain()

    async def run(self) -> None:
        buffer = b""
        try:
            while True:
                size = BaseStrategy.compute_ldap_message_size(buffer) if len(buffer) > 2 else -1
                if size > MAX_MESSAGE:
                    await self.disconnect("message too large")
                    return
                if size == -1 or len(buffer) < size:
                    chunk = await asyncio.wait_for(
                        self.reader.read(65536), self.rt.settings.limits.ldap_idle_timeout
                    )
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                raw, buffer = buffer[:size], buffer[size:]
                try:
                    message, _ = decoder.decode(raw, asn1Spec=LDAPMessage())
                except PyAsn1Error:
                    await self.disconnect("undecodable LDAP message")
                    return
                if not await self.handle(message):
                    return
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return
        finally:
            # Not waiting for the close to complete: over TLS that is the peer's close_notify, and a
            # client that never sends it would hold the session, and the server's shutdown, for
            # asyncio's 30 s TLS shutdown timeout.
            self.writer.close()

    async def disconnect(self, reason: str) -> None:
        await notify_disconnection(self.writer, PROTOCOL_ERROR, reason)

    async def handle(self, message: Any) -> bool:
        """Answer one request; False ends the session."""
        message_id = int(message["messageID"])
        op_name = message["protocolOp"].getName()
        op = message["protocolOp"].getComponent()
        if op_name == "unbindRequest":
            return False
        if op_name == "abandonRequest":
            return True
        if op_name == "bindRequest":
            await self.bind(message_id, op)
        elif op_name == "searchRequest":
            await self.search(message_id, op)
        elif op_name == "extendedReq":
            return await self.extended(message_id, op)
        elif op_name in _WRITE_RESPONSES:
            response, response_type = _WRITE_RESPONSES[op_name]
            await self.send(
                message_id,
                response,
                _result(response_type(), UNWILLING_TO_PERFORM, "this address book is read-only"),
            )
        else:
            await self.disconnect(f"unexpected {op_name}")
            return False
        return True

    async def bind(self, message_id: int, request: Any) -> None:
        self.bound = None
        self.server.gate.logout(self.slot)
        auth = request["authentication"]
        if int(request["version"]) != 3:
            code, text = PROTOCOL_ERROR, "only LDAP version 3 is supported"
        elif auth.getName() != "simple":
            code, text = AUTH_METHOD_NOT_SUPPORTED, "only simple bind is supported"
        else:
            name, password = _value(request["name"]), bytes(auth.getComponent()).decode("utf-8", "replace")
            address = _parse_bind_name(name)
            if not name or not password:
                code, text = INAPPROPRIATE_AUTHENTICATION, "anonymous bind refused: bind as your mailbox"
            elif not self.tls:
                code, text = CONFIDENTIALITY_REQUIRED, "use STARTTLS or LDAPS before sending a password"
            elif address is None:
                code, text = INVALID_DN_SYNTAX, "bind as your mailbox address or mail=ADDRESS,<base DN>"
            else:
                outcome = await self.rt.auth.authenticate(address, password, self.remote, "ldap")
                if not outcome.ok or outcome.address is None:
                    code, text = INVALID_CREDENTIALS, "invalid credentials"
                elif (refused := self.server.gate.login(self.slot, outcome.address)) is not None:
                    code, text = BUSY, refused.text
                else:
                    self.bound = outcome.address
                    code, text = SUCCESS, ""
        await self.send(message_id, "bindResponse", _result(BindResponse(), code, text))

    async def extended(self, message_id: int, request: Any) -> bool:
        oid = _value(request["requestName"])
        if oid != STARTTLS_OID:
            await self.send(
                message_id,
                "extendedResp",
                _result(ExtendedResponse(), PROTOCOL_ERROR, f"unknown operation {oid}"),
            )
            return True
        response = ExtendedResponse()
        response["responseName"] = ResponseName(STARTTLS_OID)
        if self.tls:
            await self.send(
                message_id, "extendedResp", _result(response, OPERATIONS_ERROR, "TLS already active")
            )
            return True
        await self.send(message_id, "extendedResp", _result(response, SUCCESS))
        try:
            await self.writer.start_tls(self.server.tls_context)
        except OSError as exc:  # ssl.SSLError, a reset or the handshake timeout
            await handshakes.report(self.rt, "ldap", self.remote, exc)
            return False
        self.tls = True
        return True

    async def search(self, message_id: int, request: Any) -> None:
        base = _value(request["baseObject"]).strip()
        scope = int(request["scope"])
        wanted = [_value(a) for a in request["attributes"]]
        types_only = bool(request["typesOnly"])
        base_dn = self.server.base_dn
        if base == "" and scope == 0:
            await self.root_dse(message_id, wanted, types_only)
            return
        if self.bound is None:
            await self.done(message_id, INSUFFICIENT_ACCESS_RIGHTS, "bind as your mailbox first")
            return
        normalised = ",".join(p.strip() for p in base.lower().split(","))
        if normalised == base_dn.lower():
            if scope == 0:
                ou = base_dn.split(",", 1)[0].partition("=")[2]
                entry = _entry(
                    base_dn,
                    _select([("objectClass", ["top", "organizationalUnit"]), ("ou", [ou])], wanted),
                    types_only,
                )
                await self.send(message_id, "searchResEntry", entry)
                await self.done(message_id, SUCCESS)
                return
            condition: ColumnElement[bool] = true()
        elif normalised.endswith("," + base_dn.lower()) and scope == 0:
            address = _parse_bind_name(base)
            if address is None:
                await self.done(message_id, NO_SUCH_OBJECT, "no such entry", matched=base_dn)
                return
            condition = M.address == address.lower()
        else:
            await self.done(message_id, NO_SUCH_OBJECT, f"entries live under {base_dn}", matched="")
            return
        try:
            condition = and_(condition, translate(request["filter"]))
        except Unsupported as exc:
            await self.done(message_id, UNWILLING_TO_PERFORM, str(exc))
            return
        settings = self.rt.settings.ldap
        client_size, client_time = int(request["sizeLimit"]), int(request["timeLimit"])
        size_limit = min(client_size, settings.size_limit) if client_size else settings.size_limit
        time_limit = min(client_time, settings.time_limit) if client_time else settings.time_limit
        started = time.monotonic()
        try:
            rows = await asyncio.wait_for(self._query(condition, size_limit + 1), time_limit)
        except TimeoutError:
            await self.done(message_id, TIME_LIMIT_EXCEEDED, f"time limit of {time_limit:g} s exceeded")
            return
        for row in rows[:size_limit]:
            entry = to_entry(row)
            dn = f"mail={entry.address},{base_dn}"
            await self.send(
                message_id, "searchResEntry", _entry(dn, _select(entry_attributes(entry), wanted), types_only)
            )
            if time.monotonic() - started > time_limit:
                await self.done(message_id, TIME_LIMIT_EXCEEDED, f"time limit of {time_limit:g} s exceeded")
                return
        if len(rows) > size_limit:
            await self.done(
                message_id, SIZE_LIMIT_EXCEEDED, f"more than {size_limit} entries match: refine the search"
            )
            return
        await self.done(message_id, SUCCESS)

    async def _query(self, condition: ColumnElement[bool], limit: int) -> list[Any]:
        stmt = (
            joined(select(*entry_columns()))
            .where(visible(), condition)
            .order_by(M.name_key, M.first_key, M.address)
            .limit(limit)
        )
        async with self.rt.db.read() as session:
            return list((await session.execute(stmt)).all())

    async def root_dse(self, message_id: int, wanted: list[str], types_only: bool) -> None:
        attributes = [
            ("objectClass", ["top"]),
            ("namingContexts", [self.server.base_dn]),
            ("supportedLDAPVersion", ["3"]),
            ("supportedExtension", [STARTTLS_OID]),
        ]
        lowered = {w.lower() for w in wanted}
        chosen = (
            attributes if not lowered or "*" in lowered or "+" in lowered else _select(attributes, wanted)
        )
        await self.send(message_id, "searchResEntry", _entry("", chosen, types_only))
        await self.done(message_id, SUCCESS)

    async def done(self, message_id: int, code: int, text: str = "", matched: str = "") -> None:
        await self.send(message_id, "searchResDone", _result(SearchResultDone(), code, text, matched))


class LDAPServer:
    """State shared by the listeners: the runtime, the TLS context and the live sessions."""

    def __init__(self, rt: Runtime, tls_context: ssl.SSLContext) -> None:
        self.rt = rt
        self.tls_context = tls_context
        self.base_dn = ",".join(p.strip() for p in rt.settings.ldap.base_dn.split(","))
        self.sessions: set[asyncio.Task[None]] = set()
        self.gate = ConnectionGate("ldap", rt.settings.limits, rt.audit, rt.metrics)

    def protocol(self) -> asyncio.StreamReaderProtocol:
        """A connection's protocol: ``serve`` on streams (what ``asyncio.start_server`` would make)."""
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self.serve)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        slot = self.gate.connect(str(peer[0]) if peer else "")
        if isinstance(slot, Refused):  # audited by the gate
            await notify_disconnection(writer, BUSY, slot.text)
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self.sessions.add(task)
        try:
            await Session(self, reader, writer, slot).run()
        except asyncio.CancelledError:
            # ``Listener.close`` at shutdown. The task ends normally rather than cancelled: Python 3.11's
            # stream server calls ``task.exception()`` when it is done, which raises for a cancelled task
            # and logs an error with a traceback.
            return
        except Exception:
            log.exception("LDAP session failed")
        finally:
            self.gate.release(slot)
            if task is not None:
                self.sessions.discard(task)


class Listener:
    """One listening socket (``app.Listener`` protocol)."""

    def __init__(self, service: str, server: asyncio.Server, ldap: LDAPServer) -> None:
        self.service = service
        self.ldap = ldap
        self.gate = ldap.gate
        self._server = server
        sock = server.sockets[0].getsockname()
        self.address = f"{sock[0]}:{sock[1]}"
        self.port = int(sock[1])

    async def close(self) -> None:
        """Stop accepting and end the sessions (searches are short; nothing is left half-written)."""
        self._server.close()
        for task in list(self.ldap.sessions):
            task.cancel()
        await asyncio.gather(*self.ldap.sessions, return_exceptions=True)
        await self.ldap.gate.drain()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()


async def start(rt: Runtime) -> list[Listener]:
    """Open every configured LDAP listener (``app.SERVICES`` entry point)."""
    settings = rt.settings.ldap
    if not settings.listen and not settings.tls_listen:
        return []
    ctx = server_context(rt.settings.tls)
    ldap = LDAPServer(rt, ctx)
    listeners: list[Listener] = []
    try:
        for service, addresses, implicit in (
            ("ldap", settings.listen, False),
            ("ldaps", settings.tls_listen, True),
        ):
            for address in addresses:
                host, port = parse_listen(address)
                tls = ctx if implicit else None
                server = await handshakes.create_server(
                    rt, service, ldap.protocol, host, port, tls, reuse_address=True
                )
                listeners.append(Listener(service, server, ldap))
    except BaseException:
        for listener in listeners:
            await listener.close()
        raise
    return listeners
