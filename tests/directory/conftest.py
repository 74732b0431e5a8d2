"""Directory fixtures: migrated SQLite and PostgreSQL databases, a runtime, the shared sample files."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from config.settings import Settings, from_dict
from mailserver.db import migrate
from mailserver.db.engine import Database
from mailserver.runtime import Runtime

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "directory"
SAMPLE = SHARED / "Extraction_Correspondance_MSSante_202611220400.txt"
PATIENTS = SHARED / "patients.csv"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def sample() -> Path:
    return SAMPLE


@pytest.fixture
def patients_csv() -> Path:
    return PATIENTS


@pytest.fixture
def sample_lines() -> list[str]:
    return SAMPLE.read_text(encoding="utf-8").splitlines()


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    await migrate.upgrade_async(url)
    return url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A throwaway PostgreSQL database, migrated; dropped afterwards. Unreachable server = failure."""
    name = f"caducee_dir_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        await migrate.upgrade_async(url)
        yield url
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def db(sqlite_url: str) -> AsyncIterator[Database]:
    database = Database(sqlite_url)
    yield database
    await database.close()


def make_settings(tmp_path: Path, url: str, **sections: dict[str, object]) -> Settings:
    from mailserver.tls import make_first_run_certificates

    chain, key, ca = make_first_run_certificates(tmp_path / "tls", "localhost", "caducee.test")
    data: dict[str, dict[str, object]] = {
        "database": {"url": url},
        "storage": {"path": str(tmp_path / "store")},
        "tls": {"cert": str(chain), "key": str(key), "peer_ca": str(ca)},
    }
    data.update(sections)
    return from_dict(data)


@pytest.fixture
async def rt(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Runtime]:
    runtime = Runtime.build(make_settings(tmp_path, sqlite_url))
    yield runtime
    await runtime.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def copy_sample(dest: Path) -> Path:
    return Path(shutil.copy(SAMPLE, dest))
