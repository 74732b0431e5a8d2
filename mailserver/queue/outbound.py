"""Outbound delivery to peer operators: route lookup, mutual TLS, peer identity, one SMTP transaction.

- Route: ``[delivery] routes`` first (tests, private links), else the domain's MX records through
  dnspython (``dns_nameservers`` if configured), with the implicit MX of RFC 5321 §5.1 and the null MX
  of RFC 7505 (a permanent failure).
- STARTTLS is mandatory, with our ``tls.cert`` as client certificate and the peer's verified against
  ``tls.peer_ca``; its subject must then match the recipient domain's trust-list DN (the inbound rule),
  checked *before* MAIL so nothing is ever disclosed to a wrong peer, and so is the revocation of its
  certificate chain (``mailserver.revocation``). Any failure here is temporary:
  the message waits in the queue, it is never sent in clear nor to anyone else.
- Timeouts (RFC 5321 §4.5.3.2), each a setting: the TCP connection ``connect_timeout``, then one per
  reply: the greeting (and EHLO, STARTTLS) 5 min, MAIL 5, RCPT 5, DATA's 354 2, each block of the
  message 3, the reply to the final "." 10 min. The last one matters most: a peer may take minutes to
  store a message, and giving up before its 250 means sending the message again.
- DSN (RFC 3461 §5.2): towards a DSN-capable peer NOTIFY/ORCPT/RET/ENVID are passed on and the peer
  reports; otherwise a delivery counts as ``relayed`` and we report it when SUCCESS was asked for.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from cryptography import x509

from config.settings import DeliverySettings, parse_listen
from mailserver import trust
from mailserver.logs import log_event, private, reply_code
from mailserver.queue.queue import Batch, Outcome
from mailserver.runtime import Runtime
from mailserver.smtp.server import xtext_encode
from mailserver.tls import client_context

log = logging.getLogger("caducee.outbound")


class RouteError(Exception):
    def __init__(self, reply: str, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


class _Temporary(Exception):
    """A failure of the connection or of the peer's identity: try the next host, then later."""


@dataclass(frozen=True)
class Hop:
    host: str
    address: str
    port: int


def _resolver(settings: DeliverySettings) -> dns.asyncresolver.Resolver:
    if not settings.dns_nameservers:
        return dns.asyncresolver.Resolver()
    resolver = dns.asyncresolver.Resolver(configure=False)
    servers = []
    for entry in settings.dns_nameservers:
        try:
            host, port = parse_listen(entry)
        except ValueError:
            host, port = entry, 53
        servers.append(host)
        resolver.port = port
    resolver.nameservers = servers
    resolver.lifetime = settings.connect_timeout
    return resolver


async def resolve(settings: DeliverySettings, domain: str) -> list[Hop]:
    """The hosts to try for ``domain``, best first; RouteError when there is none (for now or for good)."""
    if domain in settings.routes:
        host, port = parse_listen(settings.routes[domain])
        return [Hop(host, host, port)]
    resolver = _resolver(settings)
    try:
        answer = await resolver.resolve(domain, "MX")
        records = sorted(answer, key=lambda r: r.preference)
        if len(records) == 1 and str(records[0].exchange) == ".":
            raise RouteError(f"556 5.1.10 {domain} accepts no mail (null MX)", True)
        hosts = [str(r.exchange).rstrip(".") for r in records]
    except dns.resolver.NXDOMAIN:
        raise RouteError(f"550 5.1.2 domain {domain} does not exist", True) from None
    except dns.resolver.NoAnswer:
        hosts = [domain]
    except dns.exception.DNSException as exc:
        raise RouteError(f"451 4.4.3 cannot resolve MX of {domain}: {exc}", False) from None
    hops: list[Hop] = []
    for host in hosts:
        try:
            addresses = await resolver.resolve(host, "A")
        except dns.exception.DNSException:
            continue
        hops.extend(Hop(host, a.address, 25) for a in addresses)
    if not hops:
        raise RouteError(f"451 4.4.4 no address for the mail hosts of {domain}", False)
    return hops


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {' '.join(exc.message.split())}"


def _kind(code: int) -> str:
    return "permanent" if code >= 500 else "temporary"


DATA_BLOCK = 64 * 1024


async def _connect(hop: Hop) -> socket.socket:
    """The TCP connection alone (the caller bounds it by ``connect_timeout``; the greeting has a
    timeout of its own)."""
    family = socket.AF_INET6 if ":" in hop.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (hop.address, hop.port))
    except BaseException:
        sock.close()
        raise
    return sock


