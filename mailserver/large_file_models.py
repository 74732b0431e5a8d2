"""Tables of the large files sent by link (mailserver/large_files.py): each file kept by the operator
and the recipients allowed to download it, with the message that carried the link."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mailserver.db.models import Base, UTCDateTime, utcnow


class LargeFile(Base):
    """A file uploaded (``uploading``: ``received`` of ``size`` bytes so far), complete (``ready``) or
    linked from at least one message (``sent``). ``id`` is the upload id and the link's secret part.
    Its ``size`` is charged to ``mailbox_id``'s storage from creation until the row is purged at
    ``expires_at`` (an unfinished upload's, then ``keep`` after it was last sent)."""

    __tablename__ = "large_file"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(10), default="uploading")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


class LargeFileRecipient(Base):
    """``address`` (lower case) may download ``file_id``: it was a recipient of ``message_id``."""

    __tablename__ = "large_file_recipient"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("large_file.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320), index=True)
    message_id: Mapped[str] = mapped_column(String(998), default="")
