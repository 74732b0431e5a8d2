"""patient alerts: per-patient switch and throttle, and queue entries sent through the relay

``patient.alerts_enabled`` (the patient's choice in the portal), ``patient.last_alert_at`` (at most one
alert per ``[patients] alert_interval``) and ``queue_message.relay``: set only on alerts, which go to
the operator's ``[relay]`` instead of a peer of the trust space.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.add_column(sa.Column("alerts_enabled", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("last_alert_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("queue_message") as batch:
        batch.add_column(sa.Column("relay", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("queue_message") as batch:
        batch.drop_column("relay")
    with op.batch_alter_table("patient") as batch:
        batch.drop_column("last_alert_at")
        batch.drop_column("alerts_enabled")
