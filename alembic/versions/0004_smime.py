"""smime: signing identities and recipients' certificates

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "smime_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=True),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("chain_pem", sa.Text(), nullable=False),
        sa.Column("sealed_key", sa.LargeBinary(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mailbox_id"),
    )
    op.create_table(
        "smime_recipient_cert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address", "fingerprint", name="uq_smime_recipient_address_fp"),
    )
    with op.batch_alter_table("smime_recipient_cert", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_smime_recipient_cert_address"), ["address"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("smime_recipient_cert", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_smime_recipient_cert_address"))
    op.drop_table("smime_recipient_cert")
    op.drop_table("smime_identity")
