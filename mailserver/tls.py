"""TLS contexts for every listener and for outbound delivery, and the first-run certificates.

``tls.cert`` (chain) and ``tls.key`` are the operator's identity, used as server certificate and as client
certificate towards peers; ``tls.peer_ca`` holds the health PKI roots and intermediates peers must chain
to. Who a verified peer *is* (its subject DN against the trust list) is decided by the trust policy, not here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.settings import TLSSettings


def _min_version(tls: TLSSettings) -> ssl.TLSVersion:
    return ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2


def server_context(
    tls: TLSSettings, client_cert: Literal["none", "optional", "required"] = "none"
) -> ssl.SSLContext:
    """A server context; with ``client_cert`` the peer's certificate is checked against ``tls.peer_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _min_version(tls)
    ctx.load_cert_chain(tls.cert, tls.key)
    if client_cert != "none":
        ctx.load_verify_locations(cafile=tls.peer_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if client_cert == "required" else ssl.CERT_OPTIONAL
    return ctx


def client_context(tls: TLSSettings) -> ssl.SSLContext:
    """Outbound to a peer operator: present our certificate, require theirs to chain to ``tls.peer_ca``.

    Host-name checking is off on purpose: a peer is identified by its subject DN against the trust list
    (checked by the caller on the verified certificate), which also covers static routes to an IP address.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _min_version(tls)
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.load_verify_locations(cafile=tls.peer_ca)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_first_run_certificates(directory: Path, hostname: str, organisation: str) -> tuple[Path, Path, Path]:
    """A local CA and a server certificate for a first run; returns (chain, key, ca) paths.

    Production replaces these with the operator's IGC-Santé certificate and the health PKI bundle.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} local CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostname),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        ]
    )
    names: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain, key_path, ca_path = directory / "chain.pem", directory / "key.pem", directory / "peer-ca.pem"
    _write(chain, cert.public_bytes(pem) + ca.public_bytes(pem))
    _write(
        key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        True,
    )
    _write(ca_path, ca.public_bytes(pem))
    return chain, key_path, ca_path
