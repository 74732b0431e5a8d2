"""The S/MIME service the server calls: sign and encrypt on submission, verify on local delivery.

No SMTP here: protocols call ``prepare_for_sending`` / ``check_recipient`` (submission) and
``prepare_for_local_delivery`` (every inbound path) with raw messages and get raw messages back, or a
``Refusal`` to translate for their client. The administration commands (``smime/commands.py``) use the
identity and certificate methods of ``SMIMEService``.

Private keys are sealed with the master key of ``[smime] key_file`` before they reach the database.
One service is built per runtime and cached (``service_for``); it holds the trust store and master key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from config.settings import Settings
from mailserver.audit import Audit
from mailserver.db.engine import Database
from mailserver.db.models import Mailbox, utcnow
from mailserver.logs import log_event, private
from mailserver.policy import Refusal
from mailserver.runtime import Runtime
from smime.encrypt import encrypt_message
from smime.keys import (
    IdentityError,
    SealError,
    SMIMEIdentity,
    load_or_create_master_key,
    load_pem_identity,
    load_pkcs12,
    open_private_key,
    seal_private_key,
)
from smime.mime import field_name, field_value, from_addresses, smime_type, split_entity
from smime.models import SMIMEIdentity as IdentityRow
from smime.models import SMIMERecipientCert
from smime.pki import PKIError, TrustStore, certificate_emails, has_email_protection, has_key_encipherment
from smime.sign import sign_message
from smime.verify import (
    VerifyResult,
    add_authentication_results,
    authentication_results_value,
    verify_message,
)

__all__ = [
    "CertificateView",
    "SMIMEError",
    "SMIMEService",
    "check_recipient",
    "prepare_for_local_delivery",
    "prepare_for_sending",
    "service_for",
    "strip_authentication_results",
]

log = logging.getLogger(__name__)

# How often inbound verification looks at the CRL files' modification times (CRLs are reissued daily).
CRL_CHECK_INTERVAL = 60.0
# Contents that must not be wrapped in another envelope: already encrypted, or opaque and unknown.
_NOT_REENCRYPTED = {"enveloped-data", "authenveloped-data", "unknown"}


class SMIMEError(Exception):
    """A refused administrative request (unreadable file, wrong password, unusable certificate)."""


@dataclass(frozen=True)
class CertificateView:
    """What the CLI shows of a stored certificate; ``owner`` is an address or ``operator``."""

    owner: str
    source: str
    subject: str
    issuer: str
    serial: str
    fingerprint: str
    emails: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    created_at: dt.datetime
    chain: list[str] = field(default_factory=list)

    @property
    def expired(self) -> bool:
        return self.not_after < utcnow()

    def as_dict(self) -> dict[str, object]:
        return {
            "owner": self.owner,
            "source": self.source,
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint,
            "emails": self.emails,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "expired": self.expired,
            "created_at": self.created_at.isoformat(),
            "chain": self.chain,
        }


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _view(
    owner: str, source: str, cert: x509.Certificate, created_at: dt.datetime, chain_pem: str = ""
) -> CertificateView:
    chain = x509.load_pem_x509_certificates(chain_pem.encode()) if chain_pem else []
    return CertificateView(
        owner=owner,
        source=source,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        fingerprint=fingerprint(cert),
        emails=[e.lower() for e in certificate_emails(cert)],
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        created_at=created_at,
        chain=[c.subject.rfc4514_string() for c in chain],
    )


def can_encrypt_to(cert: x509.Certificate, now: dt.datetime) -> bool:
    """A certificate we can encrypt to now: valid, S/MIME usage, RSA key transport (the only one
    ``encrypt_message`` offers) with keyEncipherment when KU is present (RFC 8550 §4.4.2)."""
    return (
        cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        and isinstance(cert.public_key(), rsa.RSAPublicKey)
        and has_email_protection(cert)
        and has_key_encipherment(cert)
    )


def _authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 §2.2), comments removed."""
    text = re.sub(r"\\.", "", value)
    while True:
        stripped = re.sub(r"\([^()]*\)", " ", text)
        if stripped == text:
            break
        text = stripped
    text = text.strip()
    if text.startswith('"'):
        return text[1:].split('"', 1)[0].lower()
    return re.split(r"[;\s]", text, maxsplit=1)[0].lower()


