"""Throw-away test PKI shared by every test suite (S/MIME, SMTP mutual TLS, directory).

Key generation dominates the cost, so all keys and certificates are generated once per process
(in memory, see ``_material``) and ``make_pki`` only writes them as files into the directory it is
given; calling it for several directories is cheap and yields identical material.

Layout, all PEM unless stated otherwise (keys are unencrypted PKCS#8):

* ``IGC-Santé TEST root`` (self-signed) -> ``IGC-Santé TEST intermediate`` -> every trusted leaf;
* ``Unknown TEST root`` (self-signed, *not* in ``peer_ca``) -> impostor TLS leaf and an untrusted
  S/MIME leaf, both reusing the identity of a legitimate certificate.

CAs use ECDSA P-256, TLS leaves ECDSA P-256 (fast) and S/MIME leaves RSA-2048 (CMS key transport for
encryption needs RSA).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "Identity", "TestPKI", "make_pki"]

TLS_DOMAINS = ("a.mssante.test", "b.mssante.test")
SMIME_ADDRESSES = ("dr.martin@a.mssante.test", "secretariat@a.mssante.test", "dr.durand@b.mssante.test")
P12_PASSWORD = b"test-p12-password"
OPERATOR_ORG = {"a.mssante.test": "Operateur A", "b.mssante.test": "Operateur B"}


@dataclass(frozen=True)
class CA:
    """A certification authority: certificate, key and where they were written."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    cert_path: Path
    key_path: Path

    @property
    def subject(self) -> str:
        """RFC 4514 subject, e.g. ``CN=IGC-Santé TEST root,O=IGC-Santé TEST,C=FR``."""
        return self.cert.subject.rfc4514_string()


@dataclass(frozen=True)
class Identity:
    """An end-entity certificate with its private key.

    ``name`` is the host name for TLS identities (``mx.a.mssante.test``) and the e-mail address for
    S/MIME identities. ``chain`` holds the CA certificates a peer needs besides its roots (the
    intermediate for trusted leaves, nothing for leaves issued directly by the unknown root).
    ``chain_path`` is leaf + ``chain`` concatenated, i.e. what a TLS server presents
    (``SSLContext.load_cert_chain(chain_path, key_path)``).
    """

    name: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]
    cert_path: Path
    key_path: Path
    chain_path: Path

    @property
    def subject(self) -> str:
        """RFC 4514 subject, the form the MSSanté trust list matches on."""
        return self.cert.subject.rfc4514_string()

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


@dataclass(frozen=True)
class TestPKI:
    """Everything ``make_pki`` wrote, with the in-memory objects.

    Fields:
        directory: where the files live.
        now: reference time of the generation; every trusted leaf is valid from ``now - 1 day`` to
            ``now + 2 years``, expired leaves ended at ``now - 1 day``.
        root: ``CN=IGC-Santé TEST root`` (trust anchor, ``root.pem``).
        intermediate: ``CN=IGC-Santé TEST intermediate`` issued by ``root``; issues every trusted leaf
            and both CRLs' subject matter.
        unknown_ca: self-signed ``CN=Unknown TEST root``, never trusted.
        peer_ca: bundle root + intermediate (``peer-ca.pem``), the CA file for TLS peers and the
            S/MIME trust store.
        tls: operator TLS identities keyed by domain (``a.mssante.test``, ``b.mssante.test``); ECDSA,
            EKU serverAuth+clientAuth, subject ``CN=mx.<domain>,OU=Operateur,O=Operateur A|B,C=FR``,
            SAN ``mx.<domain>``, ``<domain>``, ``localhost`` and IP ``127.0.0.1`` (loopback tests).
        tls_impostor: same subject and SANs as ``tls["a.mssante.test"]`` but issued by ``unknown_ca``.
        tls_expired: same subject and SANs as ``tls["a.mssante.test"]``, issued by the intermediate,
            expired.
        smime: S/MIME identities keyed by e-mail address (``dr.martin@a.mssante.test``,
            ``secretariat@a.mssante.test``, ``dr.durand@b.mssante.test``); RSA-2048, EKU
            emailProtection, SAN rfc822Name.
        smime_expired: ``dr.ancien@a.mssante.test``, expired.
        smime_revoked: ``dr.revoque@a.mssante.test``, listed in ``crl_path``.
        smime_untrusted: ``dr.martin@a.mssante.test`` again, issued by ``unknown_ca``.
        crl_path / crl_der_path: CRL of the intermediate (PEM / DER) revoking ``smime_revoked``,
            next update ``now + 7 days``.
        root_crl_path: empty CRL of the root (PEM), for strict CRL checking of the intermediate.
        p12_path: PKCS#12 of ``smime["dr.martin@a.mssante.test"]`` with its intermediate, protected by
            ``p12_password``; p12_nopass_path: the same without password.
    """

    directory: Path
    now: datetime.datetime
    root: CA
    intermediate: CA
    unknown_ca: CA
    peer_ca: Path
    tls: dict[str, Identity]
    tls_impostor: Identity
    tls_expired: Identity
    smime: dict[str, Identity]
    smime_expired: Identity
    smime_revoked: Identity
    smime_untrusted: Identity
    crl_path: Path
    crl_der_path: Path
    root_crl_path: Path
    p12_path: Path
    p12_nopass_path: Path
    p12_password: bytes = field(default=P12_PASSWORD)

    __test__ = False  # not a pytest test class despite the name


