"""Identities and recipients' certificates managed through SMIMEService (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import text

from mailserver import accounts
from mailserver.runtime import Runtime
from smime.service import SMIMEError, SMIMEService, service_for
from tests.pki import TestPKI

MARTIN = "dr.martin@a.mssante.test"


async def test_import_pkcs12_with_password(svc: SMIMEService, pki: TestPKI) -> None:
    view = await svc.import_identity(MARTIN, pki.p12_path.read_bytes(), password=pki.p12_password)
    assert view.owner == MARTIN
    assert view.emails == [MARTIN]
    assert view.chain == [pki.intermediate.subject]
    shown = await svc.identity(MARTIN.upper())
    assert shown.fingerprint == pki.smime[MARTIN].cert.fingerprint(hashes.SHA256()).hex()
    assert shown.as_dict()["expired"] is False


async def test_import_pkcs12_without_password(svc: SMIMEService, pki: TestPKI) -> None:
    view = await svc.import_identity(MARTIN, pki.p12_nopass_path.read_bytes())
    assert view.subject == pki.smime[MARTIN].subject


@pytest.mark.parametrize("password", [b"wrong-password", None])
async def test_import_pkcs12_wrong_or_missing_password(
    svc: SMIMEService, pki: TestPKI, password: bytes | None
) -> None:
    with pytest.raises(SMIMEError, match="password"):
        await svc.import_identity(MARTIN, pki.p12_path.read_bytes(), password=password)
    with pytest.raises(SMIMEError, match="no S/MIME identity"):
        await svc.identity(MARTIN)


async def test_import_pem_pair_and_single_pem_file(svc: SMIMEService, pki: TestPKI) -> None:
    martin = pki.smime[MARTIN]
    view = await svc.import_identity(MARTIN, martin.chain_path.read_bytes(), key_pem=martin.key_pem)
    assert view.chain == [pki.intermediate.subject]
    view = await svc.import_identity(MARTIN, martin.chain_path.read_bytes() + martin.key_pem)
    assert view.fingerprint == martin.cert.fingerprint(hashes.SHA256()).hex()
    with pytest.raises(SMIMEError, match="--key"):
        await svc.import_identity(MARTIN, martin.cert_pem)


@pytest.mark.parametrize(
    ("address", "data", "message"),
    [
        ("secretariat@a.mssante.test", "p12", "not secretariat@a.mssante.test"),
        ("nobody@a.mssante.test", "p12", "no mailbox nobody@a.mssante.test"),
        (MARTIN, "garbage", "not a PKCS#12"),
        (MARTIN, "untrusted", "untrusted"),
        ("dr.revoque@a.mssante.test", "revoked", "revoked"),
        ("dr.ancien@a.mssante.test", "expired", "expired"),
        (MARTIN, "mismatch", "does not match"),
    ],
)
async def test_import_refusals(
    smime_rt: Runtime, svc: SMIMEService, pki: TestPKI, address: str, data: str, message: str
) -> None:
    for extra in ("dr.revoque@a.mssante.test", "dr.ancien@a.mssante.test"):
        await accounts.add_mailbox(smime_rt, extra, "ORG")
    leaf = {
        "untrusted": pki.smime_untrusted,
        "revoked": pki.smime_revoked,
        "expired": pki.smime_expired,
        "mismatch": pki.smime_untrusted,
    }.get(data, pki.smime[MARTIN])
    raw = {"p12": pki.p12_path.read_bytes(), "garbage": b"\x30\x03\x02\x01\x05"}.get(data)
    key = pki.smime[MARTIN].key_pem if data == "mismatch" else leaf.key_pem
    with pytest.raises(SMIMEError, match=message):
        if raw is None:
            await svc.import_identity(address, leaf.chain_path.read_bytes(), key_pem=key)
        else:
            await svc.import_identity(address, raw, password=pki.p12_password)


async def test_private_key_never_stored_in_clear(
    smime_rt: Runtime, svc: SMIMEService, pki: TestPKI, tmp_path: Path
) -> None:
    martin = pki.smime[MARTIN]
    await svc.import_identity(MARTIN, pki.p12_path.read_bytes(), password=pki.p12_password)
    await svc.import_identity(
        None,
        pki.smime["secretariat@a.mssante.test"].chain_path.read_bytes(),
        key_pem=pki.smime["secretariat@a.mssante.test"].key_pem,
    )
    der = martin.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw_rsa = martin.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    async with smime_rt.db.read() as session:
        rows = (
            await session.execute(text("SELECT sealed_key, cert_pem, chain_pem FROM smime_identity"))
        ).all()
    assert len(rows) == 2
    for sealed, cert_pem, chain_pem in rows:
        blob = bytes(sealed) + cert_pem.encode() + chain_pem.encode()
        assert b"PRIVATE KEY" not in blob
        assert der not in blob and raw_rsa not in blob
        assert der[-64:] not in blob
    if smime_rt.db.kind == "sqlite":
        on_disk = await asyncio.to_thread(_database_files, tmp_path)
        assert der[-64:] not in on_disk and b"PRIVATE KEY" not in on_disk


def _database_files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.glob("caducee.db*"))


def test_sealed_with_the_master_key_file(smime_rt: Runtime, svc: SMIMEService) -> None:
    key_file = Path(smime_rt.settings.smime.key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert svc.master_key == key_file.read_bytes()


async def test_replace_show_and_remove(smime_rt: Runtime, svc: SMIMEService, pki: TestPKI) -> None:
    await svc.import_identity(MARTIN, pki.p12_path.read_bytes(), password=pki.p12_password)
    await svc.import_identity(MARTIN, pki.p12_nopass_path.read_bytes())
    async with smime_rt.db.read() as session:
        count = (await session.execute(text("SELECT count(*) FROM smime_identity"))).scalar_one()
    assert count == 1
    mine = [v for v in await svc.recipients() if v.owner == MARTIN]
    assert [v.source for v in mine] == ["mailbox"]
    await svc.remove_identity(MARTIN)
    with pytest.raises(SMIMEError, match=r"no S/MIME identity for dr\.martin"):
        await svc.identity(MARTIN)
    with pytest.raises(SMIMEError, match="no S/MIME identity"):
        await svc.remove_identity(MARTIN)
    assert [v for v in await svc.recipients() if v.owner == MARTIN] == []
    events = await smime_rt.audit.events(action="admin")
    assert any(e.request.startswith(f"smime import {MARTIN} sha256=") for e in events)
    assert any(e.request == f"smime remove {MARTIN}" for e in events)


async def test_operator_identity(svc: SMIMEService, pki: TestPKI) -> None:
    org = pki.smime["secretariat@a.mssante.test"]
    view = await svc.import_identity(None, org.chain_path.read_bytes(), key_pem=org.key_pem)
    assert view.owner == "operator"
    assert (await svc.identity(None)).subject == org.subject
    # The operator's certificate is no mailbox's: it is not offered for encryption.
    assert await svc.recipients() == []
    await svc.remove_identity(None)
    with pytest.raises(SMIMEError, match="the operator"):
        await svc.identity(None)


async def test_identity_deleted_with_its_mailbox(smime_rt: Runtime, svc: SMIMEService, pki: TestPKI) -> None:
    await svc.import_identity(MARTIN, pki.p12_path.read_bytes(), password=pki.p12_password)
    await accounts.delete_mailbox(smime_rt, MARTIN)
    async with smime_rt.db.read() as session:
        assert (await session.execute(text("SELECT count(*) FROM smime_identity"))).scalar_one() == 0


async def test_import_recipient(svc: SMIMEService, pki: TestPKI) -> None:
    durand = pki.smime["dr.durand@b.mssante.test"]
    views = await svc.import_recipient(durand.chain_path.read_bytes())
    assert [(v.owner, v.source) for v in views] == [("dr.durand@b.mssante.test", "import")]
    again = await svc.import_recipient(durand.cert.public_bytes(serialization.Encoding.DER))
    assert [v.fingerprint for v in again] == [views[0].fingerprint]
    listed = await svc.recipients()
    assert [(v.owner, v.source) for v in listed] == [("dr.durand@b.mssante.test", "import")]
    assert listed[0].as_dict()["fingerprint_sha256"] == views[0].fingerprint


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("untrusted", "untrusted"),
        ("revoked", "revoked"),
        ("expired", "cannot be used"),
        ("junk", "not a cert"),
    ],
)
async def test_import_recipient_refusals(svc: SMIMEService, pki: TestPKI, which: str, message: str) -> None:
    data = {
        "untrusted": pki.smime_untrusted.cert_pem,
        "revoked": pki.smime_revoked.cert_pem,
        "expired": pki.smime_expired.cert_pem,
        "junk": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    }[which]
    with pytest.raises(SMIMEError, match=message):
        await svc.import_recipient(data)
    assert await svc.recipients() == []


def _confidentiality_certificate(pki: TestPKI, address: str) -> x509.Certificate:
    """An encryption-only certificate (keyEncipherment, no digitalSignature), as IGC-Santé issues."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conf")]))
        .issuer_name(pki.intermediate.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.intermediate.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(pki.intermediate.key, hashes.SHA256())
    )