def strip_authentication_results(raw: bytes, authserv_id: str) -> bytes:
    """Remove the Authentication-Results fields that claim to come from ``authserv_id``.

    RFC 8601 §5: a receiving host must delete such fields from outside, or a sender could forge our
    verdict. Every other byte of the message is kept, including other hosts' results.
    """
    entity = split_entity(raw)
    ours = authserv_id.lower()
    if not any(
        field_name(f) == "authentication-results" and _authserv_id(field_value(f)) == ours
        for f in entity.fields
    ):
        return raw
    kept: list[bytes] = []
    pos = 0
    for f in entity.fields:
        end = pos + len(f)
        if not (field_name(f) == "authentication-results" and _authserv_id(field_value(f)) == ours):
            kept.append(raw[pos:end])
        pos = end
    return b"".join(kept) + raw[pos:]


def _load_private_key(pem: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    # The key was fully validated at import and AES-GCM authenticates it since: the (costly) RSA
    # consistency check would only repeat that on every message.
    key = serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise SealError(f"unexpected sealed key type {type(key).__name__}")
    return key


class SMIMEService:
    """S/MIME for one runtime: policy from ``[smime]``, identities and certificates from the database.

    ``trust`` is None when the anchor file of ``[tls] peer_ca`` does not exist: signed messages then
    get ``smime=temperror`` instead of stopping delivery. An explicit ``[smime] ca`` must exist.
    """

    def __init__(
        self, settings: Settings, db: Database, audit: Audit, trust: TrustStore | None, master_key: bytes
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.trust = trust
        self.master_key = master_key
        self._crl_mtimes = self._stat_crls()
        self._crl_checked = time.monotonic()

    @classmethod
    def from_runtime(cls, rt: Runtime) -> SMIMEService:
        """Load the trust anchors and CRLs, and the master key (created on first use); blocking I/O.

        Raises PKIError or MasterKeyError for a configuration that cannot work.
        """
        conf = rt.settings.smime
        anchors = conf.ca or rt.settings.tls.peer_ca
        trust: TrustStore | None = None
        if conf.ca or (anchors and Path(anchors).exists()):
            trust = TrustStore.from_files(anchors, conf.crl)
        else:
            log.warning("S/MIME trust anchors %s not found: signatures cannot be verified", anchors)
        return cls(rt.settings, rt.db, rt.audit, trust, load_or_create_master_key(conf.key_file))

    # ------------------------------------------------------------------------------------ submission

    async def outbound(self, sender_mailbox_id: int | None, raw: bytes, recipients: list[str]) -> bytes:
        """Sign then encrypt ``raw`` per ``[smime] sign`` / ``encrypt`` (RFC 8551 §3.7: sign first, so
        the signature is protected too and the recipient verifies after decryption).

        The signer is the mailbox's identity, else (sign = "always") the operator's. Encryption is one
        envelope for every recipient (AES-256-CBC), done only when each has a certificate; with
        encrypt = "required" a missing one is a Refusal.
        """
        conf = self.settings.smime
        identity: SMIMEIdentity | None = None
        if conf.sign != "never":
            identity = await self._signing_identity(
                sender_mailbox_id, operator_fallback=conf.sign == "always"
            )
            if identity is None and conf.sign == "always":
                raise Refusal(554, "5.7.1", "S/MIME signing is required but no certificate is configured")
        certs: list[x509.Certificate] = []
        if conf.encrypt != "never":
            addresses = list(dict.fromkeys(a.strip().lower() for a in recipients))
            known = await self._recipient_certificates(addresses)
            missing = [a for a in addresses if a not in known]
            if missing and conf.encrypt == "required":
                raise _no_certificate(missing[0])
            if not missing:
                certs = [known[a] for a in addresses]
        if identity is None and not certs:
            return raw
        return await asyncio.to_thread(_protect, raw, identity, certs)

    async def check_recipient(self, address: str) -> None:
        """At RCPT: refuse a recipient we could not encrypt to when encryption is required."""
        if self.settings.smime.encrypt != "required":
            return
        addr = address.strip().lower()
        if addr not in await self._recipient_certificates([addr]):
            raise _no_certificate(addr)

    async def _signing_identity(
        self, mailbox_id: int | None, *, operator_fallback: bool
    ) -> SMIMEIdentity | None:
        """The usable identity of the mailbox, else the operator's when allowed; expired ones are skipped."""
        now = utcnow()
        async with self.db.read() as session:
            rows = list(
                (
                    await session.execute(
                        select(IdentityRow).where(
                            IdentityRow.mailbox_id.is_(None)
                            if mailbox_id is None
                            else (IdentityRow.mailbox_id == mailbox_id) | IdentityRow.mailbox_id.is_(None)
                        )
                    )
                ).scalars()
            )
        rows.sort(key=lambda r: r.mailbox_id is None)
        for row in rows:
            if row.mailbox_id is None and not operator_fallback:
                continue
            if row.not_after < now:
                log.warning("S/MIME identity %s expired on %s: not used", row.id, row.not_after.isoformat())
                continue
            return self._open_identity(row)
        return None

    def _open_identity(self, row: IdentityRow) -> SMIMEIdentity:
        key = _load_private_key(open_private_key(row.sealed_key, self.master_key))
        cert = x509.load_pem_x509_certificate(row.cert_pem.encode())
        chain = x509.load_pem_x509_certificates(row.chain_pem.encode()) if row.chain_pem else []
        return SMIMEIdentity(key, cert, tuple(chain))

    async def _recipient_certificates(self, addresses: Sequence[str]) -> dict[str, x509.Certificate]:
        """The certificate to encrypt to for each address that has one (latest expiry wins)."""
        now = utcnow()
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(SMIMERecipientCert.address, SMIMERecipientCert.cert_pem)
                    .where(SMIMERecipientCert.address.in_(addresses), SMIMERecipientCert.not_after > now)
                    .order_by(SMIMERecipientCert.not_after.desc(), SMIMERecipientCert.id.desc())
                )
            ).all()
        found: dict[str, x509.Certificate] = {}
        for address, pem in rows:
            if address not in found:
                cert = x509.load_pem_x509_certificate(pem.encode())
                if can_encrypt_to(cert, now):
                    found[address] = cert
        return found

    # ------------------------------------------------------------------------------------ delivery

    async def inbound(self, raw: bytes) -> bytes:
        """The message to store locally: forged results removed, then (``[smime] verify``) a fresh
        ``Authentication-Results: <hostname>; smime=pass|fail|none|temperror`` prepended (RFC 8601,
        RFC 7281). A passing signer's certificate is remembered for encrypting replies."""
        hostname = self.settings.server.hostname
        cleaned = strip_authentication_results(raw, hostname)
        if not self.settings.smime.verify:
            return cleaned
        entity = split_entity(cleaned)
        if smime_type(entity) is None:
            # Unsigned (most mail): nothing to compute, so no trip to a worker thread.
            froms = from_addresses(entity)
            result = VerifyResult("none", "unsigned", from_address=froms[0] if froms else None)
        else:
            result = await asyncio.to_thread(self._verify, cleaned)
        if result.status == "fail":
            log_event(
                "smime-verify-failed",
                reason=result.reason,
                detail=result.detail,
                **private(sender=result.from_address),
            )
        if result.status == "pass" and result.signer_certificate is not None and result.signer_address:
            await self._learn(result.signer_address, result.signer_certificate)
        return add_authentication_results(cleaned, authentication_results_value(result, hostname))

    def _verify(self, raw: bytes) -> VerifyResult:
        if self.trust is not None:
            self._refresh_crls()
            return verify_message(raw, self.trust)
        entity = split_entity(raw)
        froms = from_addresses(entity)
        if smime_type(entity) is None:
            return VerifyResult("none", "unsigned", from_address=froms[0] if froms else None)
        return VerifyResult("temperror", "no-trust-anchors", from_address=froms[0] if froms else None)

    def _stat_crls(self) -> list[int | None]:
        if self.trust is None:
            return []
        mtimes: list[int | None] = []
        for path in self.trust.crl_paths:
            try:
                mtimes.append(os.stat(path).st_mtime_ns)
            except OSError:
                mtimes.append(None)
        return mtimes

    def _refresh_crls(self) -> None:
        """Pick up CRL files replaced on disk (IGC-Santé CRLs are reissued daily) without a restart;
        a broken new file keeps the previous CRLs (TrustStore.reload_crls is all-or-nothing)."""
        if self.trust is None or time.monotonic() - self._crl_checked < CRL_CHECK_INTERVAL:
            return
        self._crl_checked = time.monotonic()
        mtimes = self._stat_crls()
        if mtimes == self._crl_mtimes:
            return
        try:
            self.trust.reload_crls()
        except PKIError as exc:
            log.error("S/MIME CRLs not reloaded, keeping the previous ones: %s", exc)
            return
        self._crl_mtimes = mtimes

    async def _learn(self, address: str, cert: x509.Certificate) -> None:
        """Remember a verified signer's certificate, as mail clients do, if we can encrypt to it."""
        if not can_encrypt_to(cert, utcnow()):
            return
        insert = sqlite_insert if self.db.kind == "sqlite" else pg_insert
        stmt = (
            insert(SMIMERecipientCert)
            .values(
                address=address.lower(),
                cert_pem=_pem(cert),
                fingerprint=fingerprint(cert),
                not_after=cert.not_valid_after_utc,
                source="learned",
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["address", "fingerprint"])
        )
        async with self.db.write() as session:
            await session.execute(stmt)

    # ------------------------------------------------------------------------------------ administration

    async def import_identity(
        self, address: str | None, data: bytes, *, key_pem: bytes | None = None, password: bytes | None = None
    ) -> CertificateView:
        """Store a signing identity (PKCS#12, or PEM certificate + ``key_pem``) for a mailbox, or for the
        operator when ``address`` is None, replacing the previous one. The certificate must name the
        mailbox's address and chain to the S/MIME anchors: otherwise every recipient would see a fail."""
        addr = address.strip().lower() if address is not None else None
        if addr is not None:
            async with self.db.read() as session:
                await _mailbox_id(session, addr)
        identity = await asyncio.to_thread(_load_identity, data, key_pem, password)
        cert = identity.cert
        emails = [e.lower() for e in certificate_emails(cert)]
        if addr is not None and addr not in emails:
            raise SMIMEError(f"the certificate is for {', '.join(emails) or 'no address'}, not {addr}")
        self._check_chain(cert, identity.chain, "sign")
        key_pem_clear = identity.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        row = IdentityRow(
            cert_pem=_pem(cert),
            chain_pem="".join(_pem(c) for c in identity.chain),
            sealed_key=seal_private_key(key_pem_clear, self.master_key),
            not_after=cert.not_valid_after_utc,
            created_at=utcnow(),
        )
        async with self.db.write() as session:
            if addr is not None:
                row.mailbox_id = await _mailbox_id(session, addr)
            await session.execute(delete(IdentityRow).where(_owner_clause(row.mailbox_id)))
            session.add(row)
            if addr is not None:
                await _replace_mailbox_certificate(session, addr, cert)
            self.audit.record_in(
                session,
                "admin",
                "admin",
                "",
                f"smime import {addr or 'operator'} sha256={fingerprint(cert)}",
                "ok",
            )
        return _view(addr or "operator", "identity", cert, row.created_at, row.chain_pem)

    async def identity(self, address: str | None) -> CertificateView:
        """The identity of a mailbox (or the operator's when ``address`` is None)."""
        addr = address.strip().lower() if address is not None else None
        async with self.db.read() as session:
            mailbox_id = await _mailbox_id(session, addr) if addr is not None else None
            row = (
                await session.execute(select(IdentityRow).where(_owner_clause(mailbox_id)))
            ).scalar_one_or_none()
        if row is None:
            raise SMIMEError(f"no S/MIME identity for {addr or 'the operator'}")
        return _view(
            addr or "operator",
            "identity",
            x509.load_pem_x509_certificate(row.cert_pem.encode()),
            row.created_at,
            row.chain_pem,
        )

    async def remove_identity(self, address: str | None) -> None:
        """Delete an identity (and, for a mailbox, its certificate from the recipients' list)."""
        addr = address.strip().lower() if address is not None else None
        async with self.db.write() as session:
            mailbox_id = await _mailbox_id(session, addr) if addr is not None else None
            result = await session.execute(delete(IdentityRow).where(_owner_clause(mailbox_id)))
            if not result.rowcount:
                raise SMIMEError(f"no S/MIME identity for {addr or 'the operator'}")
            if addr is not None:
                await session.execute(
                    delete(SMIMERecipientCert).where(
                        SMIMERecipientCert.address == addr, SMIMERecipientCert.source == "mailbox"
                    )
                )
            self.audit.record_in(session, "admin", "admin", "", f"smime remove {addr or 'operator'}", "ok")

    async def import_recipient(self, data: bytes) -> list[CertificateView]:
        """Store a correspondent's certificate (PEM, leaf first then intermediates, or DER) for every
        address it names; it must be valid for encryption and chain to the S/MIME anchors."""
        try:
            certs = (
                x509.load_pem_x509_certificates(data)
                if b"-----BEGIN" in data
                else [x509.load_der_x509_certificate(data)]
            )
        except ValueError as exc:
            raise SMIMEError(f"not a certificate: {exc}") from None
        cert = certs[0]
        emails = list(dict.fromkeys(e.lower() for e in certificate_emails(cert)))
        if not emails:
            raise SMIMEError("the certificate names no e-mail address (SAN rfc822Name)")
        if not can_encrypt_to(cert, utcnow()):
            raise SMIMEError("the certificate cannot be used for encryption (expired, not RSA, or key usage)")
        self._check_chain(cert, certs[1:], "encrypt")
        views: list[CertificateView] = []
        async with self.db.write() as session:
            for addr in emails:
                existing = (
                    await session.execute(
                        select(SMIMERecipientCert).where(
                            SMIMERecipientCert.address == addr,
                            SMIMERecipientCert.fingerprint == fingerprint(cert),
                        )
                    )
                ).scalar_one_or_none()
                if existing is None:
                    existing = _recipient_row(addr, cert, "import")
                    session.add(existing)
                views.append(_view(addr, existing.source, cert, existing.created_at))
            self.audit.record_in(
                session,
                "admin",
                "admin",
                "",
                f"smime import-recipient {' '.join(emails)} sha256={fingerprint(cert)}",
                "ok",
            )
        return views

    async def recipients(self) -> list[CertificateView]:
        """Every certificate we may encrypt to, by address."""
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(SMIMERecipientCert).order_by(
                        SMIMERecipientCert.address, SMIMERecipientCert.not_after
                    )
                )
            ).scalars()
            return [
                _view(r.address, r.source, x509.load_pem_x509_certificate(r.cert_pem.encode()), r.created_at)
                for r in rows
            ]

    def _check_chain(
        self, cert: x509.Certificate, chain: Sequence[x509.Certificate], purpose: Literal["sign", "encrypt"]
    ) -> None:
        if self.trust is None:
            raise SMIMEError(
                f"no S/MIME trust anchors ({self.settings.tls.peer_ca} is missing): set [smime] ca"
            )
        result = self.trust.verify(cert, chain, purpose=purpose)
        if not result.ok:
            raise SMIMEError(f"the certificate is not acceptable: {result.reason} ({result.detail})")


