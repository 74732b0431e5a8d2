"""Detached S/MIME signatures: multipart/signed with application/pkcs7-signature (RFC 8551 §3.5.3)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from smime.mime import (
    base64_lines,
    canonicalize,
    content_entity,
    make_transfer_safe,
    rewrap,
    smime_type,
    split_entity,
)

__all__ = ["SignResult", "sign_message"]


@dataclass(frozen=True)
class SignResult:
    """``signed`` is False when the message was returned unchanged; ``skipped`` then says why
    (``already-signed`` or ``encrypted``): wrapping protected content again would hide it from the
    recipient's client or break an existing signature."""

    message: bytes
    signed: bool
    skipped: str | None = None


def sign_message(
    raw: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    *,
    rsa_pss: bool = False,
) -> SignResult:
    """Sign an RFC 5322 message with SHA-256, keeping its routing headers outside the signature.

    Only the Content-* fields and the body form the signed entity (RFC 8551 §3.1); From, To, Subject,
    etc. stay in the outer header so MTAs and clients see them unchanged. The entity is first made
    7-bit and short-lined (RFC 8551 §3.1.2) then canonicalised to CRLF (§3.1.1), and those exact bytes
    are both signed and transmitted. ``chain`` (intermediates) is embedded so the recipient can build
    the path to its roots. The output uses CRLF line endings throughout.
    """
    entity = split_entity(raw)
    kind = smime_type(entity)
    if kind is not None:
        return SignResult(raw, False, "already-signed" if kind == "signed-data" else "encrypted")
    signed_part = canonicalize(make_transfer_safe(content_entity(entity)))
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH) if rsa_pss else None
    builder = pkcs7.PKCS7SignatureBuilder().set_data(signed_part)
    builder = builder.add_signer(
        cert, key, hashes.SHA256(), rsa_padding=pss if isinstance(key, rsa.RSAPrivateKey) else None
    )
    for extra in chain:
        builder = builder.add_certificate(extra)
    # Binary: the entity is already canonical; letting OpenSSL translate it again would sign other bytes.
    signature = builder.sign(
        serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    )
    boundary = "----=_smime_" + secrets.token_hex(16)
    b = boundary.encode("ascii")
    body = (
        b"This is a cryptographically signed message in MIME format (S/MIME).\r\n\r\n"
        + b"--" + b + b"\r\n"
        + signed_part
        + b"\r\n--" + b + b"\r\n"
        + b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        + b"Content-Transfer-Encoding: base64\r\n"
        + b"Content-Disposition: attachment; filename=smime.p7s\r\n"
        + b"Content-Description: S/MIME Cryptographic Signature\r\n\r\n"
        + base64_lines(signature)
        + b"\r\n--" + b + b"--\r\n"
    )  # fmt: skip
    content_type = (
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;'
        f'\r\n boundary="{boundary}"'
    )
    return SignResult(rewrap(entity, [content_type], body), True)
