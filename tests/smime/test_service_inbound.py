"""Local delivery side: verification, Authentication-Results, learned certificates (both engines)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from mailserver.runtime import Runtime
from smime import service as service_module
from smime.service import (
    SMIMEService,
    prepare_for_local_delivery,
    service_for,
    strip_authentication_results,
)
from smime.sign import sign_message
from tests.pki import Identity, TestPKI
from tests.smime.smime_samples import text_message

HOST = "mx.a.mssante.test"
MARTIN = "dr.martin@a.mssante.test"
DURAND = "dr.durand@b.mssante.test"


def signed_by(who: Identity, sender: str | None = None) -> bytes:
    return sign_message(text_message(sender=sender or who.name), who.key, who.cert, who.chain).message


def ar_line(value: str) -> bytes:
    return f"Authentication-Results: {HOST}; {value}\r\n".encode()


async def test_valid_signature_passes_and_nothing_else_changes(smime_rt: Runtime, pki: TestPKI) -> None:
    signed = signed_by(pki.smime[DURAND])
    out = await prepare_for_local_delivery(smime_rt, signed)
    assert out == ar_line(f"smime=pass header.from={DURAND} (ok)") + signed


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        ("unsigned", "smime=none header.from=dr.martin@a.mssante.test (unsigned)"),
        ("tampered", "smime=fail header.from=dr.durand@b.mssante.test (digest-mismatch)"),
        ("untrusted", "smime=fail header.from=dr.martin@a.mssante.test (untrusted)"),
        ("revoked", "smime=fail header.from=dr.revoque@a.mssante.test (revoked)"),
        ("impersonation", "smime=fail header.from=dr.martin@a.mssante.test (address-mismatch)"),
    ],
)
async def test_results(smime_rt: Runtime, pki: TestPKI, make: str, expected: str) -> None:
    raw = {
        "unsigned": lambda: text_message(),
        "tampered": lambda: signed_by(pki.smime[DURAND]).replace(b"Compte rendu.", b"Compte rendu!"),
        "untrusted": lambda: signed_by(pki.smime_untrusted),
        "revoked": lambda: signed_by(pki.smime_revoked),
        "impersonation": lambda: signed_by(pki.smime[DURAND], sender=MARTIN),
    }[make]()
    out = await prepare_for_local_delivery(smime_rt, raw)
    assert out == ar_line(expected) + raw
    svc = await service_for(smime_rt)
    assert await svc.recipients() == []


FORGED = (
    b"Authentication-Results: mx.a.mssante.test; smime=pass header.from=dr.martin@a.mssante.test\r\n"
    b"Received: from mx.b.mssante.test by mx.a.mssante.test; Mon, 06 Jan 2025 10:00:01 +0100\r\n"
    b"Authentication-Results: (forged) MX.A.MSSANTE.TEST 1;\r\n\tsmime=pass (looks real)\r\n"
    b'authentication-results : "mx.a.mssante.test"; dkim=pass\r\n'
    b"Authentication-Results: mx.b.mssante.test; smime=pass header.from=dr.martin@a.mssante.test\r\n"
    b"Authentication-Results: mx.a.mssante.test.evil; smime=pass\r\n"
)
KEPT = (
    b"Received: from mx.b.mssante.test by mx.a.mssante.test; Mon, 06 Jan 2025 10:00:01 +0100\r\n"
    b"Authentication-Results: mx.b.mssante.test; smime=pass header.from=dr.martin@a.mssante.test\r\n"
    b"Authentication-Results: mx.a.mssante.test.evil; smime=pass\r\n"
)


async def test_forged_results_with_our_authserv_id_are_removed(smime_rt: Runtime) -> None:
    raw = text_message()
    out = await prepare_for_local_delivery(smime_rt, FORGED + raw)
    assert out == ar_line("smime=none header.from=dr.martin@a.mssante.test (unsigned)") + KEPT + raw


async def test_forged_results_removed_even_without_verification(smime_rt: Runtime) -> None:
    smime_rt.settings.smime.verify = False
    raw = text_message()
    assert await prepare_for_local_delivery(smime_rt, FORGED + raw) == KEPT + raw
    assert await prepare_for_local_delivery(smime_rt, raw) is raw


def test_strip_keeps_lf_messages_and_headerless_input_exact() -> None:
    lf = FORGED.replace(b"\r\n", b"\n") + b"Subject: x\n\nbody\n"
    assert strip_authentication_results(lf, HOST) == KEPT.replace(b"\r\n", b"\n") + b"Subject: x\n\nbody\n"
    only_header = b"Authentication-Results: mx.a.mssante.test; none"
    assert strip_authentication_results(only_header, HOST) == b""
    assert strip_authentication_results(b"\r\nbody", HOST) == b"\r\nbody"


async def test_verified_signer_certificate_is_learned_once(smime_rt: Runtime, pki: TestPKI) -> None:
    svc = await service_for(smime_rt)
    for _ in range(2):
        await prepare_for_local_delivery(smime_rt, signed_by(pki.smime[DURAND]))
    learned = await svc.recipients()
    assert [(v.owner, v.source, v.subject) for v in learned] == [
        (DURAND, "learned", pki.smime[DURAND].subject)
    ]
    # A reply can now be encrypted to the correspondent.
    smime_rt.settings.smime.encrypt = "required"
    await svc.check_recipient(DURAND)


async def test_without_trust_anchors_signed_is_temperror(runtime: Runtime, pki: TestPKI) -> None:
    svc = await service_for(runtime)
    assert svc.trust is None
    signed = signed_by(pki.smime[DURAND])
    out = await svc.inbound(signed)
    assert out == ar_line(f"smime=temperror header.from={DURAND} (no-trust-anchors)") + signed
    assert await svc.inbound(text_message()) == ar_line(f"smime=none header.from={MARTIN} (unsigned)") + (
        text_message()
    )


async def test_replaced_crl_file_is_picked_up(
    runtime: Runtime, pki: TestPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "CRL_CHECK_INTERVAL", 0.0)
    crl = tmp_path / "current.crl"
    await asyncio.to_thread(shutil.copyfile, pki.root_crl_path, crl)
    runtime.settings.smime.ca = str(pki.peer_ca)
    runtime.settings.smime.crl = [str(crl)]
    svc: SMIMEService = await service_for(runtime)
    revoked = signed_by(pki.smime_revoked)
    assert b"smime=pass" in (await svc.inbound(revoked)).split(b"\r\n", 1)[0]
    await asyncio.to_thread(shutil.copyfile, pki.crl_path, crl)
    os.utime(crl, ns=(1, 1))
    assert b"smime=fail" in (await svc.inbound(revoked)).split(b"\r\n", 1)[0]
    # A broken replacement keeps the CRLs already loaded.
    await asyncio.to_thread(crl.write_bytes, b"garbage")
    os.utime(crl, ns=(2, 2))
    assert b"(revoked)" in (await svc.inbound(revoked)).split(b"\r\n", 1)[0]
