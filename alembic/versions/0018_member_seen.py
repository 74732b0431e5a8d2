"""member flags: each member's own \\Seen (``[imap] private_flags``) on a shared ORG/CAB mailbox

One row per (message, member) that changed a private flag, with the modseq of that change; removed
with the message (EXPUNGE, DELETE of its folder) or the member's mailbox.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "member_flags",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("flags", sa.Text(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id", "member_id"),
    )
    with op.batch_alter_table("member_flags") as batch:
        batch.create_index("ix_member_flags_member_modseq", ["member_id", "modseq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("member_flags") as batch:
        batch.drop_index("ix_member_flags_member_modseq")
    op.drop_table("member_flags")
