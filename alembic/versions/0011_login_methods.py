"""login methods per mailbox, client certificates of applicative mailboxes

``mailbox.auth_methods``: the methods that may log the mailbox in (``caducee mailbox auth``), a comma
list of ``password``, ``app-password``, ``oauth``, ``cert``; NULL allows every one (as before).
``mailbox_cert``: certificates registered for SASL EXTERNAL, matched by issuer + serial or subject.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox") as batch:
        batch.add_column(sa.Column("auth_methods", sa.String(length=100), nullable=True))
    op.create_table(
        "mailbox_cert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("issuer", sa.String(length=1000), nullable=False),
        sa.Column("serial", sa.String(length=80), nullable=False),
        sa.Column("subject", sa.String(length=1000), nullable=False),
        sa.Column("match", sa.String(length=20), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mailbox_id", "sha256", name="uq_mailbox_cert_sha256"),
    )
    op.create_index("ix_mailbox_cert_issuer_serial", "mailbox_cert", ["issuer", "serial"])
    op.create_index("ix_mailbox_cert_subject", "mailbox_cert", ["subject"])


def downgrade() -> None:
    op.drop_index("ix_mailbox_cert_subject", table_name="mailbox_cert")
    op.drop_index("ix_mailbox_cert_issuer_serial", table_name="mailbox_cert")
    op.drop_table("mailbox_cert")
    with op.batch_alter_table("mailbox") as batch:
        batch.drop_column("auth_methods")
