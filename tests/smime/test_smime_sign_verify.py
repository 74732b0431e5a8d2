"""Sign → verify round trips and the failure reasons of verify_message."""

from __future__ import annotations

import base64
import datetime
import email
import email.policy
import re

import pytest

from smime.mime import split_entity
from smime.pki import TrustStore
from smime.sign import sign_message
from smime.verify import (
    VerifyResult,
    add_authentication_results,
    authentication_results_value,
    verify_message,
)
from tests.pki import Identity, TestPKI
from tests.smime.smime_samples import mixed_message, text_message


def sign(identity: Identity, raw: bytes) -> bytes:
    result = sign_message(raw, identity.key, identity.cert, identity.chain)
    assert result.signed
    return result.message


def test_round_trip_passes_and_keeps_outer_headers(martin: Identity, trust: TrustStore) -> None:
    raw = text_message(body="Compte rendu opératoire.\r\n".encode())
    signed = sign(martin, raw)
    outer = split_entity(signed)
    assert outer.get("subject") == "Compte rendu"
    assert outer.get("message-id") == "<cr-1@a.mssante.test>"
    assert outer.get("content-type").startswith("multipart/signed")
    assert 'protocol="application/pkcs7-signature"' in outer.get("content-type")
    assert "micalg=sha-256" in outer.get("content-type")
    assert outer.get("content-transfer-encoding") is None

    result = verify_message(signed, trust)
    assert (result.status, result.reason) == ("pass", "ok")
    assert result.signer_address == "dr.martin@a.mssante.test"
    assert result.signer_subject == martin.subject
    assert result.signing_time is not None
    assert result.warnings == ()
    inner = split_entity(result.signed_content)
    assert inner.get("content-type") == "text/plain; charset=utf-8"
    assert inner.get("subject") is None
    assert inner.transfer_encoding == "quoted-printable"


def test_ecdsa_signer_and_rsa_pss(pki: TestPKI, martin: Identity, trust: TrustStore) -> None:
    pss = sign_message(text_message(), martin.key, martin.cert, martin.chain, rsa_pss=True).message
    assert verify_message(pss, trust).status == "pass"
    # A TLS certificate signs fine (ECDSA) but its EKU forbids S/MIME.
    tls = pki.tls["a.mssante.test"]
    signed = sign_message(text_message(), tls.key, tls.cert, tls.chain).message
    assert verify_message(signed, trust).reason == "bad-usage"


def test_lf_only_storage_still_verifies(martin: Identity, trust: TrustStore) -> None:
    signed = sign(martin, text_message())
    assert verify_message(signed.replace(b"\r\n", b"\n"), trust).status == "pass"


def test_tampered_body_is_digest_mismatch(martin: Identity, trust: TrustStore) -> None:
    signed = sign(martin, text_message(body=b"Dose: 5 mg\r\n"))
    assert b"Dose: 5 mg" in signed
    result = verify_message(signed.replace(b"Dose: 5 mg", b"Dose: 50mg"), trust)
    assert (result.status, result.reason) == ("fail", "digest-mismatch")


def test_tampered_signed_content_header_fails(martin: Identity, trust: TrustStore) -> None:
    signed = sign(martin, text_message())
    tampered = signed.replace(
        b"Content-Type: text/plain; charset=utf-8", b"Content-Type: text/html; charset=utf-8"
    )
    assert tampered != signed
    assert verify_message(tampered, trust).reason == "digest-mismatch"


