"""Shared fixtures: settings, a migrated database on SQLite *and* PostgreSQL, a runtime, the test PKI.

PostgreSQL tests never skip: if 127.0.0.1:5432 is unreachable they fail (``.ci/run`` starts or installs
PostgreSQL first). Each test using ``db_url`` gets a throwaway database, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Browser, async_playwright

from config.settings import Settings, from_dict
from mailserver import accounts
from mailserver.db import migrate
from mailserver.runtime import Runtime

PG_ADMIN = os.environ.get("CADUCEE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ENGINES = ["sqlite", "postgresql"]


async def pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        asyncio.run(pg_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN} (run .ci/run, which starts it): {exc}")


@pytest.fixture
def pg_url(pg_available: None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"caducee_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on an embedded SQLite file and on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/caducee.db"
    return request.getfixturevalue("pg_url")


def make_settings(tmp_path: Path, db_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings for a test: data under ``tmp_path``, cheap password hashing, any section overridden."""
    data: dict[str, Any] = {
        "server": {"hostname": "mx.a.mssante.test"},
        "database": {"url": db_url},
        "storage": {"path": str(tmp_path / "store")},
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8192},
        "admin": {"listen": ["127.0.0.1:0"]},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(data, tmp_path / "caducee.toml")


@pytest.fixture
async def runtime(tmp_path: Path, db_url: str) -> AsyncIterator[Runtime]:
    """A migrated database, a store, and one hosted domain ``a.mssante.test`` (+ patients domain)."""
    await migrate.upgrade_async(db_url)
    rt = Runtime.build(make_settings(tmp_path, db_url))
    await asyncio.to_thread(rt.blobs.ensure)
    await accounts.add_domain(rt, "a.mssante.test", patients=False)
    await accounts.add_domain(rt, "patient.a.mssante.test", patients=True)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The test PKI (roots, operators A and B, impostors, S/MIME identities), made once per run."""
    from tests.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


# The portal's browser tests (tests/portal, tests/e2e): Debian's chromium, headless, loopback only.
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def logging_kept() -> Iterator[None]:
    """A test that runs ``caducee`` in this process (click's runner): the command configures logging
    for its process, so leave this test process's as it was for the tests after it."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    logging.getLogger("mail.log").setLevel(logging.NOTSET)
