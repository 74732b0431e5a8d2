"""S/MIME: signing, verification and encryption of messages (RFC 8551)."""
