"""the identity shared by a database and its message store

One row, ``storage_identity`` id 1, whose ``store_id`` must equal the identifier in the store's
``caducee-store-id`` file (``mailserver/store/identity.py``). It starts empty on an existing instance:
the first ``caducee serve`` after the upgrade writes both sides, under this row's lock.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "storage_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "store_id": None, "created_at": None}])


def downgrade() -> None:
    op.drop_table("storage_identity")