def test_tampered_signature_is_bad_signature(martin: Identity, trust: TrustStore) -> None:
    """Flip one bit of the RSA signature value itself (the last bytes of the SignerInfo)."""
    signed = sign(martin, text_message())
    b64 = re.search(rb"filename=smime.p7s\r\n.*?\r\n\r\n(.*?)\r\n--", signed, re.S).group(1)
    der = bytearray(base64.b64decode(b64))
    der[-5] ^= 0x01
    forged = signed.replace(b64, base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n").rstrip())
    result = verify_message(forged, trust)
    assert (result.status, result.reason) == ("fail", "bad-signature")


def test_unsigned_is_none(trust: TrustStore) -> None:
    result = verify_message(text_message(), trust)
    assert (result.status, result.reason) == ("none", "unsigned")
    assert result.from_address == "dr.martin@a.mssante.test"


@pytest.mark.parametrize(
    ("attr", "reason"),
    [("smime_expired", "expired"), ("smime_revoked", "revoked"), ("smime_untrusted", "untrusted")],
)
def test_certificate_failures(pki: TestPKI, trust: TrustStore, attr: str, reason: str) -> None:
    identity: Identity = getattr(pki, attr)
    signed = sign(identity, text_message(sender=identity.name))
    result = verify_message(signed, trust)
    assert (result.status, result.reason) == ("fail", reason)
    assert result.signer_subject == identity.subject


def test_revocation_needs_the_crl(pki: TestPKI) -> None:
    signed = sign(pki.smime_revoked, text_message(sender=pki.smime_revoked.name))
    no_crl = TrustStore.from_files(pki.peer_ca)
    result = verify_message(signed, no_crl)
    assert result.status == "pass"
    assert any(w.startswith("crl-missing:") for w in result.warnings)
    der_crl = TrustStore.from_files(pki.peer_ca, [pki.crl_der_path])
    assert verify_message(signed, der_crl).reason == "revoked"


def test_wrong_address_is_address_mismatch(martin: Identity, trust: TrustStore) -> None:
    signed = sign(martin, text_message(sender="secretariat@a.mssante.test"))
    result = verify_message(signed, trust)
    assert (result.status, result.reason) == ("fail", "address-mismatch")


def test_address_match_is_case_insensitive(martin: Identity, trust: TrustStore) -> None:
    signed = sign(martin, text_message(sender="Dr.Martin@A.MSSANTE.TEST"))
    assert verify_message(signed, trust).status == "pass"


def test_validity_is_judged_at_signing_time(pki: TestPKI, martin: Identity, trust: TrustStore) -> None:
    signed = sign(martin, text_message())
    later = pki.now + datetime.timedelta(days=3650)
    assert verify_message(signed, trust, now=later).status == "pass"


def test_already_signed_or_encrypted_is_left_alone(martin: Identity) -> None:
    signed = sign(martin, text_message())
    again = sign_message(signed, martin.key, martin.cert, martin.chain)
    assert (again.signed, again.skipped, again.message) == (False, "already-signed", signed)
    enveloped = text_message().replace(
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
    )
    result = sign_message(enveloped, martin.key, martin.cert, martin.chain)
    assert (result.signed, result.skipped, result.message) == (False, "encrypted", enveloped)


def test_binary_and_8bit_attachments_and_long_lines(martin: Identity, trust: TrustStore) -> None:
    text = "Ligne accentuée: é à ç ".encode() + b"x" * 2000 + b"\r\ntrailing space \r\n"
    attachment = bytes(range(256)) * 4 + b"\r\n\n\r\x00--=_b1"
    signed = sign(martin, mixed_message(text, attachment, "binary"))
    assert signed.isascii()
    assert max(len(line) for line in signed.split(b"\r\n")) <= 998
    result = verify_message(signed, trust)
    assert result.status == "pass", result
    inner = email.message_from_bytes(result.signed_content, policy=email.policy.default)
    text_part, file_part = inner.iter_parts()
    assert text_part.get_payload(decode=True) == text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert file_part.get_payload(decode=True) == attachment


def test_8bit_attachment(martin: Identity, trust: TrustStore) -> None:
    attachment = "résumé médical ".encode("latin-1") * 100
    signed = sign(martin, mixed_message(b"ok\r\n", attachment, "8bit"))
    assert signed.isascii()
    assert verify_message(signed, trust).status == "pass"


def test_message_without_mime_headers(martin: Identity, trust: TrustStore) -> None:
    raw = b"From: dr.martin@a.mssante.test\nTo: dr.durand@b.mssante.test\nSubject: court\n\nSalut\n"
    signed = sign(martin, raw)
    assert signed.count(b"MIME-Version: 1.0") == 1
    result = verify_message(signed, trust)
    assert result.status == "pass"
    assert result.signed_content.startswith(b"Content-Type: text/plain; charset=us-ascii\r\n")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: m.replace(b"application/pkcs7-signature; name", b"text/plain; name"),
        lambda m: (
            m[: m.index(b"filename=smime.p7s") + 40]
            + b"\r\n--"
            + m.split(b'boundary="')[1].split(b'"')[0]
            + b"--\r\n"
        ),
        lambda m: m.replace(b"MII", b"!!!", 1),
    ],
)
def test_malformed(martin: Identity, trust: TrustStore, mangle) -> None:
    result = verify_message(mangle(sign(martin, text_message())), trust)
    assert (result.status, result.reason) == ("fail", "malformed")


def test_authentication_results(martin: Identity, trust: TrustStore) -> None:
    signed = sign(martin, text_message())
    value = authentication_results_value(verify_message(signed, trust), "mx.b.mssante.test")
    assert value == "mx.b.mssante.test; smime=pass header.from=dr.martin@a.mssante.test (ok)"
    failed = VerifyResult("fail", "digest-mismatch", from_address="a(b)@x.test")
    assert (
        authentication_results_value(failed, "mx")
        == 'mx; smime=fail header.from="a(b)@x.test" (digest-mismatch)'
    )
    assert authentication_results_value(VerifyResult("none", "unsigned"), "mx") == "mx; smime=none (unsigned)"
    with pytest.raises(ValueError):
        authentication_results_value(failed, "mx; smime=pass")

    stamped = add_authentication_results(signed, value)
    assert stamped == b"Authentication-Results: " + value.encode() + b"\r\n" + signed
    assert verify_message(stamped, trust).status == "pass"
    lf = add_authentication_results(b"Subject: x\n\nbody\n", "mx; smime=none")
    assert lf == b"Authentication-Results: mx; smime=none\nSubject: x\n\nbody\n"
    with pytest.raises(ValueError):
        add_authentication_results(signed, "mx;\r\nBcc: evil")
