"""Submission side: signing and encryption per policy, checked with ``openssl cms`` (both engines)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms

from mailserver import accounts
from mailserver.policy import Refusal
from mailserver.runtime import Runtime
from smime.mime import split_entity
from smime.service import SMIMEService, check_recipient, prepare_for_sending
from smime.sign import sign_message
from tests.pki import Identity, TestPKI
from tests.smime.smime_samples import text_message

MARTIN = "dr.martin@a.mssante.test"
SECRETARIAT = "secretariat@a.mssante.test"
DURAND = "dr.durand@b.mssante.test"


def openssl(*args: str | Path, data: bytes) -> bytes:
    proc = subprocess.run(["openssl", "cms", *map(str, args)], input=data, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def openssl_verify(pki: TestPKI, message: bytes) -> bytes:
    return openssl("-verify", "-CAfile", pki.root.cert_path, "-purpose", "smimesign", data=message)


def openssl_signer(pki: TestPKI, message: bytes, tmp_path: Path) -> str:
    signer = tmp_path / "signer.pem"
    openssl("-verify", "-CAfile", pki.root.cert_path, "-signer", signer, data=message)
    return signer.read_text()


def openssl_decrypt(who: Identity, message: bytes) -> bytes:
    return openssl("-decrypt", "-recip", who.cert_path, "-inkey", who.key_path, data=message)


async def _mailbox_id(rt: Runtime, address: str) -> int:
    return (await accounts.get_mailbox(rt, address)).id


@pytest.fixture
async def martin_id(smime_rt: Runtime, svc: SMIMEService, pki: TestPKI) -> int:
    await svc.import_identity(MARTIN, pki.p12_path.read_bytes(), password=pki.p12_password)
    return await _mailbox_id(smime_rt, MARTIN)


def _policy(rt: Runtime, sign: str, encrypt: str = "never") -> None:
    rt.settings.smime.sign = sign  # type: ignore[assignment]
    rt.settings.smime.encrypt = encrypt  # type: ignore[assignment]


@pytest.mark.parametrize("policy", ["always", "if-certificate"])
async def test_signed_with_the_mailbox_identity(
    smime_rt: Runtime, martin_id: int, pki: TestPKI, tmp_path: Path, policy: str
) -> None:
    _policy(smime_rt, policy)
    raw = text_message(body="Résultats joints.\r\n".encode())
    out = await prepare_for_sending(smime_rt, martin_id, raw, [DURAND])
    assert split_entity(out).content_type().get_content_type() == "multipart/signed"
    content = openssl_verify(pki, out)
    assert b"R=C3=A9sultats joints." in content
    assert openssl_signer(pki, out, tmp_path) == pki.smime[MARTIN].cert_pem.decode()
    assert out.startswith(b"From: Dr Martin <dr.martin@a.mssante.test>\r\n")


async def test_never_leaves_the_message_alone(smime_rt: Runtime, martin_id: int) -> None:
    _policy(smime_rt, "never")
    raw = text_message()
    assert await prepare_for_sending(smime_rt, martin_id, raw, [DURAND]) is raw


async def test_if_certificate_without_one_sends_unsigned(
    smime_rt: Runtime, svc: SMIMEService, pki: TestPKI
) -> None:
    org = pki.smime[SECRETARIAT]
    await svc.import_identity(None, org.chain_path.read_bytes(), key_pem=org.key_pem)
    _policy(smime_rt, "if-certificate")
    raw = text_message()
    mailbox_id = await _mailbox_id(smime_rt, MARTIN)
    assert await svc.outbound(mailbox_id, raw, [DURAND]) == raw


async def test_always_falls_back_to_the_operator_identity(
    smime_rt: Runtime, svc: SMIMEService, pki: TestPKI, tmp_path: Path
) -> None:
    org = pki.smime[SECRETARIAT]
    await svc.import_identity(None, org.chain_path.read_bytes(), key_pem=org.key_pem)
    _policy(smime_rt, "always")
    mailbox_id = await _mailbox_id(smime_rt, MARTIN)
    out = await svc.outbound(mailbox_id, text_message(), [DURAND])
    assert openssl_signer(pki, out, tmp_path) == org.cert_pem.decode()
    out = await svc.outbound(None, text_message(), [DURAND])
    assert openssl_signer(pki, out, tmp_path) == org.cert_pem.decode()


async def test_mailbox_identity_wins_over_the_operator(
    smime_rt: Runtime, svc: SMIMEService, martin_id: int, pki: TestPKI, tmp_path: Path
) -> None:
    org = pki.smime[SECRETARIAT]
    await svc.import_identity(None, org.chain_path.read_bytes(), key_pem=org.key_pem)
    _policy(smime_rt, "always")
    out = await svc.outbound(martin_id, text_message(), [DURAND])
    assert openssl_signer(pki, out, tmp_path) == pki.smime[MARTIN].cert_pem.decode()


async def test_always_without_any_certificate_is_refused(smime_rt: Runtime, svc: SMIMEService) -> None:
    _policy(smime_rt, "always")
    with pytest.raises(Refusal) as info:
        await svc.outbound(await _mailbox_id(smime_rt, MARTIN), text_message(), [DURAND])
    assert (info.value.code, info.value.enhanced) == (554, "5.7.1")
    assert "signing is required but no certificate is configured" in info.value.text


async def test_already_signed_message_is_untouched(
    smime_rt: Runtime, svc: SMIMEService, martin_id: int, pki: TestPKI
) -> None:
    _policy(smime_rt, "always")
    durand = pki.smime[DURAND]
    signed = sign_message(text_message(sender=DURAND), durand.key, durand.cert, durand.chain).message
    assert await svc.outbound(martin_id, signed, [MARTIN]) == signed


def _envelope(message: bytes) -> cms.EnvelopedData:
    body = split_entity(message).body
    info = cms.ContentInfo.load(base64.b64decode(b"".join(body.split())))
    assert info["content_type"].native == "enveloped_data"
    return info["content"]


async def test_encrypted_to_every_recipient_after_signing(
    smime_rt: Runtime, svc: SMIMEService, martin_id: int, pki: TestPKI
) -> None:
    org = pki.smime[SECRETARIAT]
    await svc.import_identity(SECRETARIAT, org.chain_path.read_bytes(), key_pem=org.key_pem)
    await svc.import_recipient(pki.smime[DURAND].chain_path.read_bytes())
    _policy(smime_rt, "if-certificate", "if-certificate")
    raw = text_message(body=b"Confidentiel.\r\n")
    out = await svc.outbound(martin_id, raw, [DURAND, SECRETARIAT.upper()])
    entity = split_entity(out)
    assert entity.content_type().get_content_type() == "application/pkcs7-mime"
    assert entity.get("subject") == "Compte rendu" and b"Confidentiel" not in out
    envelope = _envelope(out)
    assert len(envelope["recipient_infos"]) == 2
    assert (
        envelope["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    )
    for who in (pki.smime[DURAND], org):
        inner = openssl_decrypt(who, out)
        assert split_entity(inner).content_type().get_content_type() == "multipart/signed"
        assert b"Confidentiel." in openssl_verify(pki, inner)


async def test_if_certificate_encrypts_only_when_every_recipient_has_one(
    smime_rt: Runtime, svc: SMIMEService, martin_id: int, pki: TestPKI
) -> None:
    await svc.import_recipient(pki.smime[DURAND].chain_path.read_bytes())
    _policy(smime_rt, "never", "if-certificate")
    raw = text_message()
    assert await svc.outbound(martin_id, raw, [DURAND, "inconnu@b.mssante.test"]) == raw
    out = await svc.outbound(martin_id, raw, [DURAND])
    assert b"Bonjour" in openssl_decrypt(pki.smime[DURAND], out)


async def test_already_encrypted_message_is_not_wrapped_again(
    smime_rt: Runtime, svc: SMIMEService, martin_id: int, pki: TestPKI
) -> None:
    await svc.import_recipient(pki.smime[DURAND].chain_path.read_bytes())
    _policy(smime_rt, "always", "required")
    once = await svc.outbound(martin_id, text_message(), [DURAND])
    assert await svc.outbound(martin_id, once, [DURAND]) == once


async def test_required_refuses_a_recipient_without_certificate(
    smime_rt: Runtime, svc: SMIMEService, martin_id: int, pki: TestPKI
) -> None:
    await svc.import_recipient(pki.smime[DURAND].chain_path.read_bytes())
    _policy(smime_rt, "if-certificate", "required")
    await check_recipient(smime_rt, DURAND)
    await check_recipient(smime_rt, MARTIN)  # a hosted mailbox's own certificate counts
    with pytest.raises(Refusal) as info:
        await check_recipient(smime_rt, "Inconnu@b.mssante.test")
    assert info.value.smtp == (
        "550 5.7.1 <inconnu@b.mssante.test>: no S/MIME certificate known for this recipient; "
        "encryption is required"
    )
    with pytest.raises(Refusal, match=r"inconnu@b\.mssante\.test"):
        await svc.outbound(martin_id, text_message(), [DURAND, "inconnu@b.mssante.test"])


async def test_check_recipient_accepts_anyone_unless_required(smime_rt: Runtime, svc: SMIMEService) -> None:
    for policy in ("never", "if-certificate"):
        _policy(smime_rt, "if-certificate", policy)
        await svc.check_recipient("inconnu@b.mssante.test")
