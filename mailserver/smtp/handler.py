"""What the SMTP listeners do with an envelope: the part the inbound MTA and submission share.

``Handler.message`` is the durable-before-acknowledged rule: the reply is built only after
``Delivery.commit()`` returned (blob fsync'ed, rows and queue entries committed). A local recipient
refused at commit (quota) does not fail the message: it gets a bounce, the others keep their copy.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
from abc import ABC, abstractmethod

from cryptography import x509

from mailserver import conversations
from mailserver.delivery import DeliveryResult
from mailserver.headers import HeaderView
from mailserver.logs import log_event, private, reply_code
from mailserver.policy import LocalTarget, Refusal, RemoteTarget
from mailserver.queue import dsn
from mailserver.queue.queue import Queue
from mailserver.runtime import Runtime
from mailserver.smtp.server import MailOptions, SMTPEnvelope, SMTPServer
from mailserver.submit import commit_message

log = logging.getLogger("caducee.smtp")


def peer_certificate(server: SMTPServer) -> x509.Certificate | None:
    """The client certificate verified during the TLS handshake, if one was presented (parsed once per
    connection: it cannot change within it)."""
    ssl_object = server.ssl_object
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    if server.peer_certificate is None or server.peer_certificate[0] != der:
        server.peer_certificate = (der, x509.load_der_x509_certificate(der))
    return server.peer_certificate[1]


def received_header(server: SMTPServer, queue_id: str, protocol: str) -> bytes:
    """RFC 5321 §4.4 trace field with the TLS facts (version, cipher, verified peer subject)."""
    helo = "".join(c for c in (server.session.host_name or "unknown") if 32 < ord(c) < 127)[:100]
    parts = [f"Received: from {helo} ([{server.client_ip}])", f"\tby {server.hostname} (Caducée)"]
    tls = _tls_clause(server)
    if tls is not None:
        parts.append(tls)
        protocol += "S"
    if server.session.authenticated:
        protocol += "A"
    parts.append(f"\twith {protocol} id {queue_id};")
    parts.append(f"\t{email.utils.format_datetime(dt.datetime.now(dt.UTC))}")
    return ("\r\n".join(parts) + "\r\n").encode("utf-8", "replace")


def _tls_clause(server: SMTPServer) -> str | None:
    """The Received clause naming the TLS version, cipher and verified peer: fixed for a TLS session,
    so rendered once per connection."""
    ssl_object = server.ssl_object
    if ssl_object is None:
        return None
    if server.tls_trace is not None and server.tls_trace[0] is ssl_object:
        return server.tls_trace[1]
    cipher = ssl_object.cipher()
    tls = f"\t(using {ssl_object.version()} with cipher {cipher[0] if cipher else 'unknown'}"
    cert = peer_certificate(server)
    if cert is not None:
        tls += f";\r\n\t peer certificate {cert.subject.rfc4514_string()} verified"
    server.tls_trace = (ssl_object, tls + ")")
    return server.tls_trace[1]


class Handler(ABC):
    """Base of the MTA and submission handlers (one instance per connection, see ``service``)."""

    service = "smtp"

    def __init__(self, rt: Runtime, queue: Queue | None) -> None:
        self.rt = rt
        self.queue = queue

    # ------------------------------------------------------------------ policy hooks (subclasses)

    def actor(self, server: SMTPServer) -> str:
        return f"peer:{server.client_ip}"

    @abstractmethod
    async def mail(self, server: SMTPServer, address: str, options: MailOptions) -> None:
        """Accept the sender or raise Refusal (the listener's own identity rules)."""

    @abstractmethod
    async def rcpt(
        self, server: SMTPServer, address: str, options: MailOptions
    ) -> LocalTarget | RemoteTarget:
        """Where the recipient goes, or raise Refusal (never relay for a peer)."""

    async def accepted(self, server: SMTPServer, result: DeliveryResult, reply: str) -> None:
        """Called after a message was committed: nothing more by default (receptions are audited by
        the delivery itself); submission audits the send."""
        return None

    async def prepare(self, server: SMTPServer, data: bytes) -> bytes:
        """The message as it will be stored: S/MIME verification (inbound) or signing (submission)."""
        return data

    async def check_header(self, server: SMTPServer, headers: HeaderView) -> None:
        """Refuse (raise Refusal) a header this listener does not accept: nothing by default; submission
        checks who the message says it is from."""
        return None

    def involves_patients(self, server: SMTPServer) -> bool:
        """Whether the patient-conversation rules apply: a hosted patient among the recipients (here), or
        possibly as the sender (submission)."""
        return any(
            isinstance(r.target, LocalTarget) and r.target.type == "PAT" for r in server.envelope.recipients
        )

    # ------------------------------------------------------------------ shared

    async def refused(self, server: SMTPServer, request: str, response: str) -> None:
        """Every SMTP refusal: one audit event (with the addresses; ``request`` and ``response`` are
        printable text) and one log line (without them, unless debug)."""
        log_event(
            "smtp-refused",
            service=server.config.service,
            peer=server.client_ip,
            command=request.split(" ", 1)[0].split(":", 1)[0].upper(),
            reply=reply_code(response),
            **private(request=request[:500], response=response),
        )
        await self.rt.audit.record(
            self.actor(server), f"{self.service}-refused", server.client_ip, request[:500], response
        )

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error", exc_info=error)
        return "451 4.3.0 local error, please try again later"

    async def message(self, server: SMTPServer, data: bytes) -> str:
        """Store/queue the message for every accepted recipient; 250 only once it is durable."""
        env: SMTPEnvelope = server.envelope
        opts = env.options
        queue_id = os.urandom(8).hex()
        recipients = [r.address for r in env.recipients]
        headers = HeaderView.parse(data)
        patients = self.involves_patients(server)
        try:
            await self.check_header(server, headers)
            if patients:
                await conversations.check_message(self.rt, env.mail_from or "", recipients, headers)
            prepared = await self.prepare(server, data)
        except Refusal as refusal:  # audited when the reply is sent (``SMTPServer.push``)
            return refusal.smtp
        if patients and prepared is not data:
            # Conversations follow the message as stored: submission may have given it its Message-ID.
            headers = HeaderView.parse(prepared)
        data = prepared
        protocol = "ESMTP" if server.session.extended_smtp else "SMTP"
        content = received_header(server, queue_id, protocol) + data
        server.busy = True
        try:
            result = await commit_message(
                self.rt,
                self.queue,
                env.mail_from or "",
                env.recipients,
                content,
                headers,
                source=f"{self.service}:{self.actor(server)}",
                remote_addr=server.client_ip,
                patients=patients,
                envid=opts.envid,
                ret=opts.ret,
                smtputf8=opts.smtputf8,
            )
        finally:
            server.busy = False
        if not result.delivered and not result.queued:
            first = next(iter(result.refused.values()), Refusal(451, "4.3.0", "not stored"))
            return first.smtp
        reply = f"250 2.0.0 message accepted as {queue_id}"
        log_event(
            "smtp-accepted",
            service=server.config.service,
            peer=server.client_ip,
            queue_id=queue_id,
            size=len(content),
            delivered=len(result.delivered),
            queued=len(result.queued),
            refused=len(result.refused),
            **private(sender=env.mail_from or "", recipients=recipients),
        )
        await self.accepted(server, result, reply)
        await self._reports(server, env, result, content, queue_id)
        return reply

    async def _reports(
        self, server: SMTPServer, env: SMTPEnvelope, result: DeliveryResult, data: bytes, queue_id: str
    ) -> None:
        """Success DSNs for local deliveries asked with NOTIFY=SUCCESS, bounces for refusals at commit."""
        reports = []
        for r in env.recipients:
            if r.address in result.delivered and r.wants("SUCCESS"):
                reports.append(dsn.RecipientReport(r.address, "delivered", "2.0.0", orcpt=r.orcpt))
            elif r.address in result.refused and r.wants("FAILURE"):
                refusal = result.refused[r.address]
                status = "5" + refusal.enhanced[1:]
                reports.append(dsn.RecipientReport(r.address, "failed", status, refusal.smtp, orcpt=r.orcpt))
        if not reports or not env.mail_from:
            return
        hook = self.queue.enqueue_hook() if self.queue else None
        try:
            sent = await dsn.send(
                self.rt,
                hook,
                env.mail_from,
                reports,
                data,
                envid=env.options.envid,
                ret=env.options.ret,
                arrival=dt.datetime.now(dt.UTC),
            )
        except Exception:
            log.exception("could not send the delivery report for message %s", queue_id)
            return
        if sent and self.queue:
            self.queue.wake()
