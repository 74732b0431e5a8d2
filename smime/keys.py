"""S/MIME identities (PKCS#12 or PEM) and protection of private keys at rest."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs12

from smime.pki import certificate_emails, has_email_protection

__all__ = [
    "IdentityError",
    "KeyMismatchError",
    "MasterKeyError",
    "NotEmailProtectionError",
    "NotPKCS12Error",
    "SMIMEIdentity",
    "SealError",
    "WrongPasswordError",
    "load_or_create_master_key",
    "load_pem_identity",
    "load_pkcs12",
    "open_private_key",
    "seal_private_key",
]

MASTER_KEY_SIZE = 32
_SEAL_MAGIC = b"CDSK1"  # format tag and version, authenticated as AAD
_NONCE_SIZE = 12


class IdentityError(Exception):
    """Base class: an S/MIME identity cannot be loaded."""


class WrongPasswordError(IdentityError):
    """The PKCS#12 (or encrypted PEM key) is well formed but the password is wrong."""


class NotPKCS12Error(IdentityError):
    """The data is not a PKCS#12 (PFX) structure."""


class KeyMismatchError(IdentityError):
    """The private key does not belong to the certificate."""


class NotEmailProtectionError(IdentityError):
    """The certificate's extended key usage excludes S/MIME (RFC 8550 §4.4.4)."""


class SealError(Exception):
    """A sealed private key is corrupt, truncated or sealed under another master key."""


class MasterKeyError(Exception):
    """The master key file is unsafe (permissions) or damaged (size)."""


@dataclass(frozen=True)
class SMIMEIdentity:
    """A signing/decryption identity; ``chain`` holds the intermediates to embed in signatures."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    @property
    def emails(self) -> list[str]:
        return certificate_emails(self.cert)


def _check(key: object, cert: x509.Certificate | None, chain: list[x509.Certificate]) -> SMIMEIdentity:
    if cert is None:
        raise IdentityError("no end-entity certificate")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise IdentityError(f"unsupported private key type {type(key).__name__} (RSA or EC expected)")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise KeyMismatchError(f"private key does not match certificate {cert.subject.rfc4514_string()}")
    if not has_email_protection(cert):
        raise NotEmailProtectionError(f"certificate {cert.subject.rfc4514_string()} lacks emailProtection")
    return SMIMEIdentity(key, cert, tuple(chain))


def load_pkcs12(data: bytes, password: bytes | None = None) -> SMIMEIdentity:
    """Load a PKCS#12 bundle, telling a wrong password apart from data that is not PKCS#12.

    cryptography reports both as the same ValueError, so the outer PFX structure is parsed first.
    """
    try:
        version = asn1_pkcs12.Pfx.load(data, strict=True)["version"].native
    except (ValueError, TypeError, KeyError) as exc:
        raise NotPKCS12Error(f"not a PKCS#12 file: {exc}") from exc
    if version != "v3":
        raise NotPKCS12Error(f"unsupported PFX version {version} (RFC 7292 §4 requires v3)")
    attempts = [password] if password else [None, b""]
    for attempt in attempts:
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, attempt)
        except ValueError:
            continue
        return _check(key, cert, extra)
    raise WrongPasswordError("wrong PKCS#12 password" if password else "PKCS#12 requires a password")


def load_pem_identity(cert_pem: bytes, key_pem: bytes, password: bytes | None = None) -> SMIMEIdentity:
    """Load a PEM certificate file (leaf first, then intermediates) and its PEM private key."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise IdentityError(f"invalid PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password)
    except TypeError as exc:
        raise WrongPasswordError(f"private key password problem: {exc}") from exc
    except ValueError as exc:
        message = str(exc).lower()
        if password is not None and ("decrypt" in message or "password" in message):
            raise WrongPasswordError("wrong private key password") from exc
        raise IdentityError(f"invalid PEM private key: {exc}") from exc
    return _check(key, certs[0], certs[1:])


def seal_private_key(key_pem: bytes, master_key: bytes) -> bytes:
    """Encrypt a private key for storage with AES-256-GCM: magic || 96-bit random nonce || ciphertext.

    The magic is authenticated as associated data, so a blob from another format or version is
    rejected rather than misread. A random nonce is safe here: far fewer than 2^32 keys per master key.
    """
    if len(master_key) != MASTER_KEY_SIZE:
        raise ValueError("master key must be 32 bytes")
    nonce = os.urandom(_NONCE_SIZE)
    return _SEAL_MAGIC + nonce + AESGCM(master_key).encrypt(nonce, key_pem, _SEAL_MAGIC)


def open_private_key(sealed: bytes, master_key: bytes) -> bytes:
    """Reverse :func:`seal_private_key`; any modification or wrong master key raises SealError."""
    if len(master_key) != MASTER_KEY_SIZE:
        raise ValueError("master key must be 32 bytes")
    if not sealed.startswith(_SEAL_MAGIC) or len(sealed) < len(_SEAL_MAGIC) + _NONCE_SIZE + 16:
        raise SealError("not a sealed private key")
    nonce = sealed[len(_SEAL_MAGIC) : len(_SEAL_MAGIC) + _NONCE_SIZE]
    try:
        return AESGCM(master_key).decrypt(nonce, sealed[len(_SEAL_MAGIC) + _NONCE_SIZE :], _SEAL_MAGIC)
    except InvalidTag as exc:
        raise SealError("sealed private key failed authentication (tampered or wrong master key)") from exc


def load_or_create_master_key(path: Path | str) -> bytes:
    """Return the 32-byte master key at ``path``, creating it (mode 0600) if absent.

    A new key is written to a private temporary file, fsync'ed, then linked to ``path`` (which fails
    if another process or thread created it first: that key wins), so nobody can ever read a partial
    key file. An existing file readable or writable by group/others is refused rather than fixed: it
    may already have leaked, and silently tightening it would hide that. Symlinks are not followed.
    """
    path = Path(path)
    if os.path.lexists(path):
        return _read_master_key(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        key = os.urandom(MASTER_KEY_SIZE)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_master_key(path)
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


def _read_master_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise MasterKeyError(f"cannot open master key {path}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"master key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise MasterKeyError(f"master key {path} has mode {stat.S_IMODE(info.st_mode):o}; expected 600")
        if info.st_size != MASTER_KEY_SIZE:
            raise MasterKeyError(f"master key {path} is {info.st_size} bytes; expected {MASTER_KEY_SIZE}")
        key = os.read(fd, MASTER_KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(key) != MASTER_KEY_SIZE:
        raise MasterKeyError(f"master key {path} changed while being read")
    return key
