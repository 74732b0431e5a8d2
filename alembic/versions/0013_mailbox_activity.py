"""mailbox activity: last login, and the inactivity notice of the life cycle

The CNIL rule for MSSanté: a mailbox without any login for a year is warned, then closed.
``last_login_at`` is stamped by a successful login (at most hourly); ``inactive_notice_at`` is when
the notice was put in the mailbox (cleared by the next login). Existing mailboxes start from their
last ``login`` audit event, else from the upgrade: a mailbox in use is never taken for one unused
since its creation because the column did not exist before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox") as batch:
        batch.add_column(sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("inactive_notice_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE mailbox SET last_login_at = (SELECT max(e.at) FROM audit_event e"
        " WHERE e.actor = mailbox.address AND e.action = 'login')"
    )
    op.execute("UPDATE mailbox SET last_login_at = CURRENT_TIMESTAMP WHERE last_login_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("mailbox") as batch:
        batch.drop_column("inactive_notice_at")
        batch.drop_column("last_login_at")
