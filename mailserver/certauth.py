"""Client certificates for SASL EXTERNAL: software (a hospital's patient-record system) logs its
applicative mailbox in with an IGC-Santé certificate instead of a password.

The TLS handshake of a listener with ``client_cert = "optional"`` already verified the chain to
``tls.peer_ca`` and the validity dates (OpenSSL). This module re-checks what a long-lived connection
or a reloaded PKI can change — the dates, the issuer among the PKI's CAs with a valid signature —
and revocation of the whole chain (``mailserver.revocation``), then says how the
certificate is matched against those registered for mailboxes (``caducee mailbox cert add``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailserver.revocation import RevocationChecker


class CertificateError(Exception):
    """A certificate refused; the text is the audit trail's reason."""


@dataclass(frozen=True)
class CertificateFacts:
    """What a registration stores and a login matches on (RFC 4514 names, serial in hex)."""

    issuer: str
    serial: str
    subject: str
    sha256: str
    not_after: dt.datetime


def facts(cert: x509.Certificate) -> CertificateFacts:
    return CertificateFacts(
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        subject=cert.subject.rfc4514_string(),
        sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        not_after=cert.not_valid_after_utc,
    )


def load_pem_certificate(data: bytes) -> x509.Certificate:
    """The first certificate of a PEM file (or a DER one), for ``mailbox cert add``."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not a certificate: {exc}") from None


class ClientCertificates:
    """The PKI's CAs (``tls.peer_ca``) and the revocation checker (``[tls] crl`` and ``[auth]
    client_crl``, distribution points, OCSP) for client certificates."""

    def __init__(self, revocation: RevocationChecker) -> None:
        self.revocation = revocation

    def check(self, der: bytes, now: dt.datetime | None = None) -> x509.Certificate:
        """The certificate if its dates and issuer are right, else CertificateError (run in a thread)."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise CertificateError("unreadable client certificate") from None
        now = now or dt.datetime.now(dt.UTC)
        if now > cert.not_valid_after_utc:
            raise CertificateError(f"certificate expired on {cert.not_valid_after_utc.isoformat()}")
        if now < cert.not_valid_before_utc:
            raise CertificateError("certificate not yet valid")
        try:
            chain = self.revocation.chain(cert)
        except (OSError, ValueError) as exc:
            raise CertificateError(f"cannot read the PKI files: {exc}") from None
        if not chain:
            raise CertificateError("certificate not issued by the health PKI")
        return cert

    async def verify(self, der: bytes, remote: str = "") -> x509.Certificate:
        """``check``, then the revocation of every certificate of the chain, intermediates included."""
        cert = await asyncio.to_thread(self.check, der)
        verdict = await self.revocation.check(cert, remote)
        if verdict.status in ("revoked", "error"):
            raise CertificateError(verdict.reason)
        if self.revocation.refuses(verdict):
            raise CertificateError(f"revocation status unknown: {verdict.reason}")
        return cert
