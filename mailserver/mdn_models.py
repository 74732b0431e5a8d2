"""The portal's record of read-receipt requests (RFC 8098) a patient answered: one row per mailbox and
message, written before the MDN leaves, so a receipt is sent at most once and a refusal is final."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailserver.db.models import Base, UTCDateTime, utcnow


class MDNDecision(Base):
    """``decision`` is ``sent`` or ``declined``; ``message_key`` the message's Message-ID (or
    ``blob:<id>`` for one without)."""

    __tablename__ = "mdn_decision"
    __table_args__ = (UniqueConstraint("mailbox_id", "message_key", name="uq_mdn_decision_message"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"))
    message_key: Mapped[str] = mapped_column(String(998))
    decision: Mapped[str] = mapped_column(String(10))
    decided_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
