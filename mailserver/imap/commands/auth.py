"""Any-state and not-authenticated commands (RFC 9051 §6.1, §6.2): CAPABILITY, NOOP, LOGOUT, ID,
STARTTLS, AUTHENTICATE with SASL-IR (RFC 4959): PLAIN (RFC 4616), OAUTHBEARER (RFC 7628) and XOAUTH2
when ``[oauth]`` is configured, EXTERNAL (RFC 4422 appendix A) with a client certificate; LOGIN,
ENABLE (RFC 5161).

Passwords are only accepted over TLS (RFC 9051 §6.2.3 LOGINDISABLED, §11.1); lock-out and the
audit trail of logins live in ``rt.auth``, shared with SMTP AUTH and the portal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mailserver import handshakes, sasl
from mailserver.auth import AuthOutcome
from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.protocol import AuthCancel, AuthResponse, ReceiverMode
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import Authenticate, Enable, Id, Login

if TYPE_CHECKING:
    from mailserver.imap.session import Session

log = logging.getLogger("caducee.imap")

_SERVER_ID = {"name": "Caducee", "vendor": "Caducee", "support-url": "https://mssante.fr"}
# RFC 5161 §4 / RFC 9051 §6.3.1: what ENABLE can turn on, with the spelling we answer in ENABLED.
_ENABLEABLE = {
    "IMAP4REV2": "IMAP4rev2",
    "UTF8=ACCEPT": "UTF8=ACCEPT",
    "CONDSTORE": "CONDSTORE",
    "QRESYNC": "QRESYNC",
}


@command("CAPABILITY", State.ANY)
async def capability(s: Session, tag: str, cmd: object) -> Done:
    s.send(enc.capability(s.capabilities()))
    return Done("CAPABILITY completed")


@command("NOOP", State.ANY)
async def noop(s: Session, tag: str, cmd: object) -> Done:
    """RFC 9051 §6.1.2: the polling command, so always ask the store (not only when notified)."""
    s.dirty = s.selected is not None
    return Done("NOOP completed")


@command("LOGOUT", State.ANY)
async def logout(s: Session, tag: str, cmd: object) -> Done:
    s.send(enc.status_response(None, "BYE", "Caducee IMAP server logging out"))
    s.logout = True
    return Done("LOGOUT completed")


@command("ID", State.ANY, ("ID",))
async def id_(s: Session, tag: str, cmd: Id) -> Done:
    """RFC 2971: log what the client says it is, answer who we are."""
    if cmd.params:
        log.info("IMAP client %s: %s", s.remote, dict(cmd.params))
    s.send(enc.id_response(_SERVER_ID))
    return Done("ID completed")


@command("STARTTLS", State.NOT_AUTHENTICATED)
async def starttls(s: Session, tag: str, cmd: object) -> Done:
    """RFC 9051 §6.2.1. Bytes pipelined after STARTTLS are dropped (plaintext injection, RFC 3207 §6)."""
    if s.tls or s.server.tls_context is None:
        raise Fail("BAD", "TLS already active")
    s.rt.metrics.reply(s.service, "OK")  # the one completion sent outside ``Session.dispatch``
    s.send(enc.tagged(tag, "OK", "begin TLS negotiation now"))
    await s.flush()
    loop = asyncio.get_running_loop()
    assert s.transport is not None
    # No await between dropping the plaintext buffer and handing the socket to TLS: nothing sent in
    # clear after the command can reach the new Receiver, while the first encrypted command can.
    s.receiver = s.new_receiver()
    try:
        s.transport = await loop.start_tls(s.transport, s, s.server.tls_context, server_side=True)  # type: ignore[assignment]
    except OSError as exc:  # ssl.SSLError, a reset or the handshake timeout: the session ends
        await handshakes.report(s.rt, s.service, s.remote, exc)
        raise
    s.tls = True
    return Done(status="")


async def _login(s: Session, username: str, password: str) -> Done:
    return _conclude(s, await s.rt.auth.authenticate(username, password, s.remote, "imap"))


def _conclude(s: Session, outcome: AuthOutcome) -> Done:
    """The reply to any mechanism's outcome (RFC 5530 response codes)."""
    if not outcome.ok:
        if outcome.reason == "locked":
            raise Fail("NO", "too many failures, try again later", "UNAVAILABLE")
        if outcome.reason == "unavailable":
            raise Fail("NO", "identity provider unavailable, try again later", "UNAVAILABLE")
        if outcome.reason == "disabled":
            raise Fail("NO", "account disabled", "CONTACTADMIN")
        raise Fail("NO", "authentication failed", "AUTHENTICATIONFAILED")
    assert outcome.mailbox_id is not None and outcome.address is not None
    refused = s.server.admit_user(s, outcome.address)
    if refused is not None:
        raise Fail("NO", refused.text, "LIMIT")  # RFC 5530 §3
    s.authenticated(outcome.mailbox_id, outcome.address, outcome.members, outcome.person_address)
    return Done("authenticated", enc.Code.capability(s.capabilities()))


