"""Interoperability with the reference implementation: the ``openssl cms`` command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from smime.encrypt import decrypt_message, encrypt_message
from smime.mime import split_entity
from smime.pki import TrustStore
from smime.sign import sign_message
from smime.verify import verify_message
from tests.pki import Identity, TestPKI
from tests.smime.smime_samples import mixed_message, text_message


def openssl(*args: str | Path, data: bytes = b"") -> bytes:
    proc = subprocess.run(["openssl", "cms", *map(str, args)], input=data, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


CONTENT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nSign\xc3\xa9 par OpenSSL.\r\n"


@pytest.mark.parametrize("detached", [True, False])
def test_openssl_signed_verifies_with_us(
    pki: TestPKI, martin: Identity, trust: TrustStore, detached: bool
) -> None:
    args = [
        "-sign",
        "-signer",
        martin.cert_path,
        "-inkey",
        martin.key_path,
        "-certfile",
        pki.intermediate.cert_path,
    ]
    args += ["-from", martin.name, "-to", "dr.durand@b.mssante.test", "-subject", "interop", "-binary"]
    signed = openssl(*args, *([] if detached else ["-nodetach"]), data=CONTENT)
    result = verify_message(signed, trust)
    assert (result.status, result.reason) == ("pass", "ok"), result
    assert result.signed_content == CONTENT


def test_openssl_rsa_pss_signature_verifies_with_us(
    pki: TestPKI, martin: Identity, trust: TrustStore
) -> None:
    args = [
        "-sign",
        "-signer",
        martin.cert_path,
        "-inkey",
        martin.key_path,
        "-certfile",
        pki.intermediate.cert_path,
    ]
    args += ["-from", martin.name, "-binary", "-keyopt", "rsa_padding_mode:pss", "-md", "sha384"]
    assert verify_message(openssl(*args, data=CONTENT), trust).status == "pass"


def test_openssl_tampered_fails_with_us(pki: TestPKI, martin: Identity, trust: TrustStore) -> None:
    args = ["-sign", "-signer", martin.cert_path, "-inkey", martin.key_path, "-from", martin.name, "-binary"]
    signed = openssl(*args, data=CONTENT)
    assert verify_message(signed.replace(b"OpenSSL", b"OpenSSH"), trust).reason == "digest-mismatch"


def verify_with_openssl(pki: TestPKI, message: bytes) -> bytes:
    return openssl("-verify", "-CAfile", pki.root.cert_path, "-purpose", "smimesign", data=message)


def test_our_signature_verifies_with_openssl(pki: TestPKI, martin: Identity) -> None:
    raw = text_message(body="Résultats joints.\r\n".encode())
    signed = sign_message(raw, martin.key, martin.cert, martin.chain).message
    content = verify_with_openssl(pki, signed)
    assert content.startswith(b"Content-Type: text/plain; charset=utf-8")
    assert b"R=C3=A9sultats joints." in content


def test_our_signature_with_attachments_and_long_lines_verifies_with_openssl(
    pki: TestPKI, martin: Identity
) -> None:
    text = b"long " + b"z" * 2000 + "\r\né\r\n".encode()
    attachment = bytes(range(256)) * 8
    signed = sign_message(
        mixed_message(text, attachment, "binary"), martin.key, martin.cert, martin.chain
    ).message
    content = verify_with_openssl(pki, signed)
    assert b"Content-Transfer-Encoding: base64" in content
    assert b"Content-Transfer-Encoding: quoted-printable" in content


def test_openssl_rejects_our_signature_from_untrusted_ca(pki: TestPKI) -> None:
    ident = pki.smime_untrusted
    signed = sign_message(text_message(), ident.key, ident.cert, ident.chain).message
    proc = subprocess.run(
        ["openssl", "cms", "-verify", "-CAfile", str(pki.root.cert_path)],
        input=signed,
        capture_output=True,
        check=False,
    )
    assert proc.returncode != 0


def test_our_encryption_decrypts_with_openssl(martin: Identity, durand: Identity) -> None:
    signed = sign_message(text_message(), martin.key, martin.cert, martin.chain).message
    encrypted = encrypt_message(signed, [durand.cert, martin.cert])
    outer = split_entity(encrypted)
    assert outer.get("content-type") == 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"'
    assert outer.get("subject") == "Compte rendu"
    assert b"Compte rendu op" not in encrypted
    decrypted = openssl("-decrypt", "-recip", durand.cert_path, "-inkey", durand.key_path, data=encrypted)
    assert decrypted.startswith(b"Content-Type: multipart/signed")
    asn1 = subprocess.run(
        ["openssl", "cms", "-cmsout", "-print", "-inform", "SMIME"],
        input=encrypted,
        capture_output=True,
        check=True,
    ).stdout
    assert b"aes-256-cbc" in asn1


def test_openssl_encryption_decrypts_with_us(durand: Identity, trust: TrustStore, martin: Identity) -> None:
    signed = sign_message(text_message(), martin.key, martin.cert, martin.chain).message
    entity = split_entity(signed)
    inner = b"".join(f for f in entity.fields if f.lower().startswith(b"content-")) + b"\r\n" + entity.body
    encrypted = openssl(
        "-encrypt",
        "-aes256",
        "-binary",
        "-from",
        martin.name,
        "-subject",
        "chiffre",
        durand.cert_path,
        data=inner,
    )
    decrypted = decrypt_message(encrypted, durand.key, durand.cert)
    assert split_entity(decrypted).get("subject") == "chiffre"
    assert verify_message(decrypted, trust).status == "pass"
