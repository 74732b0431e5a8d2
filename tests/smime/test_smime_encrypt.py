"""Encryption and decryption in-process."""

from __future__ import annotations

import pytest

from smime.encrypt import DecryptError, decrypt_message, encrypt_message
from smime.mime import split_entity
from smime.pki import TrustStore
from smime.sign import sign_message
from smime.verify import verify_message
from tests.pki import Identity, TestPKI
from tests.smime.smime_samples import mixed_message, text_message


def test_sign_then_encrypt_round_trip(martin: Identity, durand: Identity, trust: TrustStore) -> None:
    raw = mixed_message(b"texte\r\n", bytes(range(256)), "binary")
    signed = sign_message(raw, martin.key, martin.cert, martin.chain).message
    encrypted = encrypt_message(signed, [durand.cert])
    assert verify_message(encrypted, trust).reason == "encrypted"
    assert sign_message(encrypted, martin.key, martin.cert).skipped == "encrypted"
    decrypted = decrypt_message(encrypted, durand.key, durand.cert)
    assert decrypted == signed
    assert verify_message(decrypted, trust).status == "pass"


def test_each_recipient_can_decrypt(martin: Identity, durand: Identity) -> None:
    encrypted = encrypt_message(text_message(), [martin.cert, durand.cert])
    for who in (martin, durand):
        decrypted = decrypt_message(encrypted, who.key, who.cert)
        assert split_entity(decrypted).body == b"Bonjour,\r\n\r\nCompte rendu.\r\n"


def test_wrong_recipient_cannot_decrypt(pki: TestPKI, martin: Identity, durand: Identity) -> None:
    encrypted = encrypt_message(text_message(), [durand.cert])
    with pytest.raises(DecryptError):
        decrypt_message(encrypted, martin.key, martin.cert)
    with pytest.raises(DecryptError):
        decrypt_message(text_message(), durand.key, durand.cert)


def test_requires_recipients() -> None:
    with pytest.raises(ValueError):
        encrypt_message(text_message(), [])
