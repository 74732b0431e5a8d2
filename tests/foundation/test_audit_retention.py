"""Audit retention and export (issue 19): the daily purge removes only events older than ``[audit] keep``
and audits itself; ``caducee audit export`` streams a period as CSV or JSON."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

import cli as caducee_cli
from config.settings import load
from mailserver.db import migrate
from mailserver.db.models import AuditEvent
from mailserver.maintenance import purge_audit
from mailserver.runtime import Runtime, open_runtime

NOW = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)


async def age(rt: Runtime, actor: str, at: dt.datetime) -> None:
    async with rt.db.write() as session:
        await session.execute(update(AuditEvent).where(AuditEvent.actor == actor).values(at=at))


async def test_daily_purge_keeps_the_retention_period(runtime: Runtime) -> None:
    await age(runtime, "admin", NOW)  # the fixture's domain creations
    for actor in ("old@a.mssante.test", "recent@a.mssante.test"):
        for _ in range(3):
            await runtime.audit.record(actor, "login", "127.0.0.1", "imap LOGIN", "ok")
    await age(runtime, "old@a.mssante.test", NOW - dt.timedelta(days=12 * 31 + 1))
    await age(runtime, "recent@a.mssante.test", NOW - dt.timedelta(days=12 * 31 - 1))
    assert await purge_audit(runtime, NOW) == 3
    left = await runtime.audit.events()
    assert [e.actor for e in left if e.actor != "admin"] == ["recent@a.mssante.test"] * 3
    assert left[-1].action == "audit-purge" and left[-1].response == "3"
    assert await purge_audit(runtime, NOW) == 0


async def test_purge_goes_in_batches(runtime: Runtime) -> None:
    await runtime.audit.purge(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    for i in range(25):
        await runtime.audit.record(f"u{i}@a.mssante.test", "login", "", "", "ok")
    assert await runtime.audit.purge(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1), batch=10) == 25
    assert await runtime.audit.events() == []


@pytest.fixture
def runtime_config(tmp_path: Path) -> Path:
    """A data directory whose trail holds three events: January, February, and a CSV-hostile actor."""
    config = tmp_path / "caducee.toml"
    config.write_text('[database]\nurl = "sqlite+aiosqlite:///caducee.db"\n', encoding="utf-8")
    settings = load(config)
    migrate.upgrade(settings.database.url)

    async def fill() -> None:
        async with open_runtime(settings) as rt:
            for actor, at in (
                ("jan@a.mssante.test", dt.datetime(2026, 1, 10, tzinfo=dt.UTC)),
                ("feb@a.mssante.test", dt.datetime(2026, 2, 10, tzinfo=dt.UTC)),
                ('x"y,z@a.mssante.test', dt.datetime(2026, 3, 10, tzinfo=dt.UTC)),
            ):
                await rt.audit.record(actor, "read", "127.0.0.1", "imap FETCH INBOX uids 1:3", "ok")
                await age(rt, actor, at)

    asyncio.run(fill())
    return config


def test_export_streams_a_period_as_csv_or_json(runtime_config: Path, logging_kept: None) -> None:
    def run(*args: str) -> str:
        result = CliRunner().invoke(
            caducee_cli.main, ["--config", str(runtime_config), "audit", "export", *args]
        )
        assert result.exit_code == 0 and result.exception is None, result.output
        return result.stdout

    whole = json.loads(run("--since", "2026-01-01"))
    assert [e["actor"] for e in whole] == ["jan@a.mssante.test", "feb@a.mssante.test", 'x"y,z@a.mssante.test']
    january = json.loads(run("--since", "2026-01-01", "--until", "2026-02-01", "--format", "json"))
    assert [e["actor"] for e in january] == ["jan@a.mssante.test"]
    rows = list(csv.DictReader(io.StringIO(run("--since", "2026-01-15", "--format", "csv"))))
    assert [r["actor"] for r in rows] == ["feb@a.mssante.test", 'x"y,z@a.mssante.test']
    assert set(rows[0]) == {"id", "at", "actor", "remote", "action", "request", "response"}
    assert json.loads(run("--since", "2030-01-01")) == []
