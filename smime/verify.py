"""S/MIME signature verification (RFC 8551 §3.5, CMS RFC 5652 §5) and its Authentication-Results.

cryptography has no public CMS verification API, so the SignedData is parsed with asn1crypto and each
step of RFC 5652 §5.6 is done here with cryptography primitives.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from smime.mime import Entity, canonicalize, from_addresses, smime_type, split_entity, split_multipart
from smime.pki import TrustStore, certificate_emails

__all__ = [
    "VerifyResult",
    "add_authentication_results",
    "authentication_results_value",
    "verify_message",
]

PASS, FAIL, NONE = "pass", "fail", "none"
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_message`.

    ``status``: ``pass``, ``fail`` or ``none`` (no signature we can evaluate). ``reason`` is a stable
    token: ``ok``; ``unsigned``, ``encrypted``, ``unsupported-protocol`` (status none); or
    ``malformed``, ``digest-mismatch``, ``bad-signature``, ``unsupported-algorithm``,
    ``no-certificate``, ``untrusted``, ``expired``, ``not-yet-valid``, ``revoked``, ``bad-usage``,
    ``address-mismatch``. ``detail`` is free text for logs. ``signed_content`` is the verified MIME
    entity (Content-* fields + body), which for opaque signed-data is the only readable content.
    ``signer_certificate`` is set on pass, so a caller can remember it for encrypting replies.
    """

    status: str
    reason: str
    signer_address: str | None = None
    signer_subject: str | None = None
    from_address: str | None = None
    signing_time: datetime.datetime | None = None
    detail: str = ""
    warnings: tuple[str, ...] = ()
    signed_content: bytes | None = None
    signer_certificate: x509.Certificate | None = None