def _no_certificate(address: str) -> Refusal:
    return Refusal(
        550, "5.7.1", f"<{address}>: no S/MIME certificate known for this recipient; encryption is required"
    )


def _protect(raw: bytes, identity: SMIMEIdentity | None, certs: list[x509.Certificate]) -> bytes:
    """CPU-bound part of ``outbound``, run in a thread."""
    if identity is not None:
        result = sign_message(raw, identity.key, identity.cert, identity.chain)
        if result.skipped:
            log.info("S/MIME signing skipped: message already %s", result.skipped)
        raw = result.message
    if certs and (smime_type(split_entity(raw)) or "").lower() not in _NOT_REENCRYPTED:
        raw = encrypt_message(raw, certs)
    return raw


def _load_identity(data: bytes, key_pem: bytes | None, password: bytes | None) -> SMIMEIdentity:
    """PKCS#12, PEM certificate + separate key, or one PEM file holding both."""
    try:
        if key_pem is not None:
            return load_pem_identity(data, key_pem, password)
        if b"-----BEGIN" in data:
            if b"PRIVATE KEY-----" not in data:
                raise SMIMEError("a PEM certificate needs its private key: --key FILE")
            return load_pem_identity(data, data, password)
        return load_pkcs12(data, password)
    except IdentityError as exc:
        raise SMIMEError(str(exc)) from None


