"""Schema migrations through Alembic, run on the configured database URL."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

# The client's layout keeps the migrations in the top-level alembic/; mailserver/db/migrations links to it,
# so that the wheel ships them inside the package and an installed Caducée can migrate its database.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Alembic narrates every step at INFO; the CLI and the server only want to hear about problems.
logging.getLogger("alembic").setLevel(logging.WARNING)


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``; must not run inside an event loop (Alembic starts its own)."""
    command.upgrade(_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(_config(url), revision)


def heads() -> tuple[str, ...]:
    """The newest revision(s) shipped with this code (one, unless a branch is being developed)."""
    return tuple(ScriptDirectory.from_config(_config("sqlite://")).get_heads())


async def current(url: str) -> tuple[str, ...]:
    """The revisions the database is at (empty for an empty database)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: tuple(MigrationContext.configure(c).get_current_heads()))
    finally:
        await engine.dispose()


async def upgrade_async(url: str, revision: str = "head") -> None:
    """``upgrade`` from async code: Alembic's env runs its own loop, so it goes to a thread."""
    await asyncio.to_thread(upgrade, url, revision)
