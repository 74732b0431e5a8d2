"""The SMTP session's own command loop, in place of aiosmtpd's ``_handle_client``.

aiosmtpd keeps reading and answering pipelined commands after a command closed the connection (its
loop runs while ``transport`` is set, which stays so until ``connection_lost``), and a second
``close()`` of a TLS transport drops its protocol: the next reply or ``get_extra_info`` then raises
``AttributeError`` out of asyncio's TLS layer. Here the session ends as soon as the connection is
closing, nothing is written on a closing transport, the connection is closed once (``hang_up``), and
the TLS object is kept from the moment TLS is up (``ssl_object``) rather than asked of the transport.

What stays aiosmtpd's: the commands (``smtp_*``), STARTTLS's upgrade and the AUTH exchange. Lines
longer than the reader's limit, as commands or as AUTH responses, and command lines longer than their
command's (``command_size_limits``: ``[limits] smtp_line_length``, ``smtp_auth_line_length`` for AUTH),
get ``500 5.5.2``; a client going away mid-command ends the session without a reply or a traceback.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import ssl
from base64 import b64decode, b64encode
from typing import Any

from aiosmtpd.smtp import ALLOWED_BEFORE_STARTTLS, BOGUS_LIMIT, MISSING, SMTP, TLSSetupException, _Missing

from mailserver.untrusted import printable

log = logging.getLogger("caducee.smtp")

LINE_TOO_LONG = "500 5.5.2 line too long (RFC 5321 §4.5.3.1)"


async def discard_line(reader: asyncio.StreamReader, consumed: int) -> None:
    """Skip the rest of a line longer than the reader's limit (``consumed`` octets are buffered)."""
    await reader.readexactly(consumed)
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)


async def read_line(reader: asyncio.StreamReader) -> bytes | None:
    """One line without its line ending, or None when it was too long (and has been skipped)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        await discard_line(reader, exc.consumed)
        return None
    return line.rstrip(b"\r\n")


class CommandLoop(SMTP):
    """aiosmtpd's ``SMTP`` driven by our loop. Subclasses greet (``greet``) and say what a command line
    is to the audit trail (``request``, which ``push`` may use while the command runs)."""

    ssl_object: ssl.SSLObject | None = None
    request: str | None = None
    _lost = False

    # ------------------------------------------------------------------ the connection

    @property
    def closing(self) -> bool:
        """Whether the connection is closing or closed: then nothing more is read or written."""
        return self.transport is None or self.transport.is_closing()

    @property
    def tls_active(self) -> bool:
        return self.ssl_object is not None

    def hang_up(self) -> None:
        """Close the connection, once (a second ``close`` of a TLS transport detaches its protocol)."""
        if not self.closing:
            assert self.transport is not None
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again by the TLS layer once STARTTLS's handshake is over, with the encrypted transport.
        self.ssl_object = transport.get_extra_info("ssl_object")
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._lost:  # a failed STARTTLS handshake: ended by the loop, then maybe by the TLS layer
            return
        self._lost = True
        self.ended()
        super().connection_lost(error)

    def ended(self) -> None:
        """Called once when the connection is over, whichever way it ended."""

    def _timeout_cb(self) -> None:
        log.info("SMTP session idle for %ss, closed", self._timeout_duration)
        self.hang_up()

    async def push(self, status: Any) -> None:
        if self.closing:
            return
        self.replied(str(status))
        await super().push(status)

    def commanded(self, command: str) -> None:
        """A command line was read: ``command`` is its verb if the server knows it, else ``unknown``."""

    def replied(self, status: str) -> None:
        """A reply is about to be sent (every one goes through ``push``)."""

    # ------------------------------------------------------------------ the loop

    async def greet(self) -> bool:
        """Send the greeting; False when the connection is refused instead (and closed)."""
        await self.push(f"220 {self.hostname} {self.__ident__}")
        return True

    async def _handle_client(self) -> None:
        try:
            if await self.greet():
                bogus = BOGUS_LIMIT
                while not self.closing:
                    bogus = await self._command(bogus)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away in the middle of a command: nobody to answer
        except TLSSetupException as exc:
            # A failed STARTTLS handshake (reported by smtp_STARTTLS): the TLS layer never made the
            # encrypted connection, so it will not report its loss either.
            self.hang_up()
            self.connection_lost(exc)
        except Exception:  # our own failure while answering one (the audit trail cannot be written)
            log.exception("SMTP session ended by a local error")
        finally:
            self.request = None
            self.hang_up()

    async def _command(self, bogus: int) -> int:
        """Read and run one command; returns what is left of the budget of unknown commands."""
        self.request = None
        line = await read_line(self._reader)
        if line is None:
            self.request = "(a command line too long)"
            self.commanded("unknown")
            await self.push(LINE_TOO_LONG)
            return bogus
        verb, _, rest = line.partition(b" ")
        command = verb.upper().decode("ascii", "replace")
        # The reader allows AUTH's longer lines (RFC 4954 §4); every other command keeps its own limit.
        if len(line) + 2 > self.command_size_limits.get(command, self.command_size_limit):
            self.request = "(a command line too long)"
            await self.push(LINE_TOO_LONG)
            return bogus
        self.request = self.describe(command, line)
        if not command.isalpha() or not command.isascii():
            self.commanded("unknown")
            await self.push("500 5.5.2 syntax error: a command is a word of letters")
            return bogus
        method = self._smtp_methods.get(command)
        self.commanded(command if method is not None else "unknown")
        if method is None:  # unknown whatever the state (RFC 5321 §4.2.4), so before the TLS check
            if bogus <= 1:
                await self.push("502 5.5.1 too many unrecognised commands, goodbye")
                self.hang_up()
                return 0
            await self.push(f'500 5.5.1 command "{printable(command, 40)}" not recognised')
            return bogus - 1
        if self.require_starttls and self._tls_protocol is None and command not in ALLOWED_BEFORE_STARTTLS:
            await self.push("530 5.7.0 must issue a STARTTLS command first")  # RFC 3207 §4
            return bogus
        self._reset_timeout()
        arg = rest.strip().decode("utf-8", "surrogateescape") or None
        try:
            await method(arg)
        except (ConnectionError, asyncio.IncompleteReadError, TLSSetupException):
            raise
        except Exception as error:
            if self.closing:  # nobody to tell any more: say it in the log only
                log.info("SMTP session ended during %s: %s", command, printable(repr(error), 300))
                return bogus
            await self.push(await self.handle_exception(error))
        return bogus

    def describe(self, command: str, line: bytes) -> str:
        """The command line as the audit trail shows it: verb in capitals, printable, no AUTH credentials."""
        rest = line.partition(b" ")[2]
        if command == "AUTH":
            rest = rest.split(maxsplit=1)[0] if rest.split() else b""
        return printable(f"{command} ".encode() + rest if rest else command.encode(), 500)

    # ------------------------------------------------------------------ commands the loop owns

    async def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: QUIT")
            return
        await self.push("221 2.0.0 Bye")
        self.hang_up()

    async def challenge_auth(
        self, challenge: str | bytes, encode_to_b64: bool = True, log_client_response: bool = False
    ) -> _Missing | bytes:
        """RFC 4954 §4: one ``334`` challenge and the client's response, as aiosmtpd's, but a response
        longer than the line limit gets ``500 5.5.2`` (it is skipped, the stream stays in step)."""
        raw = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(raw) if encode_to_b64 else raw))
        line = await read_line(self._reader)
        if line is None:
            await self.push(LINE_TOO_LONG)
            return MISSING
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 AUTH aborted")
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 cannot decode base64")
            return MISSING
