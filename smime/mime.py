"""Byte-exact MIME helpers shared by signing, verification and encryption.

The stdlib ``email`` generator re-folds headers and may rewrite bodies, which is unacceptable for
signed content, so these helpers work on raw bytes: they split header fields without re-encoding them
and only touch the parts that must change.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import quopri
import re
from dataclasses import dataclass

from mailserver import headers
from mailserver.store import mime

__all__ = [
    "Entity",
    "base64_lines",
    "canonicalize",
    "content_entity",
    "field_name",
    "field_value",
    "from_addresses",
    "is_content_field",
    "make_transfer_safe",
    "rewrap",
    "smime_type",
    "split_entity",
    "split_multipart",
]

# RFC 5322 §2.1.1: 998 octets per line excluding CRLF.
MAX_LINE = 998
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# "binary" is absent on purpose: such a body has no line structure, so canonicalising it would corrupt it.
_SAFE_ENCODINGS = {"7bit", "8bit", "", "base64", "quoted-printable"}


@dataclass
class Entity:
    """A MIME entity split into raw header fields (each with its own line ending) and body."""

    fields: list[bytes]
    body: bytes
    linesep: bytes

    def get(self, name: str) -> str | None:
        """Unfolded value of the first field called ``name`` (case-insensitive)."""
        for f in self.fields:
            if field_name(f) == name.lower():
                return field_value(f)
        return None

    def get_all(self, name: str) -> list[str]:
        return [field_value(f) for f in self.fields if field_name(f) == name.lower()]

    def content_type(self) -> email.message.Message:
        """A stdlib message holding only Content-Type, for its RFC 2045/2231 parameter parsing."""
        msg = email.message.Message()
        value = self.get("content-type")
        if value is not None:
            msg["Content-Type"] = value
        return msg

    @property
    def transfer_encoding(self) -> str:
        return (self.get("content-transfer-encoding") or "").strip().lower()

    def to_bytes(self) -> bytes:
        return b"".join(self.fields) + self.linesep + self.body


def field_name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def field_value(field: bytes) -> str:
    """The unfolded value, read as every header field is (``mailserver.headers.field_value``)."""
    return headers.field_value(field) if b":" in field else ""


def from_addresses(entity: Entity) -> list[str]:
    """The addresses of every From mailbox, lower-case, as the server's policies read them."""
    return [a.lower() for value in entity.get_all("from") for a in mime.addr_specs(value) if "@" in a]


def split_entity(raw: bytes) -> Entity:
    """Split at the first empty line (RFC 5322 §2.1), tolerating LF-only line endings."""
    if raw.startswith((b"\r\n", b"\n")):
        sep = b"\r\n" if raw.startswith(b"\r\n") else b"\n"
        return Entity([], raw[len(sep) :], sep)
    match = re.search(rb"\r?\n\r?\n", raw)
    if match is None:
        header, body, sep = raw, b"", b"\r\n"
    else:
        first_end = raw.index(b"\n", match.start()) + 1
        header, body = raw[:first_end], raw[match.end() :]
        sep = b"\r\n" if raw[match.start()] == 0x0D else b"\n"
    fields: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    if fields and not fields[-1].endswith(b"\n"):
        fields[-1] += sep
    return Entity(fields, body, sep)


def split_multipart(
    body: bytes, boundary: str
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes, bytes] | None:
    """RFC 2046 §5.1.1: (preamble, [(delimiter line incl. break, part)], close delimiter, epilogue).

    The line break preceding a delimiter belongs to the delimiter, so each part is exact. Returns None
    when the close delimiter is missing.
    """
    delim = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(\r?\n|\Z)")
    matches = list(delim.finditer(body))
    close = next((i for i, m in enumerate(matches) if m.group(1)), None)
    if close is None or close == 0:
        return None
    matches = matches[: close + 1]
    parts = [(m.group(0), body[m.end() : matches[i + 1].start()]) for i, m in enumerate(matches[:-1])]
    return body[: matches[0].start()], parts, matches[-1].group(0), body[matches[-1].end() :]


def canonicalize(data: bytes) -> bytes:
    """RFC 8551 §3.1.1 canonical form: every line break is CRLF."""
    return _LINE_BREAK.sub(b"\r\n", data)


def _is_transport_safe(body: bytes) -> bool:
    """7-bit, no NUL, no bare CR, lines within MAX_LINE: nothing an MTA would need to rewrite."""
    if not body.isascii() or b"\0" in body or re.search(rb"\r(?!\n)", body):
        return False
    return all(len(line) <= MAX_LINE for line in re.split(rb"\r?\n", body))


