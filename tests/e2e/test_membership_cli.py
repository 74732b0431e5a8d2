"""``caducee mailbox member add|list|remove`` (issue 16) through click's runner, against the database
of running listeners: a real smtplib submission as the ORG follows each change."""

from __future__ import annotations

import asyncio
import json
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import cli as caducee_cli
from tests.identity.conftest import DURAND, MARTIN, PASSWORD, SECRETARIAT, Env, start_env
from tests.identity.provider import Provider


@pytest.fixture
async def env(tmp_path: Path, pki: Any) -> AsyncIterator[Env]:
    """The identity tests' listeners (SQLite at ``identity.db``), which the CLI below also opens."""
    provider = Provider()
    await provider.start()
    e = await start_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/identity.db", pki, provider)
    try:
        yield e
    finally:
        await e.close()
        await provider.stop()


def cli(tmp_path: Path, *args: str, code: int = 0) -> str:
    config = tmp_path / "cli.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/identity.db"\n', encoding="utf-8")
    r = CliRunner().invoke(caducee_cli.main, ["--config", str(config), *args])
    assert r.exit_code == code, r.output
    return r.output


def send_as_org(env: Env) -> int:
    """dr.durand submits over STARTTLS with MAIL FROM and From the secretariat: the reply code."""
    message = f"From: {SECRETARIAT}\r\nTo: {MARTIN}\r\nSubject: pour le service\r\n\r\nBonjour.\r\n"
    with smtplib.SMTP("127.0.0.1", env.ports["submission"], timeout=10) as c:
        c.starttls(context=env.client_context())
        c.login(DURAND, PASSWORD)
        try:
            c.sendmail(SECRETARIAT, [MARTIN], message.encode())
        except smtplib.SMTPSenderRefused as exc:
            return exc.smtp_code
        return 250


async def test_member_commands_drive_submission(env: Env, tmp_path: Path) -> None:
    run = lambda *args, code=0: asyncio.to_thread(cli, tmp_path, *args, code=code)  # noqa: E731
    assert await asyncio.to_thread(send_as_org, env) == 550
    assert "rights lr" in await run("mailbox", "member", "add", SECRETARIAT, DURAND, "--rights", "rl")
    assert await asyncio.to_thread(send_as_org, env) == 550
    await run("mailbox", "member", "add", SECRETARIAT, DURAND, "--rights", "lrp")
    assert await asyncio.to_thread(send_as_org, env) == 250
    # Provisioning run again without --rights keeps what was granted (no silent widening).
    assert "with rights lrp" in await run("mailbox", "member", "add", SECRETARIAT, DURAND)
    listed = json.loads(await run("mailbox", "member", "list", SECRETARIAT, "--json"))
    assert {"org": SECRETARIAT, "member": DURAND, "rights": "lrp"} in listed
    assert DURAND in await run("mailbox", "member", "list")
    assert "only ORG and CAB mailboxes have members" in await run("mailbox", "member", "list", DURAND, code=1)
    assert "no longer a member" in await run("mailbox", "member", "remove", SECRETARIAT, DURAND)
    await run("mailbox", "add", "urgences@a.mssante.test", "--type", "ORG")
    assert (await run("mailbox", "member", "list", "urgences@a.mssante.test")).strip() == (
        "no members of urgences@a.mssante.test"
    )
    assert await asyncio.to_thread(send_as_org, env) == 550
    assert "not a member" in await run("mailbox", "member", "remove", SECRETARIAT, DURAND, code=1)
    assert "unknown right" in await run(
        "mailbox", "member", "add", SECRETARIAT, DURAND, "--rights", "q", code=1
    )
    assert "deprecated" in (await run("mailbox", "send-as", DURAND, SECRETARIAT)).lower()
    assert await asyncio.to_thread(send_as_org, env) == 250
    sent = (await env.audit("send"))[-1]
    assert sent.actor == DURAND and f"as member of {SECRETARIAT}" in sent.request
