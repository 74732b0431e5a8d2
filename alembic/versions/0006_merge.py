"""merge the concern branches (directory, SMTP queue, S/MIME, conversations) into one history

Each concern's first migration branched from 0001 while they were written side by side; from here on
there is a single head, so `alembic upgrade head` and `caducee db upgrade` agree.

Revision ID: 0006
Revises: 0002, 0003, 0004, 0005
Create Date: 2026-11-22
"""

from collections.abc import Sequence

revision: str = "0006"
down_revision: str | Sequence[str] | None = ("0002", "0003", "0004", "0005")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to change: the merge only joins the histories."""


def downgrade() -> None:
    """Nothing to change: the merge only joins the histories."""
