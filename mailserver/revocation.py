"""Revocation of health-PKI certificates: MTA peers (inbound and outbound) and SASL EXTERNAL clients.

One checker per process (``Runtime.revocation``), so every path applies the same rules. Every
certificate of the chain below the root is checked — the leaf and the intermediates — against:

- the CRL files of ``[tls] crl`` (and ``[auth] client_crl`` for logins), re-read when a file changes;
- with ``crl_fetch``, the http CRL distribution points the certificate names, fetched within
  ``crl_fetch_timeout``, at most ``crl_max_size`` bytes, cached for ``crl_fetch_retry`` (or until the
  CRL's nextUpdate, if sooner);
- with ``ocsp``, the OCSP responder of its Authority Information Access (RFC 6960), answers cached
  the same way.

A CRL or OCSP answer counts only when signed by the certificate's issuer (a delegated OCSP responder
certified by it): anything else is forged, ignored and audited (``crl-forged``). When a certificate
names sources and none answered, ``crl_unreachable`` decides: accept (status ``unknown``) or refuse.
Unreadable PKI files (``peer_ca``, a CRL file) are an ``error``: always refused, the operator must fix them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, ExtensionOID

from config.settings import TLSSettings
from mailserver.audit import Audit
from mailserver.metrics import UNSCRAPED, Metrics

log = logging.getLogger("caducee.revocation")

Status = Literal["good", "revoked", "unknown", "error"]
MAX_CHAIN = 8  # certificates walked from a leaf towards its root: far more than any health-PKI chain
OCSP_SKEW = dt.timedelta(minutes=5)  # clock difference tolerated on an OCSP answer's thisUpdate


@dataclass(frozen=True)
class Verdict:
    """The revocation status of a chain; ``reason`` is the reply/audit text when not good."""

    status: Status
    reason: str = ""


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` issued ``cert`` (name and signature)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _verify_signature(
    key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _uris(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return []
    names: list[x509.GeneralName] = []
    if isinstance(ext, x509.CRLDistributionPoints):
        for point in ext:
            names.extend(point.full_name or [])
    elif isinstance(ext, x509.AuthorityInformationAccess):
        names = [d.access_location for d in ext if d.access_method == AuthorityInformationAccessOID.OCSP]
    return [
        n.value
        for n in names
        if isinstance(n, x509.UniformResourceIdentifier) and n.value.startswith("http://")
    ]


class RevocationChecker:
    """The process's revocation checks (see the module docstring)."""

    def __init__(
        self,
        tls: TLSSettings,
        audit: Audit | None = None,
        metrics: Metrics = UNSCRAPED,
        extra_crls: Sequence[str] = (),
    ) -> None:
        self.settings = tls
        self.audit = audit
        self.metrics = metrics
        self.ca_file = Path(tls.peer_ca)
        self.crl_files = [Path(p) for p in dict.fromkeys([*tls.crl, *extra_crls])]
        self._cas: list[x509.Certificate] = []
        self._ca_stamp: int | None = None
        self._crls: list[x509.CertificateRevocationList] = []
        self._crl_stamp: tuple[tuple[str, int], ...] | None = None
        self._pending: list[str] = []  # forged CRL files found at the last read, to audit
        self._fetched: dict[str, tuple[float, x509.CertificateRevocationList | None, str]] = {}
        self._answers: dict[tuple[str, int], tuple[float, Status, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ the PKI files

    def authorities(self) -> list[x509.Certificate]:
        """The CAs of ``tls.peer_ca``, re-read when the file changes."""
        stamp = os.stat(self.ca_file).st_mtime_ns
        if stamp != self._ca_stamp:
            self._cas = x509.load_pem_x509_certificates(self.ca_file.read_bytes())
            self._ca_stamp = stamp
        return self._cas

    def chain(self, cert: x509.Certificate) -> list[tuple[x509.Certificate, x509.Certificate]]:
        """(certificate, its issuer) pairs from ``cert`` up to a root of ``tls.peer_ca``; empty when
        no CA of the PKI issued ``cert``."""
        pairs: list[tuple[x509.Certificate, x509.Certificate]] = []
        current = cert
        cas = self.authorities()
        while len(pairs) < MAX_CHAIN:
            issuer = next((ca for ca in cas if ca.subject == current.issuer and signed_by(current, ca)), None)
            if issuer is None or issuer == current:
                break
            pairs.append((current, issuer))
            if issuer.subject == issuer.issuer:
                break
            current = issuer
        return pairs

    def check_files(self) -> None:
        """Read ``tls.peer_ca`` and every CRL file now (OSError or ValueError naming the problem): at
        start-up and for ``/readyz``, since an unreadable one refuses every peer certificate."""
        try:
            self.authorities()
            self._file_crls()
        except (OSError, ValueError) as exc:
            raise type(exc)(f"[tls] peer_ca or a CRL file is unreadable: {exc}") from exc

    def _file_crls(self) -> list[x509.CertificateRevocationList]:
        """The CRL files whose signature a CA of the PKI verifies, re-read when a file changes; the
        others are set aside for the audit trail."""
        stamp = tuple((str(p), os.stat(p).st_mtime_ns) for p in self.crl_files)
        if stamp != self._crl_stamp:
            crls = []
            for path in self.crl_files:
                crl = load_crl(path.read_bytes())
                cas = [ca for ca in self.authorities() if ca.subject == crl.issuer]
                if any(crl.is_signature_valid(ca.public_key()) for ca in cas):
                    crls.append(crl)
                else:
                    self._pending.append(f"CRL file {path} of {crl.issuer.rfc4514_string()} not signed by it")
            self._crls, self._crl_stamp = crls, stamp
        return self._crls

    # ------------------------------------------------------------------ checking

    async def check(self, cert: x509.Certificate, remote: str = "") -> Verdict:
        """The status of ``cert``'s chain (``error`` when the PKI files cannot be read)."""
        unknown = ""
        try:
            for member, issuer in self.chain(cert):
                status, why = await self._status(member, issuer)
                if status == "revoked":
                    dn = member.subject.rfc4514_string()
                    verdict = Verdict(
                        "revoked", f"certificate of {dn} revoked (serial {member.serial_number:x})"
                    )
                    break
                if status == "unknown" and not unknown:
                    unknown = why
            else:
                verdict = Verdict("unknown", unknown) if unknown else Verdict("good")
        except (OSError, ValueError) as exc:
            log.error("cannot read the PKI files for revocation: %s", exc)
            # the peer hears that, not where the operator keeps the files (the log says which one)
            verdict = Verdict("error", "cannot read the PKI files (operator side)")
        finally:
            await self._audit_forged(remote)
        self.metrics.peer_revocation_checks.labels(verdict.status).inc()
        if verdict.status == "unknown":
            log.warning("revocation status unknown: %s", verdict.reason)
        return verdict

    def refuses(self, verdict: Verdict) -> bool:
        """Whether a peer with this verdict is refused (revoked, PKI files unreadable, or unknown with
        ``crl_unreachable = "refuse"``)."""
        return verdict.status in ("revoked", "error") or (
            verdict.status == "unknown" and self.settings.crl_unreachable == "refuse"
        )

    async def _audit_forged(self, remote: str) -> None:
        pending, self._pending = self._pending, []
        for what in pending:
            log.warning("forged revocation data ignored: %s", what)
            if self.audit is not None:
                await self.audit.record("revocation", "crl-forged", remote, "", what)

    async def _status(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[Status, str]:
        covered, unknown = False, ""
        for crl in self._file_crls():
            if crl.issuer != cert.issuer:
                continue
            covered = True
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return "revoked", ""
        if self.settings.crl_fetch:
            for url in _uris(cert, ExtensionOID.CRL_DISTRIBUTION_POINTS):
                crl, why = await self._distribution_point(url, issuer)
                if crl is None:
                    unknown = why
                    continue
                covered = True
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    return "revoked", ""
                break
        if self.settings.ocsp:
            for url in _uris(cert, ExtensionOID.AUTHORITY_INFORMATION_ACCESS):
                status, why = await self._responder(url, cert, issuer)
                if status == "revoked":
                    return "revoked", ""
                if status == "good":
                    covered = True
                    break
                unknown = why
        if covered or not unknown:
            return "good", ""
        return "unknown", f"{cert.subject.rfc4514_string()}: {unknown}"

    def _lock(self, key: str) -> asyncio.Lock:
        if key not in self._locks and len(self._locks) >= self.settings.crl_cache_entries:
            for stale in [k for k, lock in self._locks.items() if not lock.locked()]:
                del self._locks[stale]
        return self._locks.setdefault(key, asyncio.Lock())

    def _remember(self, cache: dict, key: object, value: object) -> None:
        """Keep ``value`` as the newest entry, dropping the oldest past ``crl_cache_entries``: the
        certificates peers present decide the keys, so the caches must not grow without a bound."""
        cache.pop(key, None)
        cache[key] = value
        while len(cache) > self.settings.crl_cache_entries:
            del cache[next(iter(cache))]

    async def _download(self, url: str, body: bytes | None = None) -> bytes:
        """GET (or POST ``body`` as an OCSP request) ``url`` within the timeout and the size limit."""
        limit = self.settings.crl_max_size
        async with asyncio.timeout(self.settings.crl_fetch_timeout):
            async with aiohttp.ClientSession() as http:
                if body is None:
                    request = http.get(url)
                else:
                    request = http.post(url, data=body, headers={"Content-Type": "application/ocsp-request"})
                async with request as resp:
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    data = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        data += chunk
                        if len(data) > limit:
                            raise ValueError(f"larger than crl_max_size ({limit} bytes)")
                    return bytes(data)

    async def _distribution_point(
        self, url: str, issuer: x509.Certificate
    ) -> tuple[x509.CertificateRevocationList | None, str]:
        """The CRL at ``url`` signed by ``issuer`` (cached), or None and why."""
        async with self._lock(url):
            cached = self._fetched.get(url)
            now = time.monotonic()
            if cached is not None and now - cached[0] < self.settings.crl_fetch_retry:
                crl = cached[1]
                nxt = crl.next_update_utc if crl is not None else None
                if nxt is None or nxt > dt.datetime.now(dt.UTC):
                    return crl, cached[2]
            try:
                crl: x509.CertificateRevocationList | None = load_crl(await self._download(url))
                why = ""
                if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):
                    self._pending.append(f"CRL at {url} not signed by {issuer.subject.rfc4514_string()}")
                    crl, why = None, f"CRL at {url} forged"
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                crl, why = None, f"CRL at {url} unreachable: {str(exc) or 'timed out'}"
            self._remember(self._fetched, url, (now, crl, why))
            return crl, why

    async def _responder(
        self, url: str, cert: x509.Certificate, issuer: x509.Certificate
    ) -> tuple[Status, str]:
        """The OCSP answer of ``url`` for ``cert`` (cached), ``unknown`` with why when none counts."""
        key = (url, cert.serial_number)
        async with self._lock(f"ocsp {url} {cert.serial_number}"):
            cached = self._answers.get(key)
            now = time.monotonic()
            if cached is not None and now - cached[0] < self.settings.crl_fetch_retry:
                return cached[1], cached[2]
            request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
            try:
                data = await self._download(url, request.public_bytes(serialization.Encoding.DER))
                status, why = self._answer(ocsp.load_der_ocsp_response(data), cert, issuer, url)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                status, why = "unknown", f"OCSP {url} unreachable: {str(exc) or 'timed out'}"
            self._remember(self._answers, key, (now, status, why))
            return status, why

    def _answer(
        self, resp: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate, url: str
    ) -> tuple[Status, str]:
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return "unknown", f"OCSP {url} answered {resp.response_status.name}"
        signers = [issuer] + [c for c in resp.certificates if signed_by(c, issuer) and _ocsp_signing(c)]
        if not any(
            _verify_signature(
                s.public_key(), resp.signature, resp.tbs_response_bytes, resp.signature_hash_algorithm
            )
            for s in signers
        ):
            self._pending.append(f"OCSP answer of {url} not signed by {issuer.subject.rfc4514_string()}")
            return "unknown", f"OCSP {url} answer forged"
        now = dt.datetime.now(dt.UTC)
        if resp.serial_number != cert.serial_number or resp.this_update_utc > now + OCSP_SKEW:
            return "unknown", f"OCSP {url} answered for another certificate or time"
        if resp.next_update_utc is not None and resp.next_update_utc < now:
            return "unknown", f"OCSP {url} answer out of date"
        if resp.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            return "revoked", ""
        if resp.certificate_status == ocsp.OCSPCertStatus.GOOD:
            return "good", ""
        return "unknown", f"OCSP {url} does not know the certificate"


def _ocsp_signing(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku
