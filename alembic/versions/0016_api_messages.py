"""api messages: what the sending API accepted and the state of each recipient

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_message",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "mailbox_id", sa.Integer(), sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_api_message_mailbox_id", "api_message", ["mailbox_id"])
    op.create_table(
        "api_recipient",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "message_id", sa.String(32), sa.ForeignKey("api_message.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("queue_message_id", sa.Integer(), nullable=True),
    )
    op.create_index("ix_api_recipient_message_id", "api_recipient", ["message_id"])
    op.create_index("ix_api_recipient_queue_message_id", "api_recipient", ["queue_message_id"])


def downgrade() -> None:
    op.drop_table("api_recipient")
    op.drop_table("api_message")
