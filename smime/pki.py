"""Trust anchors, CRLs and certificate path validation for S/MIME signers (RFC 5280, RFC 8550)."""

from __future__ import annotations

import datetime
import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = [
    "ChainResult",
    "PKIError",
    "TrustStore",
    "certificate_emails",
    "has_email_protection",
    "has_key_encipherment",
]

OK = "ok"
UNTRUSTED = "untrusted"
EXPIRED = "expired"
NOT_YET_VALID = "not-yet-valid"
REVOKED = "revoked"
BAD_USAGE = "bad-usage"


class PKIError(Exception):
    """The trust configuration (anchors or CRL files) cannot be used."""


@dataclass(frozen=True)
class ChainResult:
    """Outcome of a path validation.

    ``reason`` is a stable machine token (``ok``, ``untrusted``, ``expired``, ``not-yet-valid``,
    ``revoked``, ``bad-usage``); ``detail`` is human text for logs only. ``chain`` runs from the leaf to
    the trust anchor when validation succeeded. ``warnings`` reports degraded revocation checking
    (``crl-stale:<issuer>``, ``crl-missing:<issuer>``) that did not cause a failure.
    """

    reason: str
    detail: str = ""
    chain: tuple[x509.Certificate, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.reason == OK


def has_email_protection(cert: x509.Certificate) -> bool:
    """RFC 8550 §4.4.4: no EKU means unrestricted; otherwise emailProtection or anyExtendedKeyUsage."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.EMAIL_PROTECTION in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku


def certificate_emails(cert: x509.Certificate) -> list[str]:
    """Addresses the certificate vouches for: SAN rfc822Name, else subject emailAddress (RFC 8550 §3)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = san.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        emails = []
    emails += [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.EMAIL_ADDRESS)]
    return emails


def _signing_key_usage(cert: x509.Certificate) -> bool:
    """RFC 8550 §4.4.2: a signing certificate needs digitalSignature or nonRepudiation when KU is present."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ku.digital_signature or ku.content_commitment


def has_key_encipherment(cert: x509.Certificate) -> bool:
    """RFC 8550 §4.4.2: an RSA certificate used for key transport needs keyEncipherment when KU is present."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ku.key_encipherment


def _eku_validator(_policy: Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    if not has_email_protection(cert):
        raise ValueError(f"EKU {[o.dotted_string for o in eku or []]} lacks emailProtection")


def _ee_policy() -> ExtensionPolicy:
    """WebPKI end-entity rules, but for e-mail: emailProtection instead of clientAuth, and a SAN is
    optional because RFC 8550 also allows the address in the subject emailAddress attribute."""
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _eku_validator)
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    )


