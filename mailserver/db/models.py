"""Core tables: domains, mailboxes, credentials, folders, blobs, messages, audit.

The schema itself is created and changed only by Alembic migrations
(``mailserver/db/migrations/versions``); these classes describe it for queries. Other concerns declare
their tables on the same ``Base`` in their own module (``directory/models.py``,
``mailserver/queue/models.py``, ...).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite stores naive values: UTC is re-attached)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


MAILBOX_TYPES = ("PER", "ORG", "APP", "CAB", "PAT")


class Domain(Base):
    """A domain hosted here; a patient domain's mailboxes are addressed ``INS@domain``."""

    __tablename__ = "domain"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    patients: Mapped[bool] = mapped_column(Boolean, default=False)
    quota_storage: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_messages: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Mailbox(Base):
    """A mailbox (BAL): PER personal, ORG organisational, APP applicative, CAB practice, PAT patient."""

    __tablename__ = "mailbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id", ondelete="RESTRICT"), index=True)
    type: Mapped[str] = mapped_column(String(3))
    rpps: Mapped[str | None] = mapped_column(String(11), nullable=True, index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    accepts_patient_first: Mapped[bool] = mapped_column(Boolean, default=False)
    quota_storage: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_messages: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_messages: Mapped[int] = mapped_column(BigInteger, default=0)
    quota_warned: Mapped[int] = mapped_column(Integer, default=0)
    last_uidvalidity: Mapped[int] = mapped_column(BigInteger, default=0)
    # Comma list of the login methods allowed (mailserver.auth.METHODS); NULL: every one.
    auth_methods: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The life cycle (mailserver/lifecycle.py): stamped by a login, at most hourly; the notice's time.
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    inactive_notice_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


# RFC 4314 rights a member of an ORG/CAB mailbox may hold; "p" (post) here means sending as the ORG.
ACL_RIGHTS = "lrswipkxtea"
DEFAULT_MEMBER_RIGHTS = "lrswipkxte"
READ_RIGHT = "r"  # opening the shared mailbox (a login naming it as authorization identity)
SEND_RIGHT = "p"  # RFC 4314 "post": here, sending as the shared mailbox (envelope and From)
SHARED_TYPES = ("ORG", "CAB")  # a service's or a practice's mailbox, shared by its people
MEMBER_TYPES = ("PER", "APP")  # who may be a member of a shared mailbox: never a patient


class Membership(Base):
    """``member`` (a person's mailbox) belongs to ``mailbox`` (an ORG or CAB mailbox shared by a
    service's or a practice's staff) with RFC 4314 ``rights``: each person opens it as themselves."""

    __tablename__ = "membership"
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True)
    member_id: Mapped[int] = mapped_column(
        ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    rights: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AppPassword(Base):
    """A per-device password: listed and revoked on its own, never shown again after creation."""

    __tablename__ = "app_password"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(100))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class MailboxCert(Base):
    """A client certificate that logs its mailbox in with SASL EXTERNAL: matched by ``issuer`` +
    ``serial`` (one certificate), or with ``match = "subject"`` by its subject DN (its renewals too)."""

    __tablename__ = "mailbox_cert"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "sha256", name="uq_mailbox_cert_sha256"),
        Index("ix_mailbox_cert_issuer_serial", "issuer", "serial"),
        Index("ix_mailbox_cert_subject", "subject"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"))
    issuer: Mapped[str] = mapped_column(String(1000))
    serial: Mapped[str] = mapped_column(String(80))
    subject: Mapped[str] = mapped_column(String(1000))
    match: Mapped[str] = mapped_column(String(20), default="issuer-serial")
    sha256: Mapped[str] = mapped_column(String(64))
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuthFailure(Base):
    """Failure counter for one key (``mailbox:ADDRESS`` or ``ip:ADDRESS``), shared by every node."""

    __tablename__ = "auth_failure"
    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Folder(Base):
    """An IMAP mailbox (called a folder here, to keep "mailbox" for the account)."""

    __tablename__ = "folder"
    __table_args__ = (UniqueConstraint("mailbox_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(1000))
    special_use: Mapped[str | None] = mapped_column(String(20), nullable=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uidnext: Mapped[int] = mapped_column(BigInteger, default=1)
    highestmodseq: Mapped[int] = mapped_column(BigInteger, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Subscription(Base):
    """A subscribed folder name (RFC 9051 §6.3.7), kept by name and not by folder: it outlives the
    folder's DELETE (RFC 3501 §6.3.6) and LIST (SUBSCRIBED) then says ``\\NonExistent``."""

    __tablename__ = "subscription"
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(1000), primary_key=True)


class Blob(Base):
    """An immutable message, shared by reference count: a file under the store (``path``), or, for a
    small one, the row itself (``data``, ``path`` NULL; see ``[storage] inline_max``).

    ``meta`` is the JSON made by ``mailserver.store.mime`` at delivery (envelope, body structure,
    part offsets, header fields) so that IMAP never parses a message again to answer FETCH.
    """

    __tablename__ = "blob"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    refcount: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Message(Base):
    """One message in one folder: UID and MODSEQ per RFC 9051 / RFC 7162, flags as a sorted string."""

    __tablename__ = "message"
    __table_args__ = (
        UniqueConstraint("folder_id", "uid", name="uq_message_folder_uid"),
        Index("ix_message_folder_modseq", "folder_id", "modseq"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folder.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    modseq: Mapped[int] = mapped_column(BigInteger)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blob.id", ondelete="RESTRICT"), index=True)
    flags: Mapped[str] = mapped_column(Text, default="")
    internal_date: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    size: Mapped[int] = mapped_column(BigInteger)


class MemberFlags(Base):
    """A member's private flags on a message of a shared (ORG/CAB) mailbox (``[imap] private_flags``,
    ``\\Seen`` by default, as Dovecot's private flags): one secretary reading a message does not mark
    it read for the others. ``modseq`` is taken from the folder's counter when they change, so the
    member's CHANGEDSINCE sees it (RFC 7162) while the message's own MODSEQ, which the other members
    see, stays. A row with no flags left is kept: it still carries the modseq of the removal."""

    __tablename__ = "member_flags"
    # A member's rows changed since a modseq (their CHANGEDSINCE), and all of them (member remove).
    __table_args__ = (Index("ix_member_flags_member_modseq", "member_id", "modseq"),)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"), primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True)
    flags: Mapped[str] = mapped_column(Text, default="")
    modseq: Mapped[int] = mapped_column(BigInteger)


class Expunged(Base):
    """A tombstone per expunged UID, for QRESYNC's VANISHED (RFC 7162 §3.2.10)."""

    __tablename__ = "expunged"
    __table_args__ = (Index("ix_expunged_folder_modseq", "folder_id", "modseq"),)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folder.id", ondelete="CASCADE"), primary_key=True)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    modseq: Mapped[int] = mapped_column(BigInteger)


class AuditEvent(Base):
    """Append-only trace: who, when, from where, what was asked, what was answered; never content."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_actor_at", "actor", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(400))
    remote: Mapped[str] = mapped_column(String(100), default="")
    action: Mapped[str] = mapped_column(String(40), index=True)
    request: Mapped[str] = mapped_column(Text, default="")
    response: Mapped[str] = mapped_column(Text, default="")
