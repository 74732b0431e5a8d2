"""patient second factor: authenticator-app secrets, pending codes, trusted-device epoch

``portal_factor`` holds a patient's RFC 6238 secret sealed with the master key (AES-256-GCM), the
last time step accepted (no replay) and the epoch trusted-device cookies must carry; ``portal_code``
the pending second steps of a login or a password reset (HMAC of the e-mailed code, tries, expiry).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "portal_factor",
        sa.Column(
            "mailbox_id", sa.Integer(), sa.ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("totp_secret", sa.LargeBinary(), nullable=True),
        sa.Column("totp_pending", sa.LargeBinary(), nullable=True),
        sa.Column("totp_enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        sa.Column("device_epoch", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "portal_code",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("challenge_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("mailbox_id", sa.Integer(), sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=True),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("code_hash", sa.String(100), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_portal_code_mailbox_id", "portal_code", ["mailbox_id"])
    op.create_index("ix_portal_code_expires_at", "portal_code", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_portal_code_expires_at", table_name="portal_code")
    op.drop_index("ix_portal_code_mailbox_id", table_name="portal_code")
    op.drop_table("portal_code")
    op.drop_table("portal_factor")
