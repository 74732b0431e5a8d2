"""Identity loading (PKCS#12, PEM) and sealing of private keys at rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from smime.keys import (
    IdentityError,
    KeyMismatchError,
    MasterKeyError,
    NotEmailProtectionError,
    NotPKCS12Error,
    SealError,
    WrongPasswordError,
    load_or_create_master_key,
    load_pem_identity,
    load_pkcs12,
    open_private_key,
    seal_private_key,
)
from tests.pki import Identity, TestPKI


def test_pkcs12_with_and_without_password(pki: TestPKI, martin: Identity) -> None:
    for path, password in ((pki.p12_path, pki.p12_password), (pki.p12_nopass_path, None)):
        identity = load_pkcs12(path.read_bytes(), password)
        assert identity.cert == martin.cert
        assert identity.chain == (pki.intermediate.cert,)
        assert identity.emails == ["dr.martin@a.mssante.test"]


def test_pkcs12_errors(pki: TestPKI) -> None:
    with pytest.raises(WrongPasswordError, match="wrong"):
        load_pkcs12(pki.p12_path.read_bytes(), b"bad")
    with pytest.raises(WrongPasswordError, match="requires a password"):
        load_pkcs12(pki.p12_path.read_bytes())
    with pytest.raises(NotPKCS12Error):
        load_pkcs12(pki.crl_der_path.read_bytes(), b"x")
    with pytest.raises(NotPKCS12Error):
        load_pkcs12(b"not a pfx at all")


def test_pem_identity(pki: TestPKI, martin: Identity, durand: Identity) -> None:
    identity = load_pem_identity(martin.chain_path.read_bytes(), martin.key_pem)
    assert (identity.cert, identity.chain) == (martin.cert, (pki.intermediate.cert,))
    with pytest.raises(KeyMismatchError):
        load_pem_identity(martin.cert_pem, durand.key_pem)
    tls = pki.tls["a.mssante.test"]
    with pytest.raises(NotEmailProtectionError):
        load_pem_identity(tls.cert_pem, tls.key_pem)
    with pytest.raises(IdentityError):
        load_pem_identity(b"garbage", martin.key_pem)


def test_encrypted_pem_key_password(martin: Identity) -> None:
    encrypted = martin.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert load_pem_identity(martin.cert_pem, encrypted, b"secret").cert == martin.cert
    with pytest.raises(WrongPasswordError):
        load_pem_identity(martin.cert_pem, encrypted, b"wrong")
    with pytest.raises(WrongPasswordError):
        load_pem_identity(martin.cert_pem, encrypted)


def test_seal_round_trip_and_tampering(martin: Identity) -> None:
    master = os.urandom(32)
    sealed = seal_private_key(martin.key_pem, master)
    assert martin.key_pem not in sealed
    assert open_private_key(sealed, master) == martin.key_pem
    assert seal_private_key(martin.key_pem, master) != sealed  # fresh nonce each time
    for i in (0, 7, len(sealed) // 2, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x40
        with pytest.raises(SealError):
            open_private_key(bytes(tampered), master)
    with pytest.raises(SealError):
        open_private_key(sealed, os.urandom(32))
    with pytest.raises(SealError):
        open_private_key(sealed[:20], master)
    with pytest.raises(ValueError):
        seal_private_key(martin.key_pem, b"short")


def test_master_key_created_by_two_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second creator arriving while the first is generating the key (another process, or another
    delivery at first start) never reads a partial file, and both end with the one key on disk."""
    path = tmp_path / "master.key"
    real_urandom = os.urandom
    seen: list[bytes] = []

    def urandom(n: int) -> bytes:
        if n == 32 and not seen:
            seen.append(b"")
            seen.append(load_or_create_master_key(path))
        return real_urandom(n)

    monkeypatch.setattr(os, "urandom", urandom)
    key = load_or_create_master_key(path)
    assert key == seen[1] == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]


def test_master_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = load_or_create_master_key(path)
    assert len(key) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_master_key(path) == key

    path.chmod(0o640)
    with pytest.raises(MasterKeyError, match="mode 640"):
        load_or_create_master_key(path)
    path.chmod(0o600)
    path.write_bytes(b"x" * 31)
    with pytest.raises(MasterKeyError, match="31 bytes"):
        load_or_create_master_key(path)

    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(MasterKeyError):
        load_or_create_master_key(link)
