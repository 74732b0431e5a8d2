"""queue leases apart from the retry schedule

A claimed recipient used to be "leased" by pushing ``next_attempt`` forward, so ``queue retry`` (which
sets ``next_attempt`` to now) handed rows being delivered to a second worker. The lease is now its own
pair of columns: ``leased_until`` (renewed by the delivering worker's heartbeat) and ``lease_token``
(which worker holds it). ``next_attempt`` is only the retry schedule again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("queue_recipient") as batch:
        batch.add_column(sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("queue_recipient") as batch:
        batch.drop_column("lease_token")
        batch.drop_column("leased_until")
