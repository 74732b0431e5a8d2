"""Trust store: anchors, path validation reasons, CRL loading and freshness."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from smime.pki import PKIError, TrustStore, certificate_emails
from tests.pki import TestPKI


def test_bundle_splits_roots_and_intermediates(pki: TestPKI) -> None:
    store = TrustStore.from_files(pki.peer_ca)
    assert store.roots == [pki.root.cert]
    assert store.intermediates == [pki.intermediate.cert]
    with pytest.raises(PKIError, match="no self-signed root"):
        TrustStore([pki.intermediate.cert])
    with pytest.raises(PKIError):
        TrustStore.from_files(pki.directory / "missing.pem")


def test_reasons(pki: TestPKI, trust: TrustStore) -> None:
    martin = pki.smime["dr.martin@a.mssante.test"]
    result = trust.verify(martin.cert)
    assert result.ok and result.chain == (martin.cert, pki.intermediate.cert, pki.root.cert)
    assert trust.verify(martin.cert, at=pki.now - datetime.timedelta(days=2)).reason == "not-yet-valid"
    assert trust.verify(martin.cert, at=pki.now + datetime.timedelta(days=800)).reason == "expired"
    assert trust.verify(pki.smime_expired.cert).reason == "expired"
    assert trust.verify(pki.smime_revoked.cert).reason == "revoked"
    assert trust.verify(pki.smime_untrusted.cert).reason == "untrusted"
    assert trust.verify(pki.tls["b.mssante.test"].cert).reason == "bad-usage"


def test_intermediate_alone_is_not_an_anchor(pki: TestPKI) -> None:
    bundle = pki.directory / "intermediate-and-unknown.pem"
    bundle.write_bytes(pki.intermediate.cert_path.read_bytes() + pki.unknown_ca.cert_path.read_bytes())
    store = TrustStore.from_files(bundle)
    assert store.verify(pki.smime["dr.martin@a.mssante.test"].cert).reason == "untrusted"


def write_crl(pki: TestPKI, path: Path, next_update: datetime.datetime, signer=None, serials=()) -> Path:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.intermediate.cert.subject)
        .last_update(pki.now - datetime.timedelta(days=30))
        .next_update(next_update)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(pki.now).build()
        )
    crl = builder.sign(signer or pki.intermediate.key, hashes.SHA256())
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def test_stale_crl(pki: TestPKI, tmp_path: Path) -> None:
    stale = write_crl(pki, tmp_path / "stale.pem", pki.now - datetime.timedelta(days=1))
    lenient = TrustStore.from_files(pki.peer_ca, [stale, pki.root_crl_path])
    result = lenient.verify(pki.smime["dr.martin@a.mssante.test"].cert)
    assert result.ok and result.warnings == (f"crl-stale:{pki.intermediate.subject}",)
    strict = TrustStore.from_files(pki.peer_ca, [stale, pki.root_crl_path], strict_crl=True)
    assert strict.verify(pki.smime["dr.martin@a.mssante.test"].cert).reason == "untrusted"
    strict_missing = TrustStore.from_files(pki.peer_ca, [pki.crl_path], strict_crl=True)
    assert strict_missing.verify(pki.smime["dr.martin@a.mssante.test"].cert).reason == "untrusted"
    strict_ok = TrustStore.from_files(pki.peer_ca, [pki.crl_path, pki.root_crl_path], strict_crl=True)
    assert strict_ok.verify(pki.smime["dr.martin@a.mssante.test"].cert).ok


def test_reload_and_forged_crl(pki: TestPKI, tmp_path: Path) -> None:
    path = write_crl(pki, tmp_path / "crl.pem", pki.now + datetime.timedelta(days=1))
    store = TrustStore.from_files(pki.peer_ca, [path])
    martin = pki.smime["dr.martin@a.mssante.test"]
    assert store.verify(martin.cert).ok
    write_crl(pki, path, pki.now + datetime.timedelta(days=1), serials=[martin.cert.serial_number])
    assert store.verify(martin.cert).ok
    store.reload_crls()
    assert store.verify(martin.cert).reason == "revoked"

    write_crl(pki, path, pki.now + datetime.timedelta(days=1), signer=pki.unknown_ca.key)
    with pytest.raises(PKIError, match="not signed by a trusted CA"):
        store.reload_crls()
    assert store.verify(martin.cert).reason == "revoked"  # previous CRL set kept
    path.write_bytes(b"garbage")
    with pytest.raises(PKIError, match="cannot load CRL"):
        store.reload_crls()


def test_certificate_emails(pki: TestPKI) -> None:
    assert certificate_emails(pki.smime["dr.durand@b.mssante.test"].cert) == ["dr.durand@b.mssante.test"]
    assert certificate_emails(pki.tls["a.mssante.test"].cert) == []
