"""Tables of the SMTP side: the trust list (liste blanche) and the persistent outbound queue.

The queue holds one ``queue_message`` per accepted message with remote recipients (it owns one
reference on the message's blob) and one ``queue_recipient`` per remote recipient, each with its own
retry state, so a peer refusing one address never delays the others.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from mailserver.db.models import Base, UTCDateTime, utcnow


class TrustDomain(Base):
    """One ``<Domaine>`` of the trust list: a peer operator's mail domain and its certificate subject."""

    __tablename__ = "trust_domain"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    dn: Mapped[str] = mapped_column(String(1000))
    description: Mapped[str] = mapped_column(Text, default="")
    responsible_contact: Mapped[str] = mapped_column(String(320), default="")
    support_contact: Mapped[str] = mapped_column(String(320), default="")
    updated: Mapped[str] = mapped_column(String(40), default="")
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class QueueMessage(Base):
    """A message waiting for remote delivery; ``envid``/``ret`` are its DSN options (RFC 3461 §4.3-4.4)."""

    __tablename__ = "queue_message"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blob.id", ondelete="RESTRICT"), index=True)
    sender: Mapped[str] = mapped_column(String(320))
    envid: Mapped[str | None] = mapped_column(String(100), nullable=True)
    ret: Mapped[str | None] = mapped_column(String(4), nullable=True)
    smtputf8: Mapped[bool] = mapped_column(Boolean, default=False)
    # Only patient alerts set it: sent through ``[relay]``, never to a peer of the trust space.
    relay: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class QueueRecipient(Base):
    """One remote recipient: ``status`` is ``queued``, ``sent`` or ``failed``; ``notify`` as in RFC 3461.

    ``next_attempt`` is the retry schedule only; a worker delivering the row holds it through
    ``leased_until`` and ``lease_token`` (that worker's claim), so ``queue retry`` can leave it alone.
    """

    __tablename__ = "queue_recipient"
    __table_args__ = (Index("ix_queue_recipient_due", "status", "next_attempt"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("queue_message.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    domain: Mapped[str] = mapped_column(String(253))
    notify: Mapped[str] = mapped_column(String(40), default="")
    orcpt: Mapped[str | None] = mapped_column(String(500), nullable=True)
    status: Mapped[str] = mapped_column(String(10), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_reply: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    leased_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Past ``[delivery] delay_warning``: when the delay was handled (its DELAY DSN stored, if wanted).
    delay_notified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
