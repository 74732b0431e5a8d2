"""large files: attachments kept by the operator and sent as a download link

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "large_file",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "mailbox_id", sa.Integer(), sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("filename", sa.String(200), nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_large_file_mailbox_id", "large_file", ["mailbox_id"])
    op.create_index("ix_large_file_expires_at", "large_file", ["expires_at"])
    op.create_table(
        "large_file_recipient",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "file_id", sa.String(32), sa.ForeignKey("large_file.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("message_id", sa.String(998), nullable=False),
    )
    op.create_index("ix_large_file_recipient_file_id", "large_file_recipient", ["file_id"])
    op.create_index("ix_large_file_recipient_address", "large_file_recipient", ["address"])


def downgrade() -> None:
    op.drop_table("large_file_recipient")
    op.drop_table("large_file")
