"""Tables of patient conversations and of the patient portal (accounts' invitations and sessions).

A conversation links one professional address (local or at a peer operator) and one patient mailbox.
Its messages are known by Message-ID, so threading never depends on what a client puts in a header:
the server decides which conversation a message belongs to, and a patient's reply can only continue
the conversation it was written in. Secrets (invitation codes, session tokens) are stored hashed.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from mailserver.db.models import Base, UTCDateTime, utcnow

OPEN = "open"
CLOSED = "closed"
CLOSED_BY = ("subject", "header", "keyword", "cli")


class Conversation(Base):
    """One professional ↔ one patient; ``public_id`` is the only identifier ever shown outside."""

    __tablename__ = "conversation"
    __table_args__ = (Index("ix_conversation_pair", "patient_mailbox_id", "professional", "state"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    professional: Mapped[str] = mapped_column(String(320), index=True)
    professional_name: Mapped[str] = mapped_column(String(300), default="")
    professional_mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailbox.id", ondelete="SET NULL"), nullable=True, index=True
    )
    patient_ins: Mapped[str] = mapped_column(String(15), index=True)
    patient_mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(500), default="")
    state: Mapped[str] = mapped_column(String(6), default=OPEN)
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(10), nullable=True)


class ConversationMessage(Base):
    """A message of a conversation: ``direction`` ``in`` (to the patient) or ``out`` (from the patient).

    ``blob_id`` is the patient's copy (their INBOX for ``in``, their Sent folder for ``out``); ``kind`` is
    ``message`` or ``notice`` (the closing notice written by the server).
    """

    __tablename__ = "conversation_message"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversation.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    direction: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(7), default="message")
    blob_id: Mapped[int | None] = mapped_column(
        ForeignKey("blob.id", ondelete="SET NULL", name="fk_conversation_message_blob"), nullable=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PortalInvite(Base):
    """A one-time activation code (SHA-256 of a high-entropy code), valid until ``expires_at``."""

    __tablename__ = "portal_invite"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PortalSession(Base):
    """A signed-in patient: the cookie carries a token, the table its SHA-256, CSRF token and expiry."""

    __tablename__ = "portal_session"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    remote: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


class PortalFactor(Base):
    """A patient's second-factor state: the authenticator app's RFC 6238 secret, sealed with the
    master key (``totp_secret``; ``totp_pending`` while enrolment awaits its first code), the last
    accepted time step (a code is never accepted twice) and the epoch that trusted-device cookies
    must carry (raised to forget every trusted device)."""

    __tablename__ = "portal_factor"
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True)
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    totp_pending: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    totp_enrolled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    device_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PortalCode(Base):
    """A pending second step, held by one browser (``challenge_hash``: SHA-256 of its cookie): a login
    awaiting its second factor (``purpose`` "login", ``method`` "email" or "totp") or a password reset
    (``purpose`` "reset"). An e-mailed code is kept as an HMAC (``code_hash``); ``tries`` counts wrong
    codes; ``ended_at`` is set when it is used or void. ``mailbox_id`` is NULL for a reset asked for an
    INS nobody holds: it behaves exactly like the others, so the answers never tell."""

    __tablename__ = "portal_code"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    challenge_hash: Mapped[str] = mapped_column(String(64), unique=True)
    mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=True, index=True
    )
    account: Mapped[str] = mapped_column(String(320))  # the lock-out key's address, known or not
    purpose: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    code_hash: Mapped[str | None] = mapped_column(String(100), nullable=True)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
