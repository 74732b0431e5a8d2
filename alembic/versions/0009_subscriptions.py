"""subscriptions by name, apart from folders

RFC 3501 §6.3.6 / RFC 9051 §6.3.7: a server must not remove a name from the subscription list because
the mailbox was deleted, so a subscription cannot be a column of the folder row. Existing subscribed
folders become rows of ``subscription``; going back keeps those whose folder still exists.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscription",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=1000), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mailbox_id", "name"),
    )
    op.execute(
        "INSERT INTO subscription (mailbox_id, name) SELECT mailbox_id, name FROM folder WHERE subscribed"
    )
    with op.batch_alter_table("folder") as batch:
        batch.drop_column("subscribed")


def downgrade() -> None:
    with op.batch_alter_table("folder") as batch:
        batch.add_column(sa.Column("subscribed", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE folder SET subscribed = EXISTS (SELECT 1 FROM subscription s"
        " WHERE s.mailbox_id = folder.mailbox_id AND s.name = folder.name)"
    )
    op.drop_table("subscription")
