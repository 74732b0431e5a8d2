"""Submission (RFC 6409) for our users: AUTH inside TLS, then send as oneself (or a granted ORG mailbox).

AUTH PLAIN (RFC 4616) and LOGIN are async ``@auth_mechanism`` methods: aiosmtpd's ``authenticator``
callback is synchronous (an async one reports success without authenticating), so the check, which
hashes a password off the event loop, is awaited here. Failures always answer (``handled=False``).
OAUTHBEARER (RFC 7628) and XOAUTH2 when ``[oauth]`` is configured, EXTERNAL (RFC 4422 appendix A)
with a client certificate on a ``client_cert = "optional"`` listener; ``mailserver.sasl`` parses,
``rt.auth`` decides, for every mechanism.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils

from aiosmtpd.smtp import MISSING, AuthResult, auth_mechanism

from directory.patients import display_address
from mailserver import accounts, conversations, large_files, quota, sasl, sent
from mailserver.auth import AuthOutcome
from mailserver.delivery import DeliveryResult
from mailserver.headers import HeaderView, has_field, replace_field
from mailserver.policy import LocalTarget, Refusal, RemoteTarget, route_recipient
from mailserver.runtime import Runtime
from mailserver.smtp.handler import Handler, peer_certificate
from mailserver.smtp.server import MailOptions, SMTPServer
from smime import service as smime_service


def _decode(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _refused(message: str) -> AuthResult:
    return AuthResult(success=False, handled=False, message=message)


class SubmissionHandler(Handler):
    service = "submission"

    def actor(self, server: SMTPServer) -> str:
        return server.session.username or f"client:{server.client_ip}"

    async def _result(self, server: SMTPServer, username: bytes, password: bytes) -> AuthResult:
        try:
            user, secret = username.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False, message="501 5.5.2 credentials must be UTF-8")
        # Every outcome from here on is audited by authentication or by the connection gate.
        outcome: AuthOutcome = await self.rt.auth.authenticate(user, secret, server.client_ip, "smtp")
        return self._conclude(server, outcome)

    def _conclude(self, server: SMTPServer, outcome: AuthOutcome) -> AuthResult:
        """The reply to any mechanism's outcome (RFC 4954 §6)."""
        if outcome.ok and outcome.address is not None:
            refused = server.login(outcome.address)
            if refused is not None:
                return AuthResult(success=False, handled=False, message=server.recorded(refused))
            server.session.mailbox_id = outcome.mailbox_id
            server.session.username = outcome.address
            server.session.members = outcome.members
            server.session.person_address = outcome.person_address
            return AuthResult(success=True, auth_data=outcome.address)
        if outcome.reason == "locked":
            message = "454 4.7.0 too many failed attempts, try again later"
        elif outcome.reason == "unavailable":
            message = "454 4.7.0 temporary authentication failure, try again later"
        else:
            message = "535 5.7.8 authentication credentials invalid"
        return AuthResult(success=False, handled=False, message=server.recorded(message))

    async def _response(self, server: SMTPServer, args: list[str]) -> bytes | AuthResult:
        """The client's first SASL message: the initial response (``=`` is empty) or the answer to an
        empty challenge; an AuthResult to return at once when it cannot be had."""
        if len(args) == 1:
            raw = await server.challenge_auth("")
            if raw is MISSING:
                return AuthResult(success=False, handled=True)
            assert isinstance(raw, bytes)
            return raw
        if args[1] == "=":
            return b""
        decoded = _decode(args[1])
        if decoded is None:
            return AuthResult(success=False, handled=False, message="501 5.5.2 cannot decode base64")
        return decoded

    async def _bearer(self, server: SMTPServer, mechanism: str, args: list[str]) -> AuthResult:
        if not self.rt.auth.tokens_enabled:
            return _refused("504 5.5.4 unrecognized authentication type")
        raw = await self._response(server, args)
        if isinstance(raw, AuthResult):
            return raw
        try:
            bearer = sasl.parse_bearer(mechanism, raw)
        except sasl.SASLError as exc:
            return AuthResult(success=False, handled=False, message=f"501 5.5.2 {exc}")
        outcome = await self.rt.auth.authenticate_token(
            bearer.token, bearer.authzid, server.client_ip, "smtp", mechanism
        )
        if outcome.ok or outcome.reason != "invalid":
            return self._conclude(server, outcome)
        # RFC 7628 §3.2.2: the error as a challenge, the client's dummy response, then 535 5.7.8.
        dummy = await server.challenge_auth(sasl.bearer_challenge(mechanism, self.rt.settings.oauth))
        if dummy is MISSING:
            return AuthResult(success=False, handled=True)
        return self._conclude(server, outcome)

    @auth_mechanism("OAUTHBEARER")
    async def auth_OAUTHBEARER(self, server: SMTPServer, args: list[str]) -> AuthResult:
        return await self._bearer(server, "OAUTHBEARER", args)

    @auth_mechanism("XOAUTH2")
    async def auth_XOAUTH2(self, server: SMTPServer, args: list[str]) -> AuthResult:
        return await self._bearer(server, "XOAUTH2", args)

    @auth_mechanism("EXTERNAL")
    async def auth_EXTERNAL(self, server: SMTPServer, args: list[str]) -> AuthResult:
        cert = peer_certificate(server)
        if cert is None:
            return _refused("504 5.5.4 no client certificate presented")
        raw = await self._response(server, args)
        if isinstance(raw, AuthResult):
            return raw
        try:
            authzid = sasl.parse_external(raw)
        except sasl.SASLError as exc:
            return AuthResult(success=False, handled=False, message=f"501 5.5.2 {exc}")
        assert server.peer_certificate is not None
        outcome = await self.rt.auth.authenticate_certificate(
            server.peer_certificate[0], authzid, server.client_ip, "smtp"
        )
        return self._conclude(server, outcome)

    @auth_mechanism("PLAIN")
    async def auth_PLAIN(self, server: SMTPServer, args: list[str]) -> AuthResult:
        if len(args) == 1:
            raw = await server.challenge_auth("")
            if raw is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            raw = _decode(args[1])
            if raw is None:
                return AuthResult(success=False, handled=False, message="501 5.5.2 cannot decode base64")
        assert isinstance(raw, bytes)
        fields = raw.split(b"\x00")
        if len(fields) != 3:
            return AuthResult(success=False, handled=False, message="501 5.5.2 malformed PLAIN response")
        authzid, authcid, password = fields
        if authzid and authzid != authcid:
            return AuthResult(success=False, handled=False, message="535 5.7.8 proxy authorisation refused")
        return await self._result(server, authcid, password)

    @auth_mechanism("LOGIN")
    async def auth_LOGIN(self, server: SMTPServer, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
        else:
            login = _decode(args[1])
            if login is None:
                return AuthResult(success=False, handled=False, message="501 5.5.2 cannot decode base64")
        if login is MISSING:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._result(server, login, password)

    async def mail(self, server: SMTPServer, address: str, options: MailOptions) -> None:
        mailbox_id = server.session.mailbox_id
        if not server.session.authenticated or mailbox_id is None:
            raise Refusal(530, "5.7.0", "authentication required")
        if not address:
            raise Refusal(550, "5.7.1", "a null sender is not accepted from mail clients")
        members = server.session.members
        if members and not await self.rt.auth.still_member(mailbox_id, members):
            raise Refusal(530, "5.7.0", "no longer a member of this mailbox: authenticate again")
        if not await accounts.may_send_as(self.rt, mailbox_id, address):
            raise Refusal(550, "5.7.1", f"<{address}>: not an address {server.session.username} may send as")

    async def rcpt(
        self, server: SMTPServer, address: str, options: MailOptions
    ) -> LocalTarget | RemoteTarget:
        return await check_recipient(self.rt, server.envelope.mail_from or "", address, options.size)

    async def check_header(self, server: SMTPServer, headers: HeaderView) -> None:
        """From and Sender must be addresses the user may send as, as MAIL FROM must (RFC 6409 §6.1, §8)."""
        assert server.session.mailbox_id is not None  # ``mail`` refused the unauthenticated
        await accounts.check_authors(
            self.rt, server.session.mailbox_id, server.session.username or "", headers
        )

    def involves_patients(self, server: SMTPServer) -> bool:
        """A patient may submit too (with a password set on the portal): always apply the rules."""
        return True

    async def prepare(self, server: SMTPServer, data: bytes) -> bytes:
        env = server.envelope
        sender = env.mail_from or ""
        own = sender.lower() == (server.session.username or "").lower()
        sender_id = server.session.mailbox_id if own else None
        data = await complete_message(self.rt, sender, data)
        if server.session.mailbox_id is not None and all(
            isinstance(r.target, LocalTarget) for r in env.recipients
        ):  # attachments above [large_files] threshold are kept here and sent by link
            try:
                data, _files = await large_files.rewrite(
                    self.rt, server.session.mailbox_id, data, [r.address for r in env.recipients]
                )
            except quota.OverQuota:
                raise Refusal(552, "5.2.2", "your storage quota cannot hold this large attachment") from None
        env.sent_copy = data  # the sender's own copy stays readable by them (not encrypted to others)
        return await sign_message(
            self.rt,
            sender,
            sender_id,
            data,
            [r.address for r in env.recipients],
        )

    async def accepted(self, server: SMTPServer, result: DeliveryResult, reply: str) -> None:
        """Before the 250: the sent copies (``[submission] save_sent``), then the audit of the send."""
        env = server.envelope
        saving = self.rt.settings.submission.save_sent and env.sent_copy is not None
        if saving and env.sent_copy is not None and server.session.mailbox_id is not None:
            owners = await sent.copy_owners(
                self.rt, server.session.mailbox_id, env.mail_from or "", env.sent_copy
            )
            await sent.save_copies(self.rt, owners, env.sent_copy)
        person = server.session.person_address  # a session a membership opened: the person sends
        await self.rt.audit.record(
            person or self.actor(server),
            "send",
            server.client_ip,
            f"from <{env.mail_from}> to "
            + ", ".join(f"<{r.address}>" for r in env.recipients)
            + accounts.acting_as(person or server.session.username, env.mail_from),
            reply,
        )


async def check_recipient(
    rt: Runtime, sender: str, address: str, size: int | None
) -> LocalTarget | RemoteTarget:
    """Where a submitted recipient goes, or the Refusal: trust space, mailbox state and quota, patient
    conversations, S/MIME readiness; the same for SMTP submission and the sending API."""
    async with rt.db.read() as session:
        target = await route_recipient(
            session, address, authenticated=True, size=size, defaults=rt.store.default_limits
        )
        await conversations.check_message(session, sender, [address], None)
    if rt.settings.smime.encrypt == "required":
        await smime_service.check_recipient(rt, target.address)
    return target


async def complete_message(rt: Runtime, sender: str, data: bytes) -> bytes:
    """Complete Date and Message-ID and show a patient's name in From: what the sender keeps as sent."""
    # RFC 6409 §8.2-8.3: the MSA completes what a client left out; threads and conversations need both.
    if not has_field(data, "Message-ID"):
        data = replace_field(data, "Message-ID", email.utils.make_msgid(domain=rt.settings.server.hostname))
    if not has_field(data, "Date"):
        data = replace_field(data, "Date", email.utils.format_datetime(dt.datetime.now(dt.UTC)))
    async with rt.db.read() as session:
        patient = await display_address(session, sender)
    if patient is not None:
        # Professionals see who writes, not a bare INS (directory issue: "DUPONT Marie (patiente)").
        data = replace_field(data, "From", patient)
    return data


async def sign_message(
    rt: Runtime, sender: str, sender_id: int | None, data: bytes, recipients: list[str]
) -> bytes:
    """Sign (and encrypt) per ``[smime]`` as the mailbox named in MAIL FROM (RFC 8551); ``sender_id``
    when already known."""
    if sender_id is None:
        found = await accounts.find_mailbox(rt, sender)
        sender_id = found.id if found else None
    return await smime_service.prepare_for_sending(rt, sender_id, data, recipients)
