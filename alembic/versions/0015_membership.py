"""membership: ORG/CAB mailboxes shared by people who open them as themselves, with RFC 4314 rights

Replaces ``send_as``: each existing grant becomes a member with the default rights
(``lrswipkxte``, everything but administering the ACL), which include ``p``, sending as the ORG.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "membership",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("rights", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mailbox_id", "member_id"),
    )
    with op.batch_alter_table("membership") as batch:
        batch.create_index(batch.f("ix_membership_member_id"), ["member_id"], unique=False)
    op.execute(
        "INSERT INTO membership (mailbox_id, member_id, rights, created_at)"
        " SELECT mailbox_id, member_id, 'lrswipkxte', CURRENT_TIMESTAMP FROM send_as"
    )
    op.drop_table("send_as")


def downgrade() -> None:
    op.create_table(
        "send_as",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mailbox_id", "member_id"),
    )
    op.execute(
        "INSERT INTO send_as (mailbox_id, member_id)"
        " SELECT mailbox_id, member_id FROM membership WHERE rights LIKE '%p%'"
    )
    with op.batch_alter_table("membership") as batch:
        batch.drop_index(batch.f("ix_membership_member_id"))
    op.drop_table("membership")
