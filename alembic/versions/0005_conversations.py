"""conversations: patient conversations, their messages, portal invitations and sessions

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("professional", sa.String(length=320), nullable=False),
        sa.Column("professional_name", sa.String(length=300), nullable=False),
        sa.Column("professional_mailbox_id", sa.Integer(), nullable=True),
        sa.Column("patient_ins", sa.String(length=15), nullable=False),
        sa.Column("patient_mailbox_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("state", sa.String(length=6), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=10), nullable=True),
        sa.ForeignKeyConstraint(["patient_mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["professional_mailbox_id"], ["mailbox.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
    )
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.create_index(
            "ix_conversation_pair", ["patient_mailbox_id", "professional", "state"], unique=False
        )
        batch_op.create_index("ix_conversation_professional", ["professional"], unique=False)
        batch_op.create_index(
            "ix_conversation_professional_mailbox_id", ["professional_mailbox_id"], unique=False
        )
        batch_op.create_index("ix_conversation_patient_ins", ["patient_ins"], unique=False)

    op.create_table(
        "conversation_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=998), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("kind", sa.String(length=7), nullable=False),
        sa.Column("blob_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversation.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("conversation_message", schema=None) as batch_op:
        batch_op.create_index("ix_conversation_message_conversation_id", ["conversation_id"], unique=False)
        batch_op.create_index("ix_conversation_message_message_id", ["message_id"], unique=False)

    op.create_table(
        "portal_invite",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code_hash"),
    )
    with op.batch_alter_table("portal_invite", schema=None) as batch_op:
        batch_op.create_index("ix_portal_invite_mailbox_id", ["mailbox_id"], unique=False)

    op.create_table(
        "portal_session",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("remote", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("portal_session", schema=None) as batch_op:
        batch_op.create_index("ix_portal_session_mailbox_id", ["mailbox_id"], unique=False)
        batch_op.create_index("ix_portal_session_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_table("portal_session")
    op.drop_table("portal_invite")
    op.drop_table("conversation_message")
    op.drop_table("conversation")