@command("LOGIN", State.NOT_AUTHENTICATED)
async def login(s: Session, tag: str, cmd: Login) -> Done:
    if not s.tls:
        raise Fail("NO", "use STARTTLS first", "PRIVACYREQUIRED")
    return await _login(s, cmd.username, cmd.password)


def _plain(data: bytes) -> tuple[str, str]:
    """RFC 4616 §2: ``authzid NUL authcid NUL passwd``; we do not support proxy authorisation."""
    parts = data.split(b"\x00")
    if len(parts) != 3:
        raise Fail("BAD", "malformed PLAIN response")
    try:
        authzid, authcid, passwd = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise Fail("BAD", "PLAIN response is not UTF-8") from None
    if authzid and authzid.lower() != authcid.lower():
        raise Fail("NO", "authorization identity must be empty", "AUTHORIZATIONFAILED")
    return authcid, passwd


async def _sasl_response(s: Session, tag: str, challenge: bytes = b"") -> bytes:
    """The client's answer to a challenge (``+ base64``), or Fail when it cancels or goes away."""
    s.send(enc.continuation(data=challenge))
    await s.flush()
    s.receiver.set_mode(ReceiverMode.AUTHENTICATE, tag)
    event = await s.read_event(s.rt.settings.limits.imap_command_timeout)
    if isinstance(event, AuthResponse):
        s.receiver.set_mode(ReceiverMode.COMMAND)
    if event is None:
        s.logout = True
        raise Fail("BAD", "no SASL response")
    if isinstance(event, AuthCancel):
        raise Fail("BAD", "authentication cancelled")
    if not isinstance(event, AuthResponse):
        raise Fail("BAD", "invalid SASL response")
    return event.data


@command("AUTHENTICATE", State.NOT_AUTHENTICATED, ("SASL-IR",))
async def authenticate(s: Session, tag: str, cmd: Authenticate) -> Done:
    mechanism = cmd.mechanism.upper()
    if mechanism not in s.mechanisms():
        raise Fail("NO", "unsupported mechanism", "CANNOT")
    if not s.tls:
        raise Fail("NO", "use STARTTLS first", "PRIVACYREQUIRED")
    data = cmd.initial_response
    if data is None:
        data = await _sasl_response(s, tag)
    if mechanism in sasl.BEARER_MECHANISMS:
        return await _bearer(s, tag, mechanism, data)
    if mechanism == "EXTERNAL":
        try:
            authzid = sasl.parse_external(data)
        except sasl.SASLError as exc:
            raise Fail("BAD", str(exc)) from None
        outcome = await s.rt.auth.authenticate_certificate(s.peer_certificate(), authzid, s.remote, "imap")
        return _conclude(s, outcome)
    username, password = _plain(data)
    return await _login(s, username, password)


async def _bearer(s: Session, tag: str, mechanism: str, data: bytes) -> Done:
    try:
        bearer = sasl.parse_bearer(mechanism, data)
    except sasl.SASLError as exc:
        raise Fail("BAD", str(exc)) from None
    outcome = await s.rt.auth.authenticate_token(bearer.token, bearer.authzid, s.remote, "imap", mechanism)
    if not outcome.ok and outcome.reason == "invalid":
        # RFC 7628 §3.2.2: the error as a challenge; the client's dummy response; then NO.
        await _sasl_response(s, tag, sasl.bearer_challenge(mechanism, s.rt.settings.oauth))
    return _conclude(s, outcome)


@command("ENABLE", State.AUTHENTICATED, ("ENABLE",))
async def enable(s: Session, tag: str, cmd: Enable) -> Done:
    """RFC 5161: unknown names are ignored; ENABLED lists only what this command turned on."""
    wanted = [c.upper() for c in cmd.capabilities if c.upper() in _ENABLEABLE]
    new = s.enable(*wanted)
    s.send(enc.enabled(_ENABLEABLE[c] for c in new if c in _ENABLEABLE))
    return Done("ENABLE completed")