def _owner_clause(mailbox_id: int | None) -> ColumnElement[bool]:
    return IdentityRow.mailbox_id.is_(None) if mailbox_id is None else IdentityRow.mailbox_id == mailbox_id


async def _mailbox_id(session: AsyncSession, address: str) -> int:
    mailbox_id = (
        await session.execute(select(Mailbox.id).where(Mailbox.address == address))
    ).scalar_one_or_none()
    if mailbox_id is None:
        raise SMIMEError(f"no mailbox {address}")
    return mailbox_id


def _recipient_row(address: str, cert: x509.Certificate, source: str) -> SMIMERecipientCert:
    return SMIMERecipientCert(
        address=address,
        cert_pem=_pem(cert),
        fingerprint=fingerprint(cert),
        not_after=cert.not_valid_after_utc,
        source=source,
        created_at=utcnow(),
    )


async def _replace_mailbox_certificate(session: AsyncSession, address: str, cert: x509.Certificate) -> None:
    """A hosted mailbox's own certificate is how local senders encrypt to it: keep exactly the current one."""
    await session.execute(
        delete(SMIMERecipientCert).where(
            SMIMERecipientCert.address == address, SMIMERecipientCert.source == "mailbox"
        )
    )
    if not can_encrypt_to(cert, utcnow()):
        return
    existing = (
        await session.execute(
            select(SMIMERecipientCert).where(
                SMIMERecipientCert.address == address, SMIMERecipientCert.fingerprint == fingerprint(cert)
            )
        )
    ).scalar_one_or_none()
    if existing is None:
        session.add(_recipient_row(address, cert, "mailbox"))
    else:
        existing.source = "mailbox"


