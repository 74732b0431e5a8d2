"""Directory tables: professionals, structures, directory mailboxes, patients, and the import staging area.

``dir_mailbox`` carries folded copies (``*_key``, ``search_text``) of the names it is found by, so that
search, LDAP filters and ranking are plain indexed comparisons on either database. The full-text index
itself (FTS5 on SQLite, a trigram GIN index on PostgreSQL) is created by migration 0002 only.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from mailserver.db.models import Base, UTCDateTime, utcnow

DIRECTORY_TYPES = ("PER", "ORG", "APP", "CAB")
ACTIVE = "active"
RETIRED = "retired"


class Structure(Base):
    """A structure (hospital, practice, pharmacy) identified by type digit + FINESS/SIRET."""

    __tablename__ = "dir_structure"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identifier: Mapped[str] = mapped_column(String(20), unique=True)
    id_type: Mapped[str] = mapped_column(String(2), default="")
    legal_name: Mapped[str] = mapped_column(String(200), default="")
    trade_name: Mapped[str] = mapped_column(String(200), default="")
    address_l2: Mapped[str] = mapped_column(String(100), default="")
    address_l3: Mapped[str] = mapped_column(String(100), default="")
    street_number: Mapped[str] = mapped_column(String(20), default="")
    street_number_suffix: Mapped[str] = mapped_column(String(20), default="")
    street_type: Mapped[str] = mapped_column(String(20), default="")
    street_name: Mapped[str] = mapped_column(String(200), default="")
    locality: Mapped[str] = mapped_column(String(100), default="")
    address_l6: Mapped[str] = mapped_column(String(100), default="")
    postal_code: Mapped[str] = mapped_column(String(10), default="")
    city: Mapped[str] = mapped_column(String(100), default="")
    department: Mapped[str] = mapped_column(String(5), default="")
    country: Mapped[str] = mapped_column(String(60), default="")
    row_hash: Mapped[bytes] = mapped_column(LargeBinary(16))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Professional(Base):
    """A health professional, keyed by the national identifier (type digit + RPPS or ADELI)."""

    __tablename__ = "dir_professional"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identifier: Mapped[str] = mapped_column(String(20), unique=True)
    id_type: Mapped[str] = mapped_column(String(2), default="")
    rpps: Mapped[str] = mapped_column(String(11), default="", index=True)
    civility: Mapped[str] = mapped_column(String(10), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    first_name: Mapped[str] = mapped_column(String(100), default="")
    category_code: Mapped[str] = mapped_column(String(10), default="")
    category_label: Mapped[str] = mapped_column(String(100), default="")
    profession_code: Mapped[str] = mapped_column(String(10), default="")
    profession_label: Mapped[str] = mapped_column(String(100), default="")
    skill_code: Mapped[str] = mapped_column(String(10), default="")
    skill_label: Mapped[str] = mapped_column(String(200), default="")
    row_hash: Mapped[bytes] = mapped_column(LargeBinary(16))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DirectoryMailbox(Base):
    """A mailbox of the national directory; retired (never deleted) when it leaves the extraction."""

    __tablename__ = "dir_mailbox"
    __table_args__ = (
        Index("ix_dir_mailbox_name_key", "name_key", "first_key", "address"),
        Index("ix_dir_mailbox_city_key", "city_key"),
        Index("ix_dir_mailbox_postal_code", "postal_code"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    type: Mapped[str] = mapped_column(String(3))
    service: Mapped[str] = mapped_column(String(200), default="")
    dematerialisation: Mapped[str] = mapped_column(String(1), default="")
    liste_rouge: Mapped[bool] = mapped_column(Boolean, default=False)
    hosted: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(10), default=ACTIVE)
    professional_id: Mapped[int | None] = mapped_column(
        ForeignKey("dir_professional.id", ondelete="SET NULL"), nullable=True, index=True
    )
    structure_id: Mapped[int | None] = mapped_column(
        ForeignKey("dir_structure.id", ondelete="SET NULL"), nullable=True, index=True
    )
    display_name: Mapped[str] = mapped_column(String(300), default="")
    name_key: Mapped[str] = mapped_column(String(200), default="")
    first_key: Mapped[str] = mapped_column(String(200), default="")
    cn_key: Mapped[str] = mapped_column(String(300), default="")
    profession_key: Mapped[str] = mapped_column(String(200), default="")
    org_key: Mapped[str] = mapped_column(String(300), default="")
    service_key: Mapped[str] = mapped_column(String(200), default="")
    city_key: Mapped[str] = mapped_column(String(100), default="")
    postal_code: Mapped[str] = mapped_column(String(10), default="")
    search_text: Mapped[str] = mapped_column(Text, default="")
    row_hash: Mapped[bytes] = mapped_column(LargeBinary(16))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


MAILBOX_KEYS = (
    # the display and folded search columns of a directory mailbox, computed at import
    "display_name",
    "name_key",
    "first_key",
    "cn_key",
    "profession_key",
    "org_key",
    "service_key",
    "city_key",
    "postal_code",
    "search_text",
)
STAGED_TEXT = (
    # the mailbox
    "type",
    "service",
    "dematerialisation",
    *MAILBOX_KEYS,
    # its structure
    "s_identifier",
    "s_id_type",
    "legal_name",
    "trade_name",
    "address_l2",
    "address_l3",
    "street_number",
    "street_number_suffix",
    "street_type",
    "street_name",
    "locality",
    "address_l6",
    "city",
    "department",
    "country",
    # its professional
    "p_identifier",
    "p_id_type",
    "rpps",
    "civility",
    "last_name",
    "first_name",
    "category_code",
    "category_label",
    "profession_code",
    "profession_label",
    "skill_code",
    "skill_label",
)
STAGED_HASHES = ("row_hash", "s_hash", "p_hash")

import_row = Table(
    "dir_import_row",
    Base.metadata,
    Column("line", Integer, primary_key=True, autoincrement=False),
    Column("address", String(320), nullable=False, unique=True),
    Column("change", String(10), nullable=False),
    Column("hosted", Boolean, nullable=True),
    *(Column(name, Text, nullable=True) for name in STAGED_TEXT),
    *(Column(name, LargeBinary(16), nullable=True) for name in STAGED_HASHES),
)
"""Staging area of a running import: every valid row of the file, with the live values already computed
for the ``new`` and ``changed`` ones, so that one set-based transaction can apply them."""


class Patient(Base):
    """A patient known to this operator; their secure address is ``INS@patient-domain``."""

    __tablename__ = "patient"
    ins: Mapped[str] = mapped_column(String(15), primary_key=True)
    last_name: Mapped[str] = mapped_column(String(100))
    first_name: Mapped[str] = mapped_column(String(100))
    sex: Mapped[str] = mapped_column(String(1))
    birth_date: Mapped[dt.date] = mapped_column(Date)
    address: Mapped[str] = mapped_column(String(500), default="")
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    """The patient's personal address, outside the trust space: only for alerts, through the relay."""
    phone: Mapped[str | None] = mapped_column(String(20), nullable=True)
    alerts_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    """New-message alerts at ``email``; the patient turns them off in the portal."""
    last_alert_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
