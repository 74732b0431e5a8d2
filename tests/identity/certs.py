"""Software certificates for applicative mailboxes, issued by the test PKI's intermediate CA
(``tests/pki.py``): a valid one, its renewal (same subject, new key and serial), a revoked one (in
``crl_path``, signed by the intermediate) and an expired one. EKU clientAuth, as the IGC-Santé issues
software ("personne morale") authentication certificates."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.pki import Identity, _cert_pem, _crl, _Issuer, _key_pem, _leaf, _name


@dataclass(frozen=True)
class AppCerts:
    dpi: Identity
    renewed: Identity
    revoked: Identity
    expired: Identity
    crl_path: Path


def _identity(directory: Path, stem: str, cn: str, issuer: _Issuer, validity: Any) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(
        _name(cn, "CHU TEST", "Logiciel"),
        key,
        issuer,
        validity,
        [x509.DNSName(f"{cn}.a.mssante.test")],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        key_encipherment=False,
    )
    pem = _cert_pem(cert)
    paths = {name: directory / f"{stem}{name}" for name in (".pem", ".key", ".chain.pem")}
    paths[".pem"].write_bytes(pem)
    paths[".key"].write_bytes(_key_pem(key))
    paths[".chain.pem"].write_bytes(pem + _cert_pem(issuer.cert))
    return Identity(cn, cert, key, (issuer.cert,), paths[".pem"], paths[".key"], paths[".chain.pem"])


def make_app_certs(pki: Any, directory: Path) -> AppCerts:
    directory.mkdir(parents=True, exist_ok=True)
    issuer = _Issuer(pki.intermediate.cert, pki.intermediate.key)
    now = pki.now
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=365))
    expired = (now - datetime.timedelta(days=400), now - datetime.timedelta(days=1))
    revoked = _identity(directory, "app-revoked", "dpi-revoque", issuer, valid)
    crl = _crl(
        issuer,
        now,
        [
            x509.RevokedCertificateBuilder()
            .serial_number(revoked.cert.serial_number)
            .revocation_date(now - datetime.timedelta(hours=1))
            .build()
        ],
    )
    from cryptography.hazmat.primitives import serialization

    crl_path = directory / "app.crl.der"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    return AppCerts(
        dpi=_identity(directory, "app-dpi", "dpi", issuer, valid),
        renewed=_identity(directory, "app-dpi-renewed", "dpi", issuer, valid),
        revoked=revoked,
        expired=_identity(directory, "app-expired", "dpi-ancien", issuer, expired),
        crl_path=crl_path,
    )
