"""S/MIME tables: signing identities (private keys sealed at rest) and recipients' certificates.

Created by the Alembic migration ``0004_smime``; these classes describe the schema for queries.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailserver.db.models import Base, UTCDateTime, utcnow

RECIPIENT_SOURCES = ("import", "learned", "mailbox")


class SMIMEIdentity(Base):
    """A signing identity: a mailbox's own, or the operator's (``mailbox_id`` NULL) used as fallback.

    ``sealed_key`` is the PKCS#8 private key sealed with the master key (``smime.keys.seal_private_key``);
    the clear key never reaches the database. ``chain_pem`` holds the intermediates embedded in
    signatures so recipients can build the path to their roots.
    """

    __tablename__ = "smime_identity"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=True, unique=True
    )
    cert_pem: Mapped[str] = mapped_column(Text)
    chain_pem: Mapped[str] = mapped_column(Text, default="")
    sealed_key: Mapped[bytes] = mapped_column(LargeBinary)
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SMIMERecipientCert(Base):
    """A certificate to encrypt to, per address; ``source`` says how it was obtained (import by the
    administrator, learned from a verified signature, or a hosted mailbox's own identity)."""

    __tablename__ = "smime_recipient_cert"
    __table_args__ = (UniqueConstraint("address", "fingerprint", name="uq_smime_recipient_address_fp"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), index=True)
    cert_pem: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
