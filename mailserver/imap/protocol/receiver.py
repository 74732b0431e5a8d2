"""Incremental, I/O-free IMAP command receiver (h11-style).

The session feeds raw bytes with :meth:`Receiver.receive_data` and pulls events with
:meth:`Receiver.next_event` until it gets :data:`NEED_DATA` (or :data:`PAUSED` while a
synchronising literal awaits the server's decision). Input can never raise: malformed
input becomes a :class:`BadCommand` event and the receiver resynchronises on the next
line, so a syntax error never costs the connection (RFC 9051 §7.1.5).

Framing (RFC 9051 §4.3, RFC 7888, RFC 3516): a command is one or more lines; a line
ending in ``{n}``, ``{n+}`` or ``~{n}`` is followed by exactly n literal octets and the
command continues on the next line. Lines may end in CRLF or a bare LF.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass

from .commands import CommandBody
from .grammar import ParseError, parse_command, parse_tag

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthCancel",
    "AuthResponse",
    "BadCommand",
    "Command",
    "Event",
    "IdleDone",
    "NeedContinuation",
    "Receiver",
    "ReceiverMode",
]


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = _Sentinel.NEED_DATA
"""No complete event is buffered; read more bytes from the socket."""
PAUSED = _Sentinel.PAUSED
"""A :class:`NeedContinuation` is unanswered; call accept_literal() or reject_literal()."""


class ReceiverMode(enum.Enum):
    COMMAND = "command"
    IDLE = "idle"
    AUTHENTICATE = "authenticate"


@dataclass(frozen=True, slots=True)
class Command:
    """A complete, parsed command."""

    tag: str
    body: CommandBody


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    """The client sent a synchronising literal ``{size}`` and waits for ``+``.

    ``too_large`` is set when the literal exceeds ``max_literal_size`` or would push the
    command past ``max_command_size``; the session must then reply with a tagged NO/BAD
    (e.g. ``NO [TOOBIG]``) and call :meth:`Receiver.reject_literal`.
    """

    tag: str | None
    size: int
    binary: bool
    too_large: bool


@dataclass(frozen=True, slots=True)
class BadCommand:
    """Answer ``<tag> <status> [code] message`` (``* BAD`` when ``tag`` is None)."""

    tag: str | None
    message: str
    status: str = "BAD"
    code: str | None = None


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The client ended IDLE with ``DONE`` (RFC 2177); the receiver is back in COMMAND mode."""


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A decoded SASL client response line (RFC 9051 §6.2.2); mode stays AUTHENTICATE."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthCancel:
    """The client cancelled AUTHENTICATE with ``*``; the receiver is back in COMMAND mode."""


Event = Command | NeedContinuation | BadCommand | IdleDone | AuthResponse | AuthCancel

_LITERAL_MARKER = re.compile(rb"(~?)\{(\d{1,19})(\+?)\}\Z")
_TOO_LONG = object()


class _State(enum.Enum):
    LINE = 1
    LITERAL = 2
    DECIDE = 3
    SKIP_LITERAL = 4
    SKIP_REST = 5
    SKIP_LINE = 6


