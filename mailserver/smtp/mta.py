"""The inbound MTA: peer operators of the trust space deliver to our hosted mailboxes, nothing else.

At MAIL the peer must be inside TLS (enforced before any MAIL by ``require_starttls``) with a client
certificate that chained to ``tls.peer_ca`` during the handshake, and that certificate's subject must be
the trust-list DN of the sender's domain (for a null sender, of some trust-list domain), and no
certificate of its chain revoked (``mailserver.revocation``). Recipients are
hosted mailboxes only: this listener never relays, whoever asks.
"""

from __future__ import annotations

from cryptography import x509

from mailserver import trust
from mailserver.policy import LocalTarget, Refusal, RemoteTarget, route_recipient, split_address
from mailserver.revocation import Verdict
from mailserver.smtp.handler import Handler, peer_certificate
from mailserver.smtp.server import MailOptions, SMTPServer
from smime import service as smime_service


class MTAHandler(Handler):
    service = "mta"
    peer_domain: str | None = None
    revocation: Verdict | None = None  # of the peer's certificate chain, once per connection

    def actor(self, server: SMTPServer) -> str:
        return self.peer_domain or f"peer:{server.client_ip}"

    async def mail(self, server: SMTPServer, address: str, options: MailOptions) -> None:
        if not server.tls_active:
            raise Refusal(530, "5.7.0", "must issue a STARTTLS command first")
        cert = peer_certificate(server)
        if cert is None:
            raise Refusal(530, "5.7.0", "a client certificate of the MSSanté trust space is required")
        await self._check_revocation(server, cert)
        if not address:
            async with self.rt.db.read() as session:
                domains = await trust.domains_of(session, cert.subject)
            if not domains:
                raise Refusal(
                    550,
                    "5.7.1",
                    f"certificate subject {cert.subject.rfc4514_string()} is not in the trust list",
                )
            self.peer_domain = domains[0]
            return
        _local, domain = split_address(address)
        if domain == self.peer_domain:
            # Already verified on this connection, whose certificate cannot change.
            return
        async with self.rt.db.read() as session:
            why = await trust.check_peer(session, domain, cert.subject)
        if why:
            raise Refusal(550, "5.7.1", f"<{address}>: {why}")
        self.peer_domain = domain

    async def _check_revocation(self, server: SMTPServer, cert: x509.Certificate) -> None:
        """Refuse a peer whose certificate chain is revoked (550) or, with ``crl_unreachable =
        "refuse"``, of unknown status or with unreadable PKI files (451: it retries); checked once per
        connection."""
        if self.revocation is None:
            self.revocation = await self.rt.revocation.check(cert, server.client_ip)
        verdict = self.revocation
        if verdict.status == "revoked":
            await self.rt.audit.record(
                self.actor(server), "peer-revoked", server.client_ip, "MAIL", verdict.reason
            )
            raise Refusal(550, "5.7.1", verdict.reason)
        if self.rt.revocation.refuses(verdict):
            await self.rt.audit.record(
                self.actor(server), "peer-revocation-unknown", server.client_ip, "MAIL", verdict.reason
            )
            raise Refusal(451, "4.7.0", f"revocation status of the certificate unknown: {verdict.reason}")

    async def prepare(self, server: SMTPServer, data: bytes) -> bytes:
        """Verify S/MIME signatures and record the result (Authentication-Results), RFC 8551 / 8601."""
        return await smime_service.prepare_for_local_delivery(self.rt, data)

    async def rcpt(
        self, server: SMTPServer, address: str, options: MailOptions
    ) -> LocalTarget | RemoteTarget:
        async with self.rt.db.lookup() as session:
            return await route_recipient(
                session,
                address,
                authenticated=False,
                size=options.size,
                defaults=self.rt.store.default_limits,
            )
