"""S/MIME encryption: application/pkcs7-mime enveloped-data (RFC 8551 §3.3) with AES-256-CBC."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from smime.mime import (
    base64_lines,
    canonicalize,
    content_entity,
    field_name,
    make_transfer_safe,
    rewrap,
    smime_type,
    split_entity,
)

__all__ = ["DecryptError", "decrypt_message", "encrypt_message"]


class DecryptError(Exception):
    """The message is not enveloped-data or cannot be decrypted with the given key."""


def encrypt_message(raw: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """Encrypt the body and Content-* fields of ``raw`` (normally already signed) for ``recipients``.

    The routing header (From, To, Subject, …) stays in clear outside, as RFC 8551 §3.1 allows and
    MTAs require. Each recipient needs an RSA certificate: key transport is RSAES-PKCS1-v1_5, the only
    one cryptography's envelope builder offers. Output uses CRLF line endings.
    """
    if not recipients:
        raise ValueError("at least one recipient certificate is required")
    entity = split_entity(raw)
    inner = canonicalize(make_transfer_safe(content_entity(entity)))
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(inner).set_content_encryption_algorithm(algorithms.AES256)
    for cert in recipients:
        builder = builder.add_recipient(cert)
    der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    return rewrap(
        entity,
        [
            'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
            'Content-Disposition: attachment; filename="smime.p7m"',
            "Content-Transfer-Encoding: base64",
        ],
        base64_lines(der),
    )


def decrypt_message(raw: bytes, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    """Decrypt an enveloped-data message back into a complete RFC 5322 message.

    Header fields found inside the decrypted entity win over outer ones of the same name (RFC 8551
    §3.1: the inner copy is the protected one); outer fields absent inside are kept.
    """
    entity = split_entity(raw)
    if smime_type(entity) not in ("enveloped-data", "unknown"):
        raise DecryptError("not an application/pkcs7-mime enveloped-data message")
    try:
        der = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", entity.body))
        inner = pkcs7.pkcs7_decrypt_der(der, cert, key, [])
    except ValueError as exc:
        raise DecryptError(f"cannot decrypt: {exc}") from exc
    inner_entity = split_entity(inner)
    inner_names = {field_name(f) for f in inner_entity.fields}
    outer = [canonicalize(f) for f in entity.fields if field_name(f) not in inner_names]
    outer = [f for f in outer if not field_name(f).startswith("content-")]
    return b"".join(outer) + inner