def make_pki(directory: Path | str) -> TestPKI:
    """Write the test PKI into ``directory`` (created if needed) and describe it."""
    directory = Path(directory).resolve()
    cached = _written.get(directory)
    if cached is not None:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    m = _material()

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    def write_ca(stem: str, cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> CA:
        return CA(cert, key, write(f"{stem}.pem", _cert_pem(cert)), write(f"{stem}.key", _key_pem(key)))

    def write_identity(stem: str, raw: _Leaf) -> Identity:
        cert_pem = _cert_pem(raw.cert)
        return Identity(
            name=raw.name,
            cert=raw.cert,
            key=raw.key,
            chain=raw.chain,
            cert_path=write(f"{stem}.pem", cert_pem),
            key_path=write(f"{stem}.key", _key_pem(raw.key)),
            chain_path=write(f"{stem}.chain.pem", cert_pem + b"".join(_cert_pem(c) for c in raw.chain)),
        )

    martin = m.smime["dr.martin@a.mssante.test"]
    pki = TestPKI(
        directory=directory,
        now=m.now,
        root=write_ca("root", m.root.cert, m.root.key),
        intermediate=write_ca("intermediate", m.intermediate.cert, m.intermediate.key),
        unknown_ca=write_ca("unknown-ca", m.unknown.cert, m.unknown.key),
        peer_ca=write("peer-ca.pem", _cert_pem(m.root.cert) + _cert_pem(m.intermediate.cert)),
        tls={d: write_identity(f"tls-{d}", leaf) for d, leaf in m.tls.items()},
        tls_impostor=write_identity("tls-impostor", m.tls_impostor),
        tls_expired=write_identity("tls-expired", m.tls_expired),
        smime={a: write_identity(f"smime-{a}", leaf) for a, leaf in m.smime.items()},
        smime_expired=write_identity("smime-expired", m.smime_expired),
        smime_revoked=write_identity("smime-revoked", m.smime_revoked),
        smime_untrusted=write_identity("smime-untrusted", m.smime_untrusted),
        crl_path=write("intermediate.crl.pem", m.crl.public_bytes(serialization.Encoding.PEM)),
        crl_der_path=write("intermediate.crl.der", m.crl.public_bytes(serialization.Encoding.DER)),
        root_crl_path=write("root.crl.pem", m.root_crl.public_bytes(serialization.Encoding.PEM)),
        p12_path=write("dr.martin.p12", _p12(martin, P12_PASSWORD)),
        p12_nopass_path=write("dr.martin-nopass.p12", _p12(martin, None)),
    )
    _written[directory] = pki
    return pki


_written: dict[Path, TestPKI] = {}


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class _Leaf:
    name: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class _Material:
    now: datetime.datetime
    root: _Issuer
    intermediate: _Issuer
    unknown: _Issuer
    tls: dict[str, _Leaf]
    tls_impostor: _Leaf
    tls_expired: _Leaf
    smime: dict[str, _Leaf]
    smime_expired: _Leaf
    smime_revoked: _Leaf
    smime_untrusted: _Leaf
    crl: x509.CertificateRevocationList
    root_crl: x509.CertificateRevocationList


@functools.cache
def _material() -> _Material:
    """Generate every key and certificate once per process."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    root = _ca(_name("IGC-Santé TEST root", "IGC-Santé TEST"), None, now)
    intermediate = _ca(_name("IGC-Santé TEST intermediate", "IGC-Santé TEST"), root, now)
    unknown = _ca(_name("Unknown TEST root", "Nowhere"), None, now)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=730))
    expired = (now - datetime.timedelta(days=400), now - datetime.timedelta(days=1))

    tls = {d: _tls_leaf(d, intermediate, valid) for d in TLS_DOMAINS}
    smime = {a: _smime_leaf(a, intermediate, valid) for a in SMIME_ADDRESSES}
    revoked = _smime_leaf("dr.revoque@a.mssante.test", intermediate, valid)
    revoked_at = now - datetime.timedelta(hours=1)
    crl = _crl(
        intermediate,
        now,
        [
            x509.RevokedCertificateBuilder()
            .serial_number(revoked.cert.serial_number)
            .revocation_date(revoked_at)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        ],
    )
    return _Material(
        now=now,
        root=root,
        intermediate=intermediate,
        unknown=unknown,
        tls=tls,
        tls_impostor=_tls_leaf("a.mssante.test", unknown, valid),
        tls_expired=_tls_leaf("a.mssante.test", intermediate, expired),
        smime=smime,
        smime_expired=_smime_leaf("dr.ancien@a.mssante.test", intermediate, expired),
        smime_revoked=revoked,
        smime_untrusted=_smime_leaf("dr.martin@a.mssante.test", unknown, valid),
        crl=crl,
        root_crl=_crl(root, now, []),
    )


def _name(cn: str, org: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs += [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
    ]
    # x509.Name is stored most-significant first; rfc4514_string() then prints CN first.
    return x509.Name(list(reversed(attrs)))


def _ca(subject: x509.Name, parent: _Issuer | None, now: datetime.datetime) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = (subject, key) if parent is None else (parent.cert.subject, parent.key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if parent is None else 0), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    return _Issuer(builder.sign(issuer_key, hashes.SHA256()), key)


def _leaf(
    subject: x509.Name,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer: _Issuer,
    validity: tuple[datetime.datetime, datetime.datetime],
    san: list[x509.GeneralName],
    eku: list[x509.ObjectIdentifier],
    key_encipherment: bool,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_encipherment,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
        .sign(issuer.key, hashes.SHA256())
    )


def _chain(issuer: _Issuer) -> tuple[x509.Certificate, ...]:
    """CA certificates to ship with a leaf: everything but a self-signed root."""
    return () if issuer.cert.issuer == issuer.cert.subject else (issuer.cert,)


def _tls_leaf(domain: str, issuer: _Issuer, validity: tuple[datetime.datetime, datetime.datetime]) -> _Leaf:
    host = f"mx.{domain}"
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(
        _name(host, OPERATOR_ORG[domain], "Operateur"),
        key,
        issuer,
        validity,
        [
            x509.DNSName(host),
            x509.DNSName(domain),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        key_encipherment=False,
    )
    return _Leaf(host, cert, key, _chain(issuer))


def _smime_leaf(
    address: str, issuer: _Issuer, validity: tuple[datetime.datetime, datetime.datetime]
) -> _Leaf:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    domain = address.split("@", 1)[1]
    cert = _leaf(
        _name(address.split("@", 1)[0], OPERATOR_ORG[domain], "Personne"),
        key,
        issuer,
        validity,
        [x509.RFC822Name(address)],
        [ExtendedKeyUsageOID.EMAIL_PROTECTION],
        key_encipherment=True,
    )
    return _Leaf(address, cert, key, _chain(issuer))


def _crl(
    issuer: _Issuer, now: datetime.datetime, revoked: list[x509.RevokedCertificate]
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=7))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(issuer.key, hashes.SHA256())


def _p12(leaf: _Leaf, password: bytes | None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return pkcs12.serialize_key_and_certificates(
        leaf.name.encode(), leaf.key, leaf.cert, list(leaf.chain), encryption
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