def _load_certificates(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class TrustStore:
    """Trust anchors plus CRLs, shared by the S/MIME verifier.

    The anchor bundle may mix roots and intermediates (as the IGC-Santé distributes them): only
    self-signed certificates become anchors, intermediates are offered to path building as untrusted
    helpers, so an intermediate alone never terminates a chain.

    ``strict_crl``: when true, a certificate whose issuer has no current CRL fails as ``untrusted``
    (fail closed); otherwise this only adds a warning. A certificate listed in a stale CRL is always
    ``revoked``: revocation is permanent (RFC 5280 §3.3).
    """

    def __init__(
        self,
        certificates: Sequence[x509.Certificate],
        crl_paths: Iterable[Path | str] = (),
        *,
        strict_crl: bool = False,
    ) -> None:
        self.roots = [c for c in certificates if _is_self_signed(c)]
        self.intermediates = [c for c in certificates if not _is_self_signed(c)]
        if not self.roots:
            raise PKIError("no self-signed root certificate in the trust anchors")
        self._store = Store(self.roots)
        self.crl_paths = [Path(p) for p in crl_paths]
        self.strict_crl = strict_crl
        self._lock = threading.Lock()
        self._crls: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        self.reload_crls()

    @classmethod
    def from_files(
        cls, anchors: Path | str, crl_paths: Iterable[Path | str] = (), *, strict_crl: bool = False
    ) -> TrustStore:
        """Load a PEM bundle (or one DER certificate) of roots and intermediates."""
        try:
            certs = _load_certificates(Path(anchors).read_bytes())
        except (OSError, ValueError) as exc:
            raise PKIError(f"cannot load trust anchors {anchors}: {exc}") from exc
        return cls(certs, crl_paths, strict_crl=strict_crl)

    def reload_crls(self) -> None:
        """Re-read every CRL file; a CRL whose signature does not verify against a known CA is refused.

        The new set replaces the old one atomically only if every file loads, so a half-written CRL
        never silently removes revocation data.
        """
        crls: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for path in self.crl_paths:
            try:
                crl = _load_crl(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise PKIError(f"cannot load CRL {path}: {exc}") from exc
            issuer = self._crl_issuer(crl)
            if issuer is None:
                raise PKIError(f"CRL {path} is not signed by a trusted CA ({crl.issuer.rfc4514_string()})")
            crls.setdefault(crl.issuer, []).append(crl)
        with self._lock:
            self._crls = crls

    def _crl_issuer(self, crl: x509.CertificateRevocationList) -> x509.Certificate | None:
        for ca in self.roots + self.intermediates:
            if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()):
                return ca
        return None

    def verify(
        self,
        cert: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        at: datetime.datetime | None = None,
        *,
        purpose: Literal["sign", "encrypt"] = "sign",
    ) -> ChainResult:
        """Validate ``cert`` as an S/MIME signer (or, with ``purpose="encrypt"``, as a recipient's
        key-transport certificate) at time ``at`` (default now), then check revocation.

        The leaf's own validity and usage are examined first so the caller gets a precise reason;
        everything else the path builder rejects is ``untrusted``. The purpose matters because CAs such
        as the IGC-Santé issue separate signature and confidentiality certificates.
        """
        now = datetime.datetime.now(datetime.UTC)
        at = at or now
        if at < cert.not_valid_before_utc:
            return ChainResult(NOT_YET_VALID, f"valid from {cert.not_valid_before_utc.isoformat()}")
        if at > cert.not_valid_after_utc:
            return ChainResult(EXPIRED, f"expired on {cert.not_valid_after_utc.isoformat()}")
        usable = _signing_key_usage(cert) if purpose == "sign" else has_key_encipherment(cert)
        if not has_email_protection(cert) or not usable:
            what = "signatures" if purpose == "sign" else "encryption"
            return ChainResult(BAD_USAGE, f"certificate not usable for S/MIME {what}")
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy())
            .build_client_verifier()
        )
        try:
            chain = tuple(verifier.verify(cert, [*untrusted, *self.intermediates]).chain)
        except VerificationError as exc:
            return ChainResult(UNTRUSTED, str(exc))
        return self._check_revocation(chain, now)

    def _check_revocation(self, chain: tuple[x509.Certificate, ...], now: datetime.datetime) -> ChainResult:
        """RFC 5280 §6.3 reduced to full CRLs: every non-anchor certificate against its issuer's CRLs."""
        with self._lock:
            crls = self._crls
        warnings: list[str] = []
        for cert, issuer in itertools.pairwise(chain):
            issuer_crls = [
                c for c in crls.get(issuer.subject, []) if c.is_signature_valid(issuer.public_key())
            ]
            for crl in issuer_crls:
                entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if entry is not None:
                    return ChainResult(
                        REVOKED,
                        f"serial {cert.serial_number:x} revoked on {entry.revocation_date_utc.isoformat()}",
                    )
            current = [c for c in issuer_crls if c.next_update_utc is None or c.next_update_utc >= now]
            if not current:
                problem = f"crl-{'stale' if issuer_crls else 'missing'}:{issuer.subject.rfc4514_string()}"
                if self.strict_crl:
                    return ChainResult(UNTRUSTED, problem)
                warnings.append(problem)
        return ChainResult(OK, chain=chain, warnings=tuple(warnings))