async def test_import_encryption_only_recipient_certificate(svc: SMIMEService, pki: TestPKI) -> None:
    cert = _confidentiality_certificate(pki, "conf@b.mssante.test")
    views = await svc.import_recipient(cert.public_bytes(serialization.Encoding.PEM))
    assert [v.owner for v in views] == ["conf@b.mssante.test"]


async def test_service_is_cached_per_runtime(smime_rt: Runtime, svc: SMIMEService) -> None:
    assert await service_for(smime_rt) is svc


async def test_service_built_once_when_first_deliveries_arrive_together(
    smime_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At first start, concurrent deliveries share one build (it creates the master key file)."""
    builds: list[Runtime] = []
    real = SMIMEService.from_runtime.__func__

    def counting(cls: type[SMIMEService], rt: Runtime) -> SMIMEService:
        builds.append(rt)
        return real(cls, rt)

    monkeypatch.setattr(SMIMEService, "from_runtime", classmethod(counting))
    services = await asyncio.gather(*(service_for(smime_rt) for _ in range(8)))
    assert len(builds) == 1
    assert all(s is services[0] for s in services)


async def test_failed_service_build_is_tried_again(
    smime_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = SMIMEService.from_runtime.__func__
    calls: list[int] = []

    def flaky(cls: type[SMIMEService], rt: Runtime) -> SMIMEService:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("anchors unreadable")
        return real(cls, rt)

    monkeypatch.setattr(SMIMEService, "from_runtime", classmethod(flaky))
    with pytest.raises(OSError):
        await service_for(smime_rt)
    assert isinstance(await service_for(smime_rt), SMIMEService)
    assert len(calls) == 2
