"""The ESMTP protocol engine shared by the inbound MTA and submission: aiosmtpd's ``SMTP``, extended.

aiosmtpd gives STARTTLS and the AUTH exchange; the command loop is ours (``mailserver.smtp.loop``:
nothing is read or written once the connection is closing). Added here,
each family of commands in its own method of one session state machine (``Envelope`` holds the
transaction):

- EHLO advertising exactly what is implemented: PIPELINING (RFC 2920: aiosmtpd already reads commands
  from a buffered stream), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531),
  ENHANCEDSTATUSCODES (RFC 2034: ``push`` adds an RFC 3463 code to every reply lacking one), DSN
  (RFC 3461: RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT), CHUNKING (RFC 3030: BDAT), STARTTLS, AUTH.
- Our own MAIL/RCPT parsing (``mailserver.smtp.paths``): paths must be ``<...>`` and RFC 5321/6531
  addresses (else 501 5.1.7 / 553 5.1.3 at once), then are handed to policy verbatim (aiosmtpd's
  parser silently drops source routes), parameters keep their case (ENVID and ORCPT are xtext).
- Every reply in printable text, every refusal audited before it is sent (``push``).
- Limits: connections (``mailserver.limits``: 421 at connect, 454 at AUTH), line length (commands
  and message lines), idle time, recipients per message, message size (SIZE, DATA and BDAT alike: 552 5.3.4).
- DATA read in large pieces rather than aiosmtpd's line by line (``read_data``).
- Implicit TLS recognised as TLS (``tls_active``, in the loop), which aiosmtpd does not do (its
  issues #274/#281).

What a message *means* (who may send, where it goes, how it is stored) is the handler's business
(``mailserver.smtp.handler``); this module only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiosmtpd.smtp import Envelope, Session, TLSSetupException
from cryptography import x509

from mailserver import handshakes
from mailserver.limits import ConnectionGate, Refused, Slot
from mailserver.logs import log_event
from mailserver.policy import LocalTarget, Refusal, RemoteTarget
from mailserver.smtp.loop import CommandLoop
from mailserver.smtp.paths import check_recipient, check_sender, parse_path
from mailserver.untrusted import printable

if TYPE_CHECKING:
    from mailserver.smtp.handler import Handler

log = logging.getLogger("caducee.smtp")

# RFC 3463 / RFC 5248 defaults for replies whose text does not carry a more precise code.
_DEFAULT_ENHANCED = {
    "211": "2.0.0",
    "214": "2.0.0",
    "220": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_BDAT = re.compile(r"(\d{1,15})(?:[ \t]+(LAST))?", re.IGNORECASE)
_XTEXT = re.compile(r"\+([0-9A-F]{2})")
_NOTIFY_VALUES = {"SUCCESS", "FAILURE", "DELAY"}
_TOO_BIG = "552 5.3.4 message size exceeds fixed maximum message size"  # DATA and BDAT (RFC 1870)


def with_enhanced_code(status: str) -> str:
    """Insert the default enhanced status code (RFC 2034 §3) into a 2xx/4xx/5xx reply lacking one."""
    if status[:1] not in "245" or _HAS_ENHANCED.match(status):
        return status
    enhanced = _DEFAULT_ENHANCED.get(status[:3], f"{status[0]}.0.0")
    code, sep, text = status[:3], status[3:4] or " ", status[4:]
    return f"{code}{sep}{enhanced} {text}".rstrip()


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: ``+XX`` hexadecimal escapes."""
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


def xtext_encode(value: str) -> str:
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in value)


@dataclass
class MailOptions:
    """Parameters of MAIL FROM (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461 RET/ENVID)."""

    size: int | None = None
    body: str = "7BIT"
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None