async def send_data(
    client: aiosmtplib.SMTP, data: bytes, settings: DeliverySettings
) -> aiosmtplib.SMTPResponse:
    """DATA with its three timeouts (aiosmtplib's ``data()`` has one for the 354 and the final reply):
    the 354 within ``data_init_timeout``, each block taken by the peer within ``data_block_timeout``,
    the reply to "." within ``data_final_timeout``."""
    start = await client.execute_command(b"DATA", timeout=settings.data_init_timeout)
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    payload = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
    # As aiosmtplib's own execute_data_command: a reply is expected from now on, so one arriving while
    # a block waits for the peer to take it is kept (the protocol drops data nobody expects).
    protocol._response_pending = True
    for offset in range(0, len(payload), DATA_BLOCK):
        protocol.write(payload[offset : offset + DATA_BLOCK])
        try:  # aiosmtplib's flow control (what StreamWriter.drain waits for)
            await asyncio.wait_for(protocol._drain_helper(), settings.data_block_timeout)
        except TimeoutError:
            raise aiosmtplib.SMTPTimeoutError("timed out writing the message to the peer") from None
    response = await protocol.read_response(timeout=settings.data_final_timeout)
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


class Outbound:
    """Sends queue batches; one TLS client context per process (loading the chain once)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.settings.delivery
        self._context: ssl.SSLContext | None = None

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = client_context(self.rt.settings.tls)
        return self._context

    async def send(self, batch: Batch, data: bytes) -> dict[int, Outcome]:
        if batch.relay:
            return await self._relay(batch, data)
        try:
            hops = await resolve(self.settings, batch.domain)
        except RouteError as exc:
            kind = "permanent" if exc.permanent else "temporary"
            return {r.id: Outcome(kind, exc.reply) for r in batch.recipients}
        last = "451 4.4.1 no host answered"
        for hop in hops:
            try:
                return await self._attempt(batch, data, hop)
            except _Temporary as exc:
                last = str(exc)
                log_event(
                    "delivery-attempt-failed",
                    entry=batch.message_id,
                    hop=f"{hop.host} [{hop.address}]:{hop.port}",
                    reply=reply_code(last),
                    **private(response=last),
                )
        return {r.id: Outcome("temporary", last) for r in batch.recipients}

    async def _relay(self, batch: Batch, data: bytes) -> dict[int, Outcome]:
        """A patient alert (the only entries flagged ``relay``) to ``[relay]``: STARTTLS verified against
        ``ca_file`` (the system's CAs when empty), AUTH when ``username`` is set; failures are retried
        by the queue like any other."""
        relay = self.rt.settings.relay
        if not relay.host:
            why = "451 4.3.5 no [relay] host configured"
            return {r.id: Outcome("temporary", why) for r in batch.recipients}
        context = ssl.create_default_context(cafile=relay.ca_file or None)
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            local_hostname=self.rt.settings.server.hostname,
            timeout=self.settings.greeting_timeout,
            start_tls=relay.starttls,
            tls_context=context,
        )
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await client.connect()
            if relay.username:
                password = await asyncio.to_thread(_read_secret, relay.password_file)
                await client.login(relay.username, password)
            addresses = [r.address for r in batch.recipients]
            errors, message = await client.sendmail(batch.sender, addresses, data)
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                log.debug("QUIT after relaying failed; the relay took the message")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = {e.recipient: e for e in exc.recipients}
            return {
                r.id: Outcome(_kind(refused[r.address].code), _reply(refused[r.address]))
                if r.address in refused
                else Outcome("temporary", "451 4.4.2 relay refused the transaction")
                for r in batch.recipients
            }
        except aiosmtplib.SMTPAuthenticationError as exc:  # the operator's settings: fixable, so retried
            why = f"451 4.7.0 relay {relay.host} refused our AUTH: {_reply(exc)}"
            return {r.id: Outcome("temporary", why) for r in batch.recipients}
        except aiosmtplib.SMTPResponseException as exc:
            return {r.id: Outcome(_kind(exc.code), _reply(exc)) for r in batch.recipients}
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            why = f"451 4.4.2 relay {relay.host}:{relay.port} failed: {exc or 'timed out'}"
            log_event("delivery-attempt-failed", entry=batch.message_id, hop="relay", reply="451")
            return {r.id: Outcome("temporary", why) for r in batch.recipients}
        finally:
            client.close()
        outcomes = {}
        for r in batch.recipients:
            if r.address in errors:
                reply = errors[r.address]
                outcomes[r.id] = Outcome(_kind(reply.code), f"{reply.code} {' '.join(reply.message.split())}")
            else:
                outcomes[r.id] = Outcome("relayed", f"250 {' '.join(message.split())}")
        return outcomes

    async def _attempt(self, batch: Batch, data: bytes, hop: Hop) -> dict[int, Outcome]:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                sock = await _connect(hop)
        except (OSError, TimeoutError) as exc:
            why = str(exc) or "timed out"
            raise _Temporary(f"451 4.4.2 connection to {hop.host}:{hop.port} failed: {why}") from None
        client = aiosmtplib.SMTP(
            sock=sock,
            local_hostname=self.rt.settings.server.hostname,
            timeout=self.settings.greeting_timeout,
            use_tls=False,
            start_tls=False,
            tls_context=self.context,
        )
        try:
            await client.connect()
            await client.ehlo()
            if not client.supports_extension("starttls"):
                raise _Temporary(f"451 4.7.4 {hop.host} does not offer STARTTLS: never sent in clear")
            await client.starttls(tls_context=self.context, server_hostname=hop.host)
            await self._check_peer(client, batch.domain, hop)
            await client.ehlo()
            return await self._transaction(client, batch, data)
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            if isinstance(exc, aiosmtplib.SMTPResponseException):
                raise _Temporary(_reply(exc)) from None
            raise _Temporary(f"451 4.4.2 connection to {hop.host}:{hop.port} failed: {exc}") from None
        finally:
            client.close()

    async def _check_peer(self, client: aiosmtplib.SMTP, domain: str, hop: Hop) -> None:
        ssl_object = client.transport.get_extra_info("ssl_object") if client.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        cert = x509.load_der_x509_certificate(der) if der else None
        async with self.rt.db.read() as session:
            why = await trust.check_peer(session, domain, cert.subject if cert else None)
        if why:
            await self.rt.audit.record(domain, "peer-refused", hop.address, f"outbound to {hop.host}", why)
            raise _Temporary(f"451 4.7.0 peer {hop.host} refused: {why}")
        verdict = await self.rt.revocation.check(cert, hop.address) if cert is not None else None
        if verdict is not None and self.rt.revocation.refuses(verdict):
            action = "peer-revoked" if verdict.status == "revoked" else "peer-revocation-unknown"
            await self.rt.audit.record(domain, action, hop.address, f"outbound to {hop.host}", verdict.reason)
            raise _Temporary(f"451 4.7.0 peer {hop.host} refused: {verdict.reason}")

    async def _transaction(self, client: aiosmtplib.SMTP, batch: Batch, data: bytes) -> dict[int, Outcome]:
        dsn = client.supports_extension("dsn")
        options: list[str] = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if client.supports_extension("8bitmime") and any(b > 127 for b in data):
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if batch.smtputf8:
            if not client.supports_extension("smtputf8"):
                return {
                    r.id: Outcome("permanent", "553 5.6.7 the peer does not support SMTPUTF8")
                    for r in batch.recipients
                }
            options.append("SMTPUTF8")
            encoding = "utf-8"
        if dsn and batch.ret:
            options.append(f"RET={batch.ret}")
        if dsn and batch.envid:
            options.append(f"ENVID={xtext_encode(batch.envid)}")
        outcomes: dict[int, Outcome] = {}
        try:
            await client.mail(
                batch.sender, options=options, encoding=encoding, timeout=self.settings.mail_timeout
            )
        except aiosmtplib.SMTPResponseException as exc:
            return {r.id: Outcome(_kind(exc.code), _reply(exc)) for r in batch.recipients}
        accepted = []
        for r in batch.recipients:
            rcpt_options = []
            if dsn and r.notify:
                rcpt_options.append(f"NOTIFY={r.notify}")
            if dsn and r.orcpt:
                kind, _, addr = r.orcpt.partition(";")
                rcpt_options.append(f"ORCPT={kind};{xtext_encode(addr)}")
            try:
                await client.rcpt(
                    r.address, options=rcpt_options, encoding=encoding, timeout=self.settings.rcpt_timeout
                )
                accepted.append(r)
            except aiosmtplib.SMTPResponseException as exc:
                outcomes[r.id] = Outcome(_kind(exc.code), _reply(exc))
        if not accepted:
            await client.rset()
            return outcomes
        try:
            response = await send_data(client, data, self.settings)
        except aiosmtplib.SMTPResponseException as exc:
            outcomes.update({r.id: Outcome(_kind(exc.code), _reply(exc)) for r in accepted})
            return outcomes
        done = f"{response.code} {' '.join(response.message.split())}"
        outcomes.update({r.id: Outcome("sent" if dsn else "relayed", done) for r in accepted})
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            log.debug("QUIT after delivery failed; the message was accepted")
        return outcomes
