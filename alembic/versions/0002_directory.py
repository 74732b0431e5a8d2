"""directory: professionals, structures, directory mailboxes, patients, import staging, search index

Search index: on SQLite an FTS5 table over ``dir_mailbox.search_text`` (external content, kept in step by
the importer, the column's only writer: row triggers cost 20x more per row on a bulk import); on
PostgreSQL a pg_trgm GIN index on the same column.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_SEARCH = (
    "CREATE VIRTUAL TABLE dir_search USING fts5(search_text, content='dir_mailbox', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2')",
)
_STAGED_TEXT = (
    *("type", "service", "dematerialisation", "display_name", "name_key", "first_key", "cn_key"),
    *("profession_key", "org_key", "service_key", "city_key", "postal_code", "search_text"),
    *("s_identifier", "s_id_type", "legal_name", "trade_name", "address_l2", "address_l3", "street_number"),
    *("street_number_suffix", "street_type", "street_name", "locality", "address_l6", "city"),
    *("department", "country", "p_identifier", "p_id_type", "rpps", "civility", "last_name", "first_name"),
    *("category_code", "category_label", "profession_code", "profession_label", "skill_code", "skill_label"),
)
_POSTGRES_C_COLLATED = (
    ("address", 320),
    ("name_key", 200),
    ("first_key", 200),
    ("profession_key", 200),
    ("city_key", 100),
    ("postal_code", 10),
)
_POSTGRES_SEARCH = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX ix_dir_mailbox_search_trgm ON dir_mailbox USING gin (search_text gin_trgm_ops)",
    "CREATE INDEX ix_dir_mailbox_cn_trgm ON dir_mailbox USING gin (cn_key gin_trgm_ops)",
)


def upgrade() -> None:
    op.create_table(
        "dir_structure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=20), nullable=False),
        sa.Column("id_type", sa.String(length=2), nullable=False),
        sa.Column("legal_name", sa.String(length=200), nullable=False),
        sa.Column("trade_name", sa.String(length=200), nullable=False),
        sa.Column("address_l2", sa.String(length=100), nullable=False),
        sa.Column("address_l3", sa.String(length=100), nullable=False),
        sa.Column("street_number", sa.String(length=20), nullable=False),
        sa.Column("street_number_suffix", sa.String(length=20), nullable=False),
        sa.Column("street_type", sa.String(length=20), nullable=False),
        sa.Column("street_name", sa.String(length=200), nullable=False),
        sa.Column("locality", sa.String(length=100), nullable=False),
        sa.Column("address_l6", sa.String(length=100), nullable=False),
        sa.Column("postal_code", sa.String(length=10), nullable=False),
        sa.Column("city", sa.String(length=100), nullable=False),
        sa.Column("department", sa.String(length=5), nullable=False),
        sa.Column("country", sa.String(length=60), nullable=False),
        sa.Column("row_hash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("identifier"),
    )
    op.create_table(
        "dir_professional",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=20), nullable=False),
        sa.Column("id_type", sa.String(length=2), nullable=False),
        sa.Column("rpps", sa.String(length=11), nullable=False),
        sa.Column("civility", sa.String(length=10), nullable=False),
        sa.Column("last_name", sa.String(length=100), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=False),
        sa.Column("category_code", sa.String(length=10), nullable=False),
        sa.Column("category_label", sa.String(length=100), nullable=False),
        sa.Column("profession_code", sa.String(length=10), nullable=False),
        sa.Column("profession_label", sa.String(length=100), nullable=False),
        sa.Column("skill_code", sa.String(length=10), nullable=False),
        sa.Column("skill_label", sa.String(length=200), nullable=False),
        sa.Column("row_hash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("identifier"),
    )
    op.create_index("ix_dir_professional_rpps", "dir_professional", ["rpps"])
    op.create_table(
        "dir_mailbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("type", sa.String(length=3), nullable=False),
        sa.Column("service", sa.String(length=200), nullable=False),
        sa.Column("dematerialisation", sa.String(length=1), nullable=False),
        sa.Column("liste_rouge", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("hosted", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("professional_id", sa.Integer(), nullable=True),
        sa.Column("structure_id", sa.Integer(), nullable=True),
        sa.Column("display_name", sa.String(length=300), nullable=False),
        sa.Column("name_key", sa.String(length=200), nullable=False),
        sa.Column("first_key", sa.String(length=200), nullable=False),
        sa.Column("cn_key", sa.String(length=300), nullable=False),
        sa.Column("profession_key", sa.String(length=200), nullable=False),
        sa.Column("org_key", sa.String(length=300), nullable=False),
        sa.Column("service_key", sa.String(length=200), nullable=False),
        sa.Column("city_key", sa.String(length=100), nullable=False),
        sa.Column("postal_code", sa.String(length=10), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("row_hash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["professional_id"], ["dir_professional.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["structure_id"], ["dir_structure.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Folded keys are plain ASCII: byte order is their natural order, and lets prefix ranges and
        # ORDER BY use the btree indexes whatever the database's locale.
        for name, length in _POSTGRES_C_COLLATED:
            op.execute(f'ALTER TABLE dir_mailbox ALTER COLUMN {name} TYPE varchar({length}) COLLATE "C"')
    op.create_index("ix_dir_mailbox_name_key", "dir_mailbox", ["name_key", "first_key", "address"])
    op.create_index("ix_dir_mailbox_city_key", "dir_mailbox", ["city_key"])
    op.create_index("ix_dir_mailbox_postal_code", "dir_mailbox", ["postal_code"])
    op.create_index("ix_dir_mailbox_professional_id", "dir_mailbox", ["professional_id"])
    op.create_index("ix_dir_mailbox_structure_id", "dir_mailbox", ["structure_id"])
    op.create_table(
        "dir_import_row",
        sa.Column("line", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("change", sa.String(length=10), nullable=False),
        sa.Column("hosted", sa.Boolean(), nullable=True),
        *(sa.Column(name, sa.Text(), nullable=True) for name in _STAGED_TEXT),
        *(
            sa.Column(name, sa.LargeBinary(length=16), nullable=True)
            for name in ("row_hash", "s_hash", "p_hash")
        ),
        sa.PrimaryKeyConstraint("line"),
        sa.UniqueConstraint("address"),
    )
    op.create_table(
        "patient",
        sa.Column("ins", sa.String(length=15), nullable=False),
        sa.Column("last_name", sa.String(length=100), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=False),
        sa.Column("sex", sa.String(length=1), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("address", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ins"),
    )
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE_SEARCH if dialect == "sqlite" else _POSTGRES_SEARCH:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS dir_search")
    op.drop_table("patient")
    op.drop_table("dir_import_row")
    op.drop_table("dir_mailbox")
    op.drop_table("dir_professional")
    op.drop_table("dir_structure")
