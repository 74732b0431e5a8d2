"""Client certificates for SASL EXTERNAL: software (a hospital's patient-record system) logs its
applicative mailbox in with an IGC-Santé certificate instead of a password.

The TLS handshake of a listener with ``client_cert = "optional"`` already verified the chain to
``tls.peer_ca`` and the validity dates (OpenSSL). This module re-checks what a long-lived connection
or a reloaded PKI can change — the dates, the issuer among the PKI's CAs with a valid signature —
and revocation against ``[auth] client_crl`` (re-read when a file changes), then says how the
certificate is matched against those registered for mailboxes (``caducee mailbox cert add``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization


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


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


class ClientCertificates:
    """The PKI's CAs (``tls.peer_ca``) and CRLs (``[auth] client_crl``) for client certificates."""

    def __init__(self, ca_file: str, crl_files: list[str]) -> None:
        self.ca_file = ca_file
        self.crl_files = [Path(p) for p in crl_files]
        self._cas: list[x509.Certificate] | None = None
        self._crls: list[x509.CertificateRevocationList] = []
        self._crl_stamp: tuple[tuple[str, int], ...] | None = None

    def _authorities(self) -> list[x509.Certificate]:
        if self._cas is None:
            self._cas = x509.load_pem_x509_certificates(Path(self.ca_file).read_bytes())
        return self._cas

    def _current_crls(self) -> list[x509.CertificateRevocationList]:
        """The CRLs, re-read when a file's modification time changes (a new CRL is published)."""
        stamp = tuple((str(p), os.stat(p).st_mtime_ns) for p in self.crl_files)
        if stamp != self._crl_stamp:
            self._crls = [_load_crl(p.read_bytes()) for p in self.crl_files]
            self._crl_stamp = stamp
        return self._crls

    def check(self, der: bytes, now: dt.datetime | None = None) -> x509.Certificate:
        """The certificate, or CertificateError saying why it may not log in (run in a thread)."""
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
            issuers = [ca for ca in self._authorities() if ca.subject == cert.issuer]
            issuer = next((ca for ca in issuers if _signed_by(cert, ca)), None)
            crls = self._current_crls()
        except (OSError, ValueError) as exc:
            raise CertificateError(f"cannot read the PKI files: {exc}") from None
        if issuer is None:
            raise CertificateError("certificate not issued by the health PKI")
        for crl in crls:
            if crl.issuer != cert.issuer or not crl.is_signature_valid(issuer.public_key()):
                continue
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise CertificateError(f"certificate revoked (serial {cert.serial_number:x})")
        return cert


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
