"""Tables of the sending API: each message sent through ``POST /api/v1/messages`` and the state of
each of its recipients, written in the delivery's own transaction and kept after the outbound queue
forgets the entry (``Queue.finish`` copies the final outcome here)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailserver.db.models import Base, UTCDateTime, utcnow


class APIMessage(Base):
    """A message accepted by the API; ``id`` is the public message id answered with 202."""

    __tablename__ = "api_message"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), index=True)
    sender: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str] = mapped_column(String(998), default="", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class APIRecipient(Base):
    """One recipient: ``state`` is ``delivered``, ``queued``, ``sent``, ``relayed`` or ``bounced``;
    ``queue_message_id`` names the outbound queue entry while it exists (no foreign key: the queue
    deletes its rows when done)."""

    __tablename__ = "api_recipient"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("api_message.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(10))
    detail: Mapped[str] = mapped_column(Text, default="")
    queue_message_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class APIReceipt(Base):
    """An MDN (RFC 8098) received for an API message: its Final-Recipient and disposition type; one
    row per recipient and type, so a peer repeating reports cannot grow the table."""

    __tablename__ = "api_receipt"
    __table_args__ = (
        UniqueConstraint("message_id", "address", "disposition", name="uq_api_receipt_disposition"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("api_message.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    disposition: Mapped[str] = mapped_column(String(40))  # displayed, deleted, dispatched, processed
    mode: Mapped[str] = mapped_column(String(100))  # e.g. manual-action/MDN-sent-manually
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
