"""An error in a command costs that command, never the connection (issue 13 #21)."""

from __future__ import annotations

from typing import Any

from tests.imap.conftest import IMAPEnv


def status(lines: list[str]) -> list[str]:
    """``["NO", "[LIMIT]"]`` from a tagged completion."""
    return lines[-1].split()[1:3]


async def test_a_failing_command_costs_only_the_command(imap: IMAPEnv, monkeypatch: Any) -> None:
    """An OSError inside a command (a database or blob file error) used to end the session without a
    tagged reply; only a connection that is really gone may end it."""

    async def broken(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    c = await imap.connect()
    monkeypatch.setattr(imap.rt.store, "listing", broken, raising=False)
    monkeypatch.setattr(imap.rt.store, "folders", broken)
    assert status(await c.command('LIST "" "*"')) == ["NO", "[SERVERBUG]"]
    assert status(await c.command('LSUB "" "*"')) == ["NO", "[SERVERBUG]"]
    await c.ok("NOOP")
    await c.close()