# ---------------------------------------------------------------------------------------- per-runtime cache

_services: dict[int, tuple[weakref.ref[Runtime], asyncio.Future[SMIMEService]]] = {}


async def service_for(rt: Runtime) -> SMIMEService:
    """The runtime's service, built once on first use (in a thread: it reads the anchors, CRLs and
    key); deliveries arriving while it is being built wait for that one build. A failed build is
    forgotten, so the next message tries again."""
    cached = _services.get(id(rt))
    if cached is None or cached[0]() is not rt:
        building = asyncio.ensure_future(asyncio.to_thread(SMIMEService.from_runtime, rt))
        cached = (weakref.ref(rt), building)
        _services[id(rt)] = cached
        weakref.finalize(rt, _services.pop, id(rt), None)
    try:
        return await asyncio.shield(cached[1])
    except Exception:
        if _services.get(id(rt)) is cached:
            del _services[id(rt)]
        raise


async def prepare_for_sending(
    rt: Runtime, sender_mailbox_id: int | None, raw: bytes, recipients: list[str]
) -> bytes:
    """Submission: the message to send (signed and/or encrypted per ``[smime]``), or a Refusal."""
    return await (await service_for(rt)).outbound(sender_mailbox_id, raw, recipients)


async def check_recipient(rt: Runtime, address: str) -> None:
    """Submission, at RCPT: Refusal when encryption is required and ``address`` has no certificate."""
    await (await service_for(rt)).check_recipient(address)


async def prepare_for_local_delivery(rt: Runtime, raw: bytes) -> bytes:
    """Every inbound path, before storing: the message with its S/MIME Authentication-Results."""
    return await (await service_for(rt)).inbound(raw)
