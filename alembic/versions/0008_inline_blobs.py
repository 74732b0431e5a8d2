"""small messages kept in their blob row (``[storage] inline_max``)

A message of a few KiB costs more as a file (create, write, fsync the file and its directory) than as
a row written by the commit the delivery makes anyway. ``blob.data`` holds such a message and
``blob.path`` is then NULL; existing blobs stay files.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blob") as batch:
        batch.alter_column("path", existing_type=sa.String(200), nullable=True)
        batch.add_column(sa.Column("data", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Only possible while no message is stored inline (their bytes would have nowhere to go)."""
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM blob WHERE data IS NOT NULL")).scalar():
        raise RuntimeError("messages are stored inline: downgrading would lose them")
    with op.batch_alter_table("blob") as batch:
        batch.drop_column("data")
        batch.alter_column("path", existing_type=sa.String(200), nullable=False)