@dataclass
class Recipient:
    """An accepted RCPT with its DSN options (RFC 3461 §4.1 NOTIFY, §4.2 ORCPT)."""

    address: str
    target: LocalTarget | RemoteTarget
    notify: tuple[str, ...] = ()
    orcpt: str | None = None

    def wants(self, event: str) -> bool:
        """Whether a DSN is due for ``event`` (``SUCCESS``/``FAILURE``/``DELAY``); FAILURE by default."""
        if not self.notify:
            return event in ("FAILURE", "DELAY")
        return event in self.notify


class SMTPEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.mail_seen = False
        self.options = MailOptions()
        self.recipients: list[Recipient] = []
        self.chunks: bytearray | None = None
        self.bdat_error: str | None = None
        self.sent_copy: bytes | None = None  # submission: the message as sent, before S/MIME


class SMTPSession(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.mailbox_id: int | None = None
        self.username: str | None = None
        self.members: tuple[int, ...] = ()  # a shared mailbox opened through a membership (auth.py)
        self.person_address = ""  # then whom the audit names as sending (the person, not the ORG)

    # aiosmtpd logs a deprecation warning at every access of its own property; we only keep the value.
    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


@dataclass
class ServerConfig:
    """What one listener's sessions share: limits, TLS, and the set of open sessions (for shutdown)."""

    service: str
    hostname: str
    message_size: int
    line_length: int
    recipients_per_message: int
    idle_timeout: float
    gate: ConnectionGate
    starttls: ssl.SSLContext | None = None
    implicit_tls: bool = False
    auth: bool = False
    client_cert: Literal["none", "optional", "required"] = "none"
    auth_line_length: int = 12288
    active: set[SMTPServer] = field(default_factory=set)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False  # the listener is closing: each session ends after what it is receiving


def parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters (RFC 5321 §4.1.2): keywords upper-cased, values kept as sent."""
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not key.replace("-", "").isalnum() or (eq and not value) or key.upper() in params:
            raise Refusal(501, "5.5.4", f"invalid parameter {item!r}")
        params[key.upper()] = value if eq else None
    return params


def mail_options(params: dict[str, str | None], limit: int) -> MailOptions:
    opts = MailOptions()
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isdigit():
                raise Refusal(501, "5.5.4", "SIZE takes a number of octets")
            opts.size = int(value)
            if limit and opts.size > limit:
                raise Refusal(552, "5.3.4", f"message size exceeds fixed maximum message size ({limit})")
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise Refusal(501, "5.5.4", "BODY is 7BIT or 8BITMIME")
            opts.body = value.upper()
        elif key == "SMTPUTF8":
            if value is not None:
                raise Refusal(501, "5.5.4", "SMTPUTF8 takes no value")
            opts.smtputf8 = True
        elif key == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise Refusal(501, "5.5.4", "RET is FULL or HDRS")
            opts.ret = value.upper()
        elif key == "ENVID":
            envid = xtext_decode(value or "")
            if not envid or len(envid) > 100:
                raise Refusal(501, "5.5.4", "ENVID must be 1 to 100 characters")
            opts.envid = envid
        else:
            raise Refusal(555, "5.5.4", f"MAIL parameter {key} not recognised")
    return opts


def rcpt_options(params: dict[str, str | None]) -> tuple[tuple[str, ...], str | None]:
    notify: tuple[str, ...] = ()
    orcpt = None
    for key, value in params.items():
        if key == "NOTIFY":
            items = tuple((value or "").upper().split(","))
            if items != ("NEVER",) and (not set(items) <= _NOTIFY_VALUES or len(set(items)) != len(items)):
                raise Refusal(501, "5.5.4", "NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY")
            notify = items
        elif key == "ORCPT":
            kind, semi, addr = (value or "").partition(";")
            if not semi or not kind or not addr:
                raise Refusal(501, "5.5.4", "ORCPT is addr-type;xtext")
            orcpt = f"{kind.lower()};{xtext_decode(addr)}"
            if len(orcpt) > 500:
                raise Refusal(501, "5.5.4", "ORCPT too long")
        else:
            raise Refusal(555, "5.5.4", f"RCPT parameter {key} not recognised")
    return notify, orcpt


async def read_data(
    reader: asyncio.StreamReader, size_limit: int, line_limit: int, activity: Callable[[], None]
) -> tuple[bytes, str | None]:
    """The message after DATA (RFC 5321 §4.1.1.4), up to the ``<CRLF>.<CRLF>`` that ends it and
    dot-unstuffed (§4.5.2), with the error reply to give instead when it broke a limit (552 too large,
    500 a line longer than ``line_limit`` octets with its CRLF), known only once it has all been read.

    Read in large pieces, not line by line: ``readuntil`` stops at each ``.<CRLF>``, and one that starts
    a line ends the data; what follows (a pipelined command) stays in the stream. ``activity`` is
    called at each piece (the idle timeout counts from the last data received).
    """
    parts: list[bytes] = []
    size = 0
    error: str | None = None
    tail = b"\r\n"  # the last two octets read: DATA's own line ending, to begin with
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
            before = piece[-5:-3] if len(piece) >= 5 else (tail + piece[:-3])[-2:]
            end = before == b"\r\n"
        except asyncio.LimitOverrunError as exc:  # a piece longer than the reader's limit: take it
            piece, end = await reader.readexactly(exc.consumed), False
        activity()
        tail = piece[-2:] if len(piece) >= 2 else (tail + piece)[-2:]
        if end:
            piece = piece[:-3]
        size += len(piece)
        if error is None and size_limit and size > size_limit:
            error = _TOO_BIG
            parts.clear()
        if error is None:
            parts.append(piece)
        if end:
            break
    if error:
        return b"", error
    data = b"".join(parts)
    if len(data) > line_limit - 2 and max(map(len, data.split(b"\r\n"))) + 2 > line_limit:
        return b"", "500 5.5.2 line too long (RFC 5321 §4.5.3.1.6)"
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n"), None


class SMTPServer(CommandLoop):
    """One connection. ``event_handler`` is a ``mailserver.smtp.handler.Handler`` (one per connection)."""

    session: SMTPSession
    envelope: SMTPEnvelope
    event_handler: Handler

    def __init__(self, handler: Handler, config: ServerConfig) -> None:
        self.config = config
        # aiosmtpd sizes its StreamReader from this attribute: every line read, AUTH's included; each
        # command is then held to its own limit below (DATA's lines to ``line_length`` by read_data).
        self.line_length_limit = max(config.line_length, config.auth_line_length if config.auth else 0)
        self.busy = False
        self.receiving = False  # inside DATA: a stopping server lets the message arrive and be answered
        self.peer_certificate: tuple[bytes, x509.Certificate] | None = None  # (DER, parsed), per connection
        self.tls_trace: tuple[object, str] | None = None  # (SSL object, Received clause), per connection
        self._client_ip = ""
        self.slot: Slot | Refused | None = None
        self._greeted = False
        self.traced: str | None = None
        super().__init__(
            handler,
            data_size_limit=config.message_size or None,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.hostname,
            ident="Caducée ESMTP",
            tls_context=config.starttls,
            require_starttls=config.starttls is not None,
            timeout=config.idle_timeout,
            auth_required=config.auth,
            auth_require_tls=True,
        )
        # Enforced by smtp_AUTH below through ``tls_active``, which also recognises implicit TLS.
        self._auth_require_tls = False
        # aiosmtpd keeps these on the class and grows them at every EHLO; ours are per connection.
        self.command_size_limit = config.line_length
        self.command_size_limits = collections.defaultdict(lambda: config.line_length)
        if config.auth:
            self.command_size_limits["AUTH"] = self.line_length_limit

    # ------------------------------------------------------------------ connection and replies

    def _create_session(self) -> SMTPSession:
        return SMTPSession(self.loop)

    def _create_envelope(self) -> SMTPEnvelope:
        return SMTPEnvelope()

    @property
    def client_ip(self) -> str:
        return self._client_ip

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if peer else ""
            self.slot = self.config.gate.connect(self._client_ip)
            self.config.active.add(self)
            self.config.drained.clear()

    def ended(self) -> None:
        if isinstance(self.slot, Slot):
            self.config.gate.release(self.slot)
        self.config.active.discard(self)
        if not self.config.active:
            self.config.drained.set()

    async def greet(self) -> bool:
        if isinstance(self.slot, Refused):  # RFC 5321 §3.8; audited by the gate, a flood at a bounded cost
            self._greeted = True
            await self.push(f"421 4.7.0 {self.slot.text}")
            self.hang_up()
            return False
        log_event("smtp-connection", service=self.config.service, peer=self.client_ip, tls=self.tls_active)
        return await super().greet()

    def login(self, user: str) -> str | None:
        """Count this connection as ``user``'s at AUTH; the reply instead of 235 when refused (RFC 4954
        §6: 454 4.7.0, a temporary authentication failure)."""
        assert isinstance(self.slot, Slot)
        refused = self.config.gate.login(self.slot, user)
        return None if refused is None else f"454 4.7.0 {refused.text}"

    async def push(self, status: Any) -> None:
        """Every reply but the greeting and EHLO's carries an enhanced status code (RFC 2034), shows
        only printable text (what it quotes of the client's input is escaped), and, when it refuses
        (4xx, 5xx), is put in the audit trail with the command first: the trace exists before the
        client knows. Refusals already traced where they were decided (``recorded``) are not twice."""
        if isinstance(status, str):
            status = "\r\n".join(printable(line) for line in status.split("\r\n"))
            if self._greeted:
                status = with_enhanced_code(status)
            self._greeted = True
            traced, self.traced = self.traced, None
            if status[:1] in "45" and self.request is not None and status != traced:
                await self.event_handler.refused(self, self.request, status)
        await super().push(status)

    def say_goodbye(self) -> None:
        """The server is stopping (RFC 5321 §3.8): 421, then the connection closes."""
        if not self.closing:
            assert self.transport is not None
            self.transport.write(
                f"421 4.3.2 {self.config.hostname} shutting down, try again later\r\n".encode()
            )
        self.hang_up()

    def commanded(self, command: str) -> None:
        self.config.gate.metrics.command(self.config.service, command)

    def replied(self, status: str) -> None:
        self.config.gate.metrics.reply(self.config.service, status)

    def recorded(self, status: str) -> str:
        """``status``, marked as already audited (by authentication or the connection gate)."""
        self.traced = with_enhanced_code(status)
        return status

    # ------------------------------------------------------------------ EHLO, STARTTLS, AUTH

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self.data_size_limit or 0}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
            "CHUNKING",
        ]
        if self.tls_context is not None and not self.tls_active:
            lines.append("STARTTLS")
        if self.config.auth and self.tls_active and not self.session.authenticated:
            lines.append("AUTH " + " ".join(self.mechanisms()))
        text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}"
        await super().push(text)

    def mechanisms(self) -> list[str]:
        """SASL mechanisms offered: tokens only when ``[oauth]`` is set, EXTERNAL only when the client
        presented a certificate (a ``client_cert = "optional"`` listener)."""
        mechanisms = ["PLAIN", "LOGIN"]
        if self.event_handler.rt.auth.tokens_enabled:
            mechanisms += ["OAUTHBEARER", "XOAUTH2"]
        if self.ssl_object is not None and self.ssl_object.getpeercert(binary_form=True):
            mechanisms.append("EXTERNAL")
        return mechanisms

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.tls_active:
            await self.push("503 5.5.1 TLS already active")
            return
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as exc:  # the command loop then closes the connection
            rt = self.event_handler.rt
            await handshakes.report(rt, self.config.service, self.client_ip, exc.__cause__ or exc)
            raise

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.config.auth:
            await self.push("502 5.5.1 AUTH not available here")
            return
        if not self.tls_active:
            await self.push("538 5.7.11 encryption required: use STARTTLS first")
            return
        await super().smtp_AUTH(arg)

    # ------------------------------------------------------------------ envelope: MAIL, RCPT, RSET

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        if self.envelope.mail_seen:
            await self.push("503 5.5.1 nested MAIL command")
            return
        try:
            address, params_text = parse_path(arg, "FROM:")
            check_sender(address)
            params = parse_params(params_text)
            if params and not self.session.extended_smtp:
                raise Refusal(501, "5.5.4", "parameters need EHLO")
            options = mail_options(params, self.data_size_limit or 0)
            await self.event_handler.mail(self, address, options)
        except Refusal as refusal:
            await self.push(refusal.smtp)
            return
        self.envelope.mail_seen = True
        self.envelope.mail_from = address
        self.envelope.options = options
        self.envelope.smtp_utf8 = options.smtputf8
        await self.push(f"250 2.1.0 <{address}> sender ok")

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        if not self.envelope.mail_seen:
            await self.push("503 5.5.1 need MAIL command")
            return
        try:
            if len(self.envelope.recipients) >= self.config.recipients_per_message:
                raise Refusal(452, "4.5.3", "too many recipients for one message")
            address, params_text = parse_path(arg, "TO:")
            check_recipient(address)
            params = parse_params(params_text)
            if params and not self.session.extended_smtp:
                raise Refusal(501, "5.5.4", "parameters need EHLO")
            notify, orcpt = rcpt_options(params)
            target = await self.event_handler.rcpt(self, address, self.envelope.options)
        except Refusal as refusal:
            await self.push(refusal.smtp)
            return
        self.envelope.rcpt_tos.append(target.address)
        self.envelope.recipients.append(Recipient(target.address, target, notify, orcpt))
        await self.push(f"250 2.1.5 <{target.address}> recipient ok")

    # ------------------------------------------------------------------ content: DATA, BDAT

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if self.envelope.chunks is not None:
            await self.push("503 5.5.1 DATA cannot follow BDAT in one transaction")
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.receiving = True
        try:
            data, error = await read_data(
                self._reader, self.data_size_limit or 0, self.config.line_length, self._reset_timeout
            )
            status = error or await self.event_handler.message(self, data)
        except asyncio.IncompleteReadError:  # the client went away in the middle of its message
            self.hang_up()
            return
        finally:
            self.receiving = False
        self._set_post_data_state()
        await self.push(status)
        if self.config.stopping:
            self.say_goodbye()

    async def _discard(self, size: int) -> None:
        while size > 0:
            chunk = await self._reader.readexactly(min(size, 1 << 16))
            size -= len(chunk)

    async def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030: the chunk is always read (even when refused) so the stream stays in step."""
        m = _BDAT.fullmatch((arg or "").strip())
        if m is None:
            await self.push("501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing, the stream is out of step")
            self.hang_up()
            return
        size, last = int(m.group(1)), m.group(2) is not None
        env = self.envelope
        total = len(env.chunks or b"") + size
        error = None
        if not self.session.host_name:
            error = "503 5.5.1 send EHLO first"
        elif self._auth_required and not self.session.authenticated:
            error = "530 5.7.0 authentication required"
        elif not env.rcpt_tos:
            error = "503 5.5.1 need RCPT command"
        elif env.bdat_error:
            error = env.bdat_error
        elif self.data_size_limit and total > self.data_size_limit:
            error = env.bdat_error = _TOO_BIG
        try:
            if error:
                env.chunks = None
                await self._discard(size)
            else:
                chunk = await self._reader.readexactly(size)
                if env.chunks is None:
                    env.chunks = bytearray()
                env.chunks += chunk
        except asyncio.IncompleteReadError:
            self.hang_up()
            return
        self._reset_timeout()
        if error:
            if last and env.mail_seen:
                self._set_post_data_state()
            await self.push(error)
            return
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        data = bytes(env.chunks or b"")
        status = await self.event_handler.message(self, data)
        self._set_post_data_state()
        await self.push(status)