def _decode_body(body: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body))
    if cte == "quoted-printable":
        return quopri.decodestring(body)
    return body


def _encode_leaf(entity: Entity, is_text: bool) -> Entity:
    """Re-encode a leaf as quoted-printable (text, stays readable) or base64 (RFC 2045 §6)."""
    data = _decode_body(entity.body, entity.transfer_encoding)
    if is_text:
        # b2a_qp leaves a bare CR alone, but canonicalisation would turn it into a line break.
        encoded = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True).replace(b"\r", b"=0D")
        cte = b"quoted-printable"
    else:
        encoded = base64.encodebytes(data)
        cte = b"base64"
    fields = [f for f in entity.fields if field_name(f) != "content-transfer-encoding"]
    fields.append(b"Content-Transfer-Encoding: " + cte + entity.linesep)
    return Entity(fields, canonicalize(encoded), entity.linesep)


def make_transfer_safe(raw: bytes) -> bytes:
    """Re-encode 8bit/binary/over-long leaf parts so the entity survives any MTA (RFC 8551 §3.1.2).

    Parts that are already safe keep their exact bytes; multipart/signed subtrees are never touched,
    since changing them would break an inner signature.
    """
    entity = split_entity(raw)
    ctype = entity.content_type()
    maintype, subtype = ctype.get_content_maintype(), ctype.get_content_subtype()
    if maintype == "multipart":
        boundary = ctype.get_boundary()
        split = split_multipart(entity.body, boundary) if subtype != "signed" and boundary else None
        if split is None:
            return raw
        preamble, parts, close, epilogue = split
        body = preamble + b"".join(d + make_transfer_safe(p) for d, p in parts) + close + epilogue
        return Entity(entity.fields, body, entity.linesep).to_bytes()
    if maintype == "message" and subtype in ("rfc822", "global"):
        # RFC 2046 §5.2.1: message/rfc822 cannot itself be encoded; make the enclosed message safe.
        inner = make_transfer_safe(entity.body)
        if entity.transfer_encoding in ("8bit", "binary") and _is_transport_safe(inner):
            fields = [f for f in entity.fields if field_name(f) != "content-transfer-encoding"]
            fields.append(b"Content-Transfer-Encoding: 7bit" + entity.linesep)
            return Entity(fields, inner, entity.linesep).to_bytes()
        return Entity(entity.fields, inner, entity.linesep).to_bytes()
    if entity.transfer_encoding in _SAFE_ENCODINGS and _is_transport_safe(entity.body):
        return raw
    return _encode_leaf(entity, is_text=maintype == "text").to_bytes()


def is_content_field(field: bytes) -> bool:
    """Fields that describe the body (RFC 2045 §9 Content-*) and therefore travel with it."""
    return field_name(field).startswith("content-")


def content_entity(entity: Entity) -> bytes:
    """The body with its Content-* fields, as a standalone MIME entity in canonical form.

    RFC 2045 §5.2's implicit default is made explicit, because the entity loses the outer context.
    """
    fields = [canonicalize(f) for f in entity.fields if is_content_field(f)]
    if entity.get("content-type") is None:
        charset = b"us-ascii" if entity.body.isascii() else b"utf-8"
        fields.insert(0, b"Content-Type: text/plain; charset=" + charset + b"\r\n")
    return b"".join(fields) + b"\r\n" + entity.body


def rewrap(entity: Entity, content_fields: list[str], body: bytes) -> bytes:
    """Keep the RFC 5322 header fields of ``entity`` byte for byte (CRLF) but replace its Content-*
    fields and body; MIME-Version is guaranteed (RFC 2045 §4)."""
    fields = [canonicalize(f) for f in entity.fields if not is_content_field(f)]
    if not any(field_name(f) == "mime-version" for f in fields):
        fields.append(b"MIME-Version: 1.0\r\n")
    fields += [f.encode("ascii") + b"\r\n" for f in content_fields]
    return b"".join(fields) + b"\r\n" + body


def smime_type(entity: Entity) -> str | None:
    """What S/MIME protection the top-level entity carries: ``signed-data`` (RFC 8551 §3.5.3 and
    §3.5.2), ``enveloped-data``/``authEnveloped-data``/``compressed-data``, ``unknown`` for pkcs7-mime
    without a smime-type parameter, or None for an unprotected message."""
    ctype = entity.content_type()
    if ctype.get_content_type() == "multipart/signed":
        return "signed-data"
    if ctype.get_content_type() in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        param = ctype.get_param("smime-type")
        return str(param) if isinstance(param, str) else "unknown"
    return None


def base64_lines(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines (RFC 2045 §6.8)."""
    return canonicalize(base64.encodebytes(data))
