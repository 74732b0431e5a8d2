"""What every ``caducee`` command module shares: settings loading, one-line errors, JSON output, and
running an async command with a runtime. Kept out of ``cli.py`` so command modules of other packages
can import it without importing the command line itself.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import click
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

import config
from mailserver.accounts import AccountError
from mailserver.runtime import open_runtime
from mailserver.store.store import StoreError


class CliState:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def settings(self) -> config.Settings:
        try:
            return config.load(self.config_path)
        except config.ConfigError as exc:
            fail(str(exc), code=2)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"caducee: {message}", err=True)
    sys.exit(code)


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str, sort_keys=True))


def with_runtime(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async command with the runtime; map refused requests and database trouble to clean errors.

    The wrapper takes nothing but the command's own parameters (the ``CliState`` comes from the click
    context, not from an argument), so no option name can collide with one of its own.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        # ``caducee`` itself sets the state; a group invoked on its own reads $CADUCEE_CONFIG.
        state = click.get_current_context().find_object(CliState) or CliState(None)
        settings = state.settings()

        async def main() -> None:
            async with open_runtime(settings) as rt:
                await fn(rt, *args, **kwargs)

        try:
            asyncio.run(main())
        except (AccountError, StoreError) as exc:
            fail(str(exc))
        except (OperationalError, ProgrammingError) as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                fail("the database is not initialised: run `caducee db upgrade`")
            fail(f"database error: {exc.orig}")
        except (DBAPIError, OSError) as exc:
            fail(f"cannot reach the database or the store: {exc}")

    return wrapper


def read_password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        fail("no password on standard input")
    if len(line) < 8:
        fail("a password needs at least 8 characters")
    return line
