"""smtp: trust list, outbound queue

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trust_domain",
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("dn", sa.String(length=1000), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("responsible_contact", sa.String(length=320), nullable=False),
        sa.Column("support_contact", sa.String(length=320), nullable=False),
        sa.Column("updated", sa.String(length=40), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "queue_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("blob_id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("envid", sa.String(length=100), nullable=True),
        sa.Column("ret", sa.String(length=4), nullable=True),
        sa.Column("smtputf8", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["blob_id"], ["blob.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("queue_message", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_queue_message_blob_id"), ["blob_id"], unique=False)
    op.create_table(
        "queue_recipient",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("notify", sa.String(length=40), nullable=False),
        sa.Column("orcpt", sa.String(length=500), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_reply", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["queue_message.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("queue_recipient", schema=None) as batch_op:
        batch_op.create_index("ix_queue_recipient_due", ["status", "next_attempt"], unique=False)
        batch_op.create_index(batch_op.f("ix_queue_recipient_message_id"), ["message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("queue_recipient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_queue_recipient_message_id"))
        batch_op.drop_index("ix_queue_recipient_due")
    op.drop_table("queue_recipient")
    with op.batch_alter_table("queue_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_queue_message_blob_id"))
    op.drop_table("queue_message")
    op.drop_table("trust_domain")
