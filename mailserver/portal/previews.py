"""Which attachments the portal shows inline as images, and how it names every attachment's type.

An attachment's declared Content-Type is the sender's word; a browser shown it inline would believe
it (or sniff the bytes into something else). So only four raster formats ever preview, and only when
the bytes start with that very format's signature: an SVG (scripts), an HTML file labelled
``image/png``, or a PNG labelled ``image/gif`` is never inline, only downloaded.
"""

from __future__ import annotations

# Declared type → a test of the first bytes (the formats' own signatures).
_SIGNATURES = {
    "image/png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda b: b.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda b: b.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": lambda b: len(b) >= 12 and b.startswith(b"RIFF") and b[8:12] == b"WEBP",
}
INLINE_TYPES = frozenset(_SIGNATURES)

_LABELS = {
    "application/pdf": "Document PDF",
    "image/png": "Image PNG",
    "image/jpeg": "Image JPEG",
    "image/gif": "Image GIF",
    "image/webp": "Image WebP",
    "image/svg+xml": "Image SVG",
    "text/plain": "Texte",
    "text/html": "Page HTML",
    "application/zip": "Archive ZIP",
    "application/msword": "Document Word",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Document Word",
    "application/vnd.oasis.opendocument.text": "Document texte OpenDocument",
    "application/xml": "Document XML",
    "text/xml": "Document XML",
    "application/octet-stream": "Fichier",
}


def may_preview(content_type: str) -> bool:
    """Whether the declared type is one that may show inline (the bytes still have to agree)."""
    return content_type.lower() in INLINE_TYPES


def previewable(content_type: str, data: bytes) -> bool:
    """Whether these bytes show inline: an allowed raster type whose signature the bytes carry."""
    check = _SIGNATURES.get(content_type.lower())
    return check is not None and check(data[:16])


def type_label(content_type: str) -> str:
    """A French name for the type the patient can understand; the MIME type itself otherwise."""
    return _LABELS.get(content_type.lower(), content_type.lower())
