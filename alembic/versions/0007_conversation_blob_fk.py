"""conversation messages point to their blob with ON DELETE SET NULL

Without a foreign key a deleted blob's id could be reused (SQLite reuses the highest rowid), and a
patient's thread would then show an unrelated message. Dangling references are cleared first.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE conversation_message SET blob_id = NULL "
        "WHERE blob_id IS NOT NULL AND blob_id NOT IN (SELECT id FROM blob)"
    )
    with op.batch_alter_table("conversation_message") as batch:
        batch.create_foreign_key(
            "fk_conversation_message_blob", "blob", ["blob_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("conversation_message") as batch:
        batch.drop_constraint("fk_conversation_message_blob", type_="foreignkey")
