"""core: domains, mailboxes, credentials, folders, blobs, messages, audit

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=400), nullable=False),
        sa.Column("remote", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.create_index("ix_audit_actor_at", ["actor", "at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_event_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_event_at"), ["at"], unique=False)

    op.create_table(
        "auth_failure",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "blob",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("refcount", sa.Integer(), nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("path"),
    )
    op.create_table(
        "domain",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("patients", sa.Boolean(), nullable=False),
        sa.Column("quota_storage", sa.BigInteger(), nullable=True),
        sa.Column("quota_messages", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "mailbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=3), nullable=False),
        sa.Column("rpps", sa.String(length=11), nullable=True),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("accepts_patient_first", sa.Boolean(), nullable=False),
        sa.Column("quota_storage", sa.BigInteger(), nullable=True),
        sa.Column("quota_messages", sa.BigInteger(), nullable=True),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("used_messages", sa.BigInteger(), nullable=False),
        sa.Column("quota_warned", sa.Integer(), nullable=False),
        sa.Column("last_uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["domain_id"], ["domain.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address"),
    )
    with op.batch_alter_table("mailbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mailbox_domain_id"), ["domain_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_mailbox_rpps"), ["rpps"], unique=False)

    op.create_table(
        "app_password",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("app_password", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_app_password_mailbox_id"), ["mailbox_id"], unique=False)

    op.create_table(
        "folder",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=1000), nullable=False),
        sa.Column("special_use", sa.String(length=20), nullable=True),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uidnext", sa.BigInteger(), nullable=False),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=False),
        sa.Column("subscribed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mailbox_id", "name"),
    )
    with op.batch_alter_table("folder", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_folder_mailbox_id"), ["mailbox_id"], unique=False)

    op.create_table(
        "send_as",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mailbox_id", "member_id"),
    )
    op.create_table(
        "expunged",
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["folder_id"], ["folder.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("folder_id", "uid"),
    )
    with op.batch_alter_table("expunged", schema=None) as batch_op:
        batch_op.create_index("ix_expunged_folder_modseq", ["folder_id", "modseq"], unique=False)

    op.create_table(
        "message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.Column("blob_id", sa.Integer(), nullable=False),
        sa.Column("flags", sa.Text(), nullable=False),
        sa.Column("internal_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["blob_id"], ["blob.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["folder_id"], ["folder.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("folder_id", "uid", name="uq_message_folder_uid"),
    )
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_message_blob_id"), ["blob_id"], unique=False)
        batch_op.create_index("ix_message_folder_modseq", ["folder_id", "modseq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_index("ix_message_folder_modseq")
        batch_op.drop_index(batch_op.f("ix_message_blob_id"))

    op.drop_table("message")
    with op.batch_alter_table("expunged", schema=None) as batch_op:
        batch_op.drop_index("ix_expunged_folder_modseq")

    op.drop_table("expunged")
    op.drop_table("send_as")
    with op.batch_alter_table("folder", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_folder_mailbox_id"))

    op.drop_table("folder")
    with op.batch_alter_table("app_password", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_app_password_mailbox_id"))

    op.drop_table("app_password")
    with op.batch_alter_table("mailbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailbox_rpps"))
        batch_op.drop_index(batch_op.f("ix_mailbox_domain_id"))

    op.drop_table("mailbox")
    op.drop_table("domain")
    op.drop_table("blob")
    op.drop_table("auth_failure")
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_event_at"))
        batch_op.drop_index(batch_op.f("ix_audit_event_action"))
        batch_op.drop_index("ix_audit_actor_at")

    op.drop_table("audit_event")
