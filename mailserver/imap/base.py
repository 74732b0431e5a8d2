"""What every command module shares: session states, the verb → handler table, command failures.

Kept apart from ``session.py`` so that command modules can register themselves without an import
cycle; ``session.py`` imports :mod:`mailserver.imap.commands`, which fills :data:`REGISTRY`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailserver.imap.session import Session


class State(enum.IntFlag):
    """RFC 9051 §3: the connection states a command may be issued in (LOGOUT needs no handler state)."""

    NOT_AUTHENTICATED = 1
    AUTHENTICATED = 2
    SELECTED = 4
    ANY = NOT_AUTHENTICATED | AUTHENTICATED | SELECTED
    AUTH_OR_SELECTED = AUTHENTICATED | SELECTED


class Fail(Exception):
    """End the command with a tagged NO/BAD; ``code`` is an RFC 5530 / RFC 9051 §7.1 response code."""

    def __init__(self, status: str, text: str, code: str | bytes | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


@dataclass(frozen=True, slots=True)
class Done:
    """The tagged completion of a command (usually ``OK``), written after pending updates.

    An empty ``status`` means the handler already wrote its tagged answer (STARTTLS must, before
    the handshake).
    """

    text: str = "completed"
    code: str | bytes | None = None
    status: str = "OK"


HandlerFn = Callable[["Session", str, Any], Awaitable[Done]]


@dataclass(frozen=True, slots=True)
class Handler:
    """One verb: its coroutine, the states it is valid in, the capabilities its presence announces;
    ``sync_first`` False for a command that must answer before any pending update (IDLE)."""

    name: str
    run: HandlerFn
    states: State
    capabilities: tuple[str, ...] = ()
    sync_first: bool = True


REGISTRY: dict[str, Handler] = {}


def command(
    name: str, states: State, capabilities: tuple[str, ...] = (), *, sync_first: bool = True
) -> Callable[[HandlerFn], HandlerFn]:
    """Register ``fn`` as the handler of ``name`` (the parser's upper-case command keyword)."""

    def register(fn: HandlerFn) -> HandlerFn:
        if name in REGISTRY:
            raise RuntimeError(f"IMAP command {name} registered twice")
        REGISTRY[name] = Handler(name, fn, states, capabilities, sync_first)
        return fn

    return register


_SHARED_CODES = frozenset({"NONEXISTENT", "ALREADYEXISTS", "CANNOT", "NOPERM", "INUSE", "LIMIT"})


def store_code(code: str) -> str:
    """Map a :class:`StoreError` code to an RFC 5530 response code (they share names on purpose)."""
    return (
        code if code in {"NONEXISTENT", "ALREADYEXISTS", "CANNOT", "NOPERM", "INUSE", "LIMIT"} else "CANNOT"
    )