class _Failure(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def verify_message(raw: bytes, trust: TrustStore, *, now: datetime.datetime | None = None) -> VerifyResult:
    """Verify the top-level S/MIME signature of ``raw`` against ``trust``.

    A message passes when one SignerInfo has a matching message digest and a valid signature, its
    certificate chains to a trust anchor, is valid at signing time and not revoked, and vouches for
    every From address. Only the signed entity is covered: the outer RFC 5322 header is not.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    entity = split_entity(raw)
    froms = from_addresses(entity)
    from_address = froms[0] if froms else None
    kind = smime_type(entity)
    if kind is None:
        return VerifyResult(NONE, "unsigned", from_address=from_address)
    try:
        extracted = _extract(entity, kind)
    except _Failure as exc:
        status = NONE if exc.reason in ("encrypted", "unsupported-protocol") else FAIL
        return VerifyResult(status, exc.reason, from_address=from_address, detail=exc.detail)
    except ValueError as exc:
        return VerifyResult(FAIL, "malformed", from_address=from_address, detail=str(exc))
    signed_data, candidates = extracted
    try:
        certs = [c.chosen for c in signed_data["certificates"] or [] if c.name == "certificate"]
        signer_infos = list(signed_data["signer_infos"])
    except ValueError as exc:
        return VerifyResult(FAIL, "malformed", from_address=from_address, detail=str(exc))
    if not signer_infos:
        return VerifyResult(FAIL, "malformed", from_address=from_address, detail="no SignerInfo")
    first_failure: VerifyResult | None = None
    for signer_info in signer_infos:
        result = _verify_signer(signer_info, signed_data, candidates, certs, trust, froms, now)
        if result.status == PASS:
            return result
        first_failure = first_failure or result
    assert first_failure is not None
    return first_failure


def _decode_transfer(entity: Entity) -> bytes:
    cte = entity.transfer_encoding
    if cte == "base64":
        return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", entity.body))
    if cte in ("", "7bit", "8bit", "binary"):
        return entity.body
    raise _Failure("malformed", f"unexpected transfer encoding {cte!r} for CMS data")


def _extract(entity: Entity, kind: str) -> tuple[cms.SignedData, list[bytes]]:
    """Return the SignedData and the candidate signed contents (exact bytes first, then CRLF form)."""
    if kind == "signed-data" and entity.content_type().get_content_type() == "multipart/signed":
        ctype = entity.content_type()
        protocol = str(ctype.get_param("protocol") or "").lower()
        if protocol not in _SIGNATURE_TYPES:
            raise _Failure("unsupported-protocol", f"multipart/signed protocol {protocol!r}")
        boundary = ctype.get_boundary()
        split = split_multipart(entity.body, boundary) if boundary else None
        if split is None or len(split[1]) != 2:
            raise _Failure("malformed", "multipart/signed needs exactly two parts (RFC 1847 §2.1)")
        content = split[1][0][1]
        sig_entity = split_entity(split[1][1][1])
        if sig_entity.content_type().get_content_type() not in _SIGNATURE_TYPES:
            raise _Failure("malformed", "second part is not application/pkcs7-signature")
        signed_data = _signed_data(_decode_transfer(sig_entity))
        if signed_data["encap_content_info"]["content"].native is not None:
            raise _Failure("malformed", "detached signature carries content")
        # RFC 8551 §3.1.1: the signature covers the CRLF form; a store or MTA may have turned it into LF.
        return signed_data, list(dict.fromkeys([content, canonicalize(content)]))
    if kind not in ("signed-data", "unknown"):
        raise _Failure("encrypted", f"smime-type={kind}")
    der = _decode_transfer(entity)
    info = cms.ContentInfo.load(der)
    if info["content_type"].native != "signed_data":
        raise _Failure("encrypted", f"CMS {info['content_type'].native}")
    signed_data = _signed_data(der)
    content = signed_data["encap_content_info"]["content"]
    if content.native is None:
        raise _Failure("malformed", "opaque signed-data without content")
    return signed_data, [content.native]


def _signed_data(der: bytes) -> cms.SignedData:
    info = cms.ContentInfo.load(der)
    if info["content_type"].native != "signed_data":
        raise _Failure("malformed", f"CMS content type {info['content_type'].native}, not signed-data")
    return info["content"]


def _attribute(attrs: cms.CMSAttributes, name: str) -> object | None:
    """The single value of a signed attribute (RFC 5652 §5.3: exactly one value for these types)."""
    found = [a for a in attrs if a["type"].native == name]
    if not found:
        return None
    if len(found) > 1 or len(found[0]["values"]) != 1:
        raise _Failure("malformed", f"attribute {name} must occur once with one value")
    return found[0]["values"][0].native


def _find_signer(
    signer_info: cms.SignerInfo, certs: Sequence[asn1_x509.Certificate]
) -> asn1_x509.Certificate:
    sid = signer_info["sid"]
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            if (
                cert.issuer == sid.chosen["issuer"]
                and cert.serial_number == sid.chosen["serial_number"].native
            ):
                return cert
        elif cert.key_identifier == sid.chosen.native:
            return cert
    raise _Failure("no-certificate", "signer certificate not included in the message")


def _check_signature(
    signer_info: cms.SignerInfo, cert: x509.Certificate, tbs: bytes, digest: hashes.HashAlgorithm
) -> None:
    algorithm = signer_info["signature_algorithm"]
    signature = signer_info["signature"].native
    key = cert.public_key()
    try:
        kind = algorithm.signature_algo
        if kind == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, tbs, padding.PKCS1v15(), digest)
        elif kind == "rsassa_pss" and isinstance(key, rsa.RSAPublicKey):
            params = algorithm["parameters"]
            pss_hash = _hash(params["hash_algorithm"]["algorithm"].native)
            mgf_hash = _hash(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)
            pss = padding.PSS(padding.MGF1(mgf_hash), params["salt_length"].native)
            key.verify(signature, tbs, pss, pss_hash)
        elif kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, tbs, ec.ECDSA(digest))
        else:
            raise _Failure("unsupported-algorithm", f"{kind} with a {type(key).__name__}")
    except InvalidSignature as exc:
        raise _Failure("bad-signature", "signature does not verify with the signer's key") from exc


def _hash(name: str) -> hashes.HashAlgorithm:
    """SHA-2 only: SHA-1 and MD5 collisions make them unfit for signatures (RFC 8551 §2.1)."""
    if name not in _HASHES:
        raise _Failure("unsupported-algorithm", f"digest {name}")
    return _HASHES[name]()


def _digest(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _verify_signer(
    signer_info: cms.SignerInfo,
    signed_data: cms.SignedData,
    candidates: list[bytes],
    certs: Sequence[asn1_x509.Certificate],
    trust: TrustStore,
    froms: list[str],
    now: datetime.datetime,
) -> VerifyResult:
    from_address = froms[0] if froms else None
    signer: x509.Certificate | None = None
    signing_time: datetime.datetime | None = None
    try:
        digest = _hash(signer_info["digest_algorithm"]["algorithm"].native)
        signer = x509.load_der_x509_certificate(_find_signer(signer_info, certs).dump())
        attrs = signer_info["signed_attrs"]
        content: bytes | None = None
        if attrs.native is not None and len(attrs):
            # RFC 5652 §5.3/§5.4: contentType must match and messageDigest binds the content.
            econtent_type = signed_data["encap_content_info"]["content_type"].native
            if _attribute(attrs, "content_type") != econtent_type:
                raise _Failure("malformed", "contentType attribute does not match eContentType")
            expected = _attribute(attrs, "message_digest")
            if not isinstance(expected, bytes):
                raise _Failure("malformed", "messageDigest attribute missing")
            content = next((c for c in candidates if hmac.compare_digest(_digest(c, digest), expected)), None)
            if content is None:
                raise _Failure("digest-mismatch", "content does not match the messageDigest attribute")
            claimed = _attribute(attrs, "signing_time")
            signing_time = claimed if isinstance(claimed, datetime.datetime) else None
            # RFC 5652 §5.4: the signature covers the DER SET OF, not the [0] IMPLICIT encoding.
            _check_signature(signer_info, signer, b"\x31" + attrs.dump()[1:], digest)
        else:
            for candidate in candidates:
                try:
                    _check_signature(signer_info, signer, candidate, digest)
                except _Failure as exc:
                    if exc.reason != "bad-signature":
                        raise
                    continue
                content = candidate
                break
            if content is None:
                raise _Failure("bad-signature", "signature does not verify over the content")
        # Validity at signing time (RFC 8551 §2.5.1), but a claimed time in the future gains nothing.
        at = min(signing_time, now) if signing_time else now
        chain = trust.verify(signer, [x509.load_der_x509_certificate(c.dump()) for c in certs], at)
        if not chain.ok:
            raise _Failure(chain.reason, chain.detail)
        emails = {e.lower() for e in certificate_emails(signer)}
        if not froms or not set(froms) <= emails:
            raise _Failure("address-mismatch", f"From {froms} not in certificate {sorted(emails)}")
    except _Failure as exc:
        return VerifyResult(
            FAIL,
            exc.reason,
            signer_subject=signer.subject.rfc4514_string() if signer else None,
            from_address=from_address,
            signing_time=signing_time,
            detail=exc.detail,
        )
    except (ValueError, TypeError, KeyError) as exc:
        return VerifyResult(FAIL, "malformed", from_address=from_address, detail=f"CMS parse error: {exc}")
    return VerifyResult(
        PASS,
        "ok",
        signer_address=from_address,
        signer_subject=signer.subject.rfc4514_string(),
        from_address=from_address,
        signing_time=signing_time,
        warnings=chain.warnings,
        signed_content=content,
        signer_certificate=signer,
    )


_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+")


def authentication_results_value(result: VerifyResult, authserv_id: str) -> str:
    """Value of an Authentication-Results field (RFC 8601 §2.2) using the ``smime`` method (RFC 7281).

    Example: ``mx.a.mssante.test; smime=pass header.from=dr.martin@a.mssante.test (ok)``.
    """
    if not _TOKEN.fullmatch(authserv_id):
        raise ValueError(f"invalid authserv-id {authserv_id!r}")
    value = f"{authserv_id}; smime={result.status}"
    if result.from_address:
        address = result.from_address
        value += (
            f" header.from={address}" if _TOKEN.fullmatch(address) else f' header.from="{_quote(address)}"'
        )
    comment = re.sub(r"[\x00-\x1f\x7f]", "", result.reason).replace("\\", "\\\\")
    return value + " (" + comment.replace("(", "\\(").replace(")", "\\)") + ")"


def _quote(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "", text).replace("\\", "\\\\").replace('"', '\\"')


def add_authentication_results(raw: bytes, header_value: str) -> bytes:
    """Prepend ``Authentication-Results:`` (RFC 8601 §5: added at the top, like trace fields), using the
    message's own line ending and leaving every other byte untouched."""
    if "\r" in header_value or "\n" in header_value:
        raise ValueError("header value must not contain line breaks")
    first_break = raw.find(b"\n")
    linesep = b"\r\n" if first_break > 0 and raw[first_break - 1] == 0x0D else b"\n"
    if first_break < 0:
        linesep = b"\r\n"
    return b"Authentication-Results: " + header_value.encode("utf-8") + linesep + raw
