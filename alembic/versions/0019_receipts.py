"""receipts: DELAY DSNs sent once per recipient, MDN read receipts asked once per message

``queue_recipient.delay_notified_at``: when the queue found the recipient still waiting past
``[delivery] delay_warning`` and (if NOTIFY asked for it) reported the delay; set in the transaction
that stores the DELAY DSN, so a restart never sends it twice. ``mdn_decision``: a patient's answer
(sent or declined) to a message's ``Disposition-Notification-To``, one per mailbox and message.
``api_receipt``: the MDNs received for a message sent through the API, per recipient.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("queue_recipient") as batch:
        batch.add_column(sa.Column("delay_notified_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "mdn_decision",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "mailbox_id", sa.Integer(), sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("message_key", sa.String(998), nullable=False),
        sa.Column("decision", sa.String(10), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("mailbox_id", "message_key", name="uq_mdn_decision_message"),
    )
    op.create_table(
        "api_receipt",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "message_id", sa.String(32), sa.ForeignKey("api_message.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("disposition", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(100), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("message_id", "address", "disposition", name="uq_api_receipt_disposition"),
    )
    op.create_index("ix_api_receipt_message_id", "api_receipt", ["message_id"])
    op.create_index("ix_api_message_message_id", "api_message", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_api_message_message_id", table_name="api_message")
    op.drop_table("api_receipt")
    op.drop_table("mdn_decision")
    with op.batch_alter_table("queue_recipient") as batch:
        batch.drop_column("delay_notified_at")