class Receiver:
    """Turns a byte stream into IMAP events.

    Limits (all in octets): ``max_line_length`` per line excluding literals (RFC 7162 §4
    asks for at least 8192); ``max_literal_size`` per literal; ``max_command_size`` for
    a whole command including literals (bounds MULTIAPPEND memory);
    ``nonsync_literal_limit`` is the LITERAL- cap on ``{n+}`` (RFC 7888 §4, 4096), or
    None for LITERAL+ semantics. ``utf8`` must be set once UTF8=ACCEPT is enabled.
    """

    def __init__(
        self,
        *,
        max_line_length: int = 65536,
        max_literal_size: int = 64 * 1024 * 1024,
        max_command_size: int = 128 * 1024 * 1024,
        nonsync_literal_limit: int | None = 4096,
        utf8: bool = False,
    ) -> None:
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_command_size = max_command_size
        self.nonsync_literal_limit = nonsync_literal_limit
        self.utf8 = utf8
        self._buf = bytearray()
        self._scan = 0
        self._state = _State.LINE
        self._mode = ReceiverMode.COMMAND
        self._mode_tag: str | None = None
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._size = 0
        self._tag: str | None = None
        self._need = 0
        self._pending: NeedContinuation | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def mode(self) -> ReceiverMode:
        return self._mode

    @property
    def mid_command(self) -> bool:
        """Part of a command has arrived (a line begun, lines or a literal of it): a stopping server
        lets it finish before its BYE."""
        return bool(self._buf or self._lines or self._state is not _State.LINE)

    @property
    def buffered(self) -> int:
        """Octets received but not yet turned into events (for back-pressure)."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the connection; never parses (parsing is lazy)."""
        self._buf += data

    def set_mode(self, mode: ReceiverMode, tag: str | None = None) -> None:
        """Switch between COMMAND, IDLE and AUTHENTICATE.

        Call after answering ``+ idling`` / the first AUTHENTICATE challenge, before the
        next :meth:`next_event`. ``tag`` is the IDLE/AUTHENTICATE tag, carried by any
        :class:`BadCommand` produced in that mode. Buffered pipelined bytes are
        interpreted under the new mode, which is why parsing is lazy.
        """
        if self._state is not _State.LINE or self._lines:
            raise RuntimeError("cannot change mode in the middle of a command")
        self._mode = mode
        self._mode_tag = tag if mode is not ReceiverMode.COMMAND else None

    def accept_literal(self) -> None:
        """Accept the pending synchronising literal; the session sends ``+ ...`` itself."""
        pending = self._require_pending()
        if pending.too_large:
            raise RuntimeError("literal exceeds the configured limits; reject it")
        self._pending = None
        self._need = pending.size
        self._state = _State.LITERAL

    def reject_literal(self) -> None:
        """Drop the command whose literal was refused (the session sent a tagged NO/BAD).

        The client will not send the literal (RFC 9051 §4.3), so the next line is a new command.
        """
        self._require_pending()
        self._pending = None
        self._reset_command()
        self._state = _State.LINE

    def next_event(self) -> Event | _Sentinel:
        """Return the next event, :data:`NEED_DATA` or :data:`PAUSED`."""
        if self._mode is not ReceiverMode.COMMAND:
            return self._modal_event()
        while True:
            state = self._state
            if state is _State.LINE:
                line = self._take_line()
                if line is None:
                    return NEED_DATA
                if line is _TOO_LONG:
                    return self._line_too_long()
                event = self._command_line(line)
                if event is not None:
                    return event
            elif state is _State.LITERAL:
                if len(self._buf) < self._need:
                    return NEED_DATA
                self._literals.append(bytes(self._buf[: self._need]))
                del self._buf[: self._need]
                self._scan = 0
                self._size += self._need
                self._state = _State.LINE
            elif state is _State.DECIDE:
                return PAUSED
            elif state is _State.SKIP_LITERAL:
                drop = min(self._need, len(self._buf))
                del self._buf[:drop]
                self._scan = 0
                self._need -= drop
                if self._need:
                    return NEED_DATA
                self._state = _State.SKIP_REST
            elif state is _State.SKIP_REST:
                line = self._take_line()
                if line is None:
                    return NEED_DATA
                self._state = _State.LINE
                if line is _TOO_LONG:
                    self._discard_partial_line()
                    continue
                m = _LITERAL_MARKER.search(line) if line.endswith(b"}") else None
                if m is not None and m.group(3):
                    self._need = int(m.group(2))
                    self._state = _State.SKIP_LITERAL
            else:
                if not self._discard_partial_line():
                    return NEED_DATA

    # -- internals --------------------------------------------------------------------------

    def _require_pending(self) -> NeedContinuation:
        if self._state is not _State.DECIDE or self._pending is None:
            raise RuntimeError("no literal is awaiting a decision")
        return self._pending

    def _reset_command(self) -> None:
        self._lines = []
        self._literals = []
        self._size = 0
        self._tag = None

    def _take_line(self) -> bytes | object | None:
        buf = self._buf
        idx = buf.find(b"\n", self._scan)
        if idx < 0:
            if len(buf) > self.max_line_length:
                return _TOO_LONG
            self._scan = len(buf)
            return None
        end = idx - 1 if idx and buf[idx - 1] == 0x0D else idx
        if end > self.max_line_length:
            return _TOO_LONG
        line = bytes(buf[:end])
        del buf[: idx + 1]
        self._scan = 0
        return line

    def _discard_partial_line(self) -> bool:
        """Drop input up to and including the next LF; False if none is buffered yet."""
        idx = self._buf.find(b"\n")
        self._scan = 0
        if idx < 0:
            self._buf.clear()
            self._state = _State.SKIP_LINE
            return False
        del self._buf[: idx + 1]
        self._state = _State.LINE
        return True

    def _line_too_long(self) -> BadCommand:
        tag = self._tag if self._lines else parse_tag(bytes(self._buf[:256]).partition(b" ")[0])
        self._reset_command()
        self._discard_partial_line()
        return BadCommand(tag, "line too long", code="TOOBIG")

    def _command_line(self, line: bytes) -> Event | None:
        if not self._lines:
            if not line:
                return None  # Stray empty line (often an extra CRLF after a literal).
            self._tag = parse_tag(line)
        self._lines.append(line)
        self._size += len(line) + 2
        m = _LITERAL_MARKER.search(line) if line.endswith(b"}") else None
        if m is None:
            return self._parse()
        size = int(m.group(2))
        too_large = size > self.max_literal_size or self._size + size > self.max_command_size
        if not m.group(3):
            self._pending = NeedContinuation(self._tag, size, bool(m.group(1)), too_large)
            self._state = _State.DECIDE
            return self._pending
        limit = self.nonsync_literal_limit
        if too_large or (limit is not None and size > limit):
            # RFC 7888 §4: the client sends the literal regardless, so skip it and the rest
            # of the command, then resynchronise.
            tag = self._tag
            self._reset_command()
            self._need = size
            self._state = _State.SKIP_LITERAL
            return BadCommand(tag, "non-synchronizing literal too large", code="TOOBIG")
        self._need = size
        self._state = _State.LITERAL
        return None

    def _parse(self) -> Event:
        lines, literals, tag = self._lines, self._literals, self._tag
        self._reset_command()
        try:
            tag, body = parse_command(lines, literals, utf8=self.utf8)
        except ParseError as exc:
            return BadCommand(tag, exc.message, exc.status, exc.code)
        except Exception:  # A parser bug must cost one command, not the connection.
            return BadCommand(tag, "syntax error")
        return Command(tag, body)

    def _modal_event(self) -> Event | _Sentinel:
        line = self._take_line()
        if line is None:
            return NEED_DATA
        tag = self._mode_tag
        mode = self._mode
        self._mode = ReceiverMode.COMMAND
        self._mode_tag = None
        if line is _TOO_LONG:
            self._discard_partial_line()
            return BadCommand(tag, "line too long")
        if mode is ReceiverMode.IDLE:
            # RFC 2177 §3: only "DONE" may be sent while idling.
            if line.upper() == b"DONE":
                return IdleDone()
            return BadCommand(tag, "expected DONE")
        if line == b"*":
            return AuthCancel()
        try:
            data = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            return BadCommand(tag, "invalid base64 in SASL response")
        self._mode = mode
        self._mode_tag = tag
        return AuthResponse(data)
