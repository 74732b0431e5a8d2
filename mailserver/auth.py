"""Authentication: the one entry point every protocol (SMTP AUTH, IMAP LOGIN/AUTHENTICATE, portal,
LDAP bind) calls, so lock-out, application passwords and the audit trail behave the same everywhere.

- Passwords are argon2id hashes; verification runs in a thread, never on the event loop.
- An account is locked after ``auth.max_failures`` failures within ``auth.failure_window``, and a client
  address after ``auth.max_failures_per_ip``, for ``auth.lockout``; counters live in the database so
  every node shares them.
- An attempt takes its place in both counters *before* the password is verified, in one brief write
  transaction (row-locked on PostgreSQL, serialised by SQLite's write lock), and a success gives it
  back: however many guesses arrive at once, on however many nodes, at most ``max_failures`` of them
  are verified (a check before and a count after let a whole burst through). At most
  ``auth.concurrent_verifications`` attempts per process hold places at once; the others queue before
  taking theirs, so a crowd of right passwords from one address does not look like a burst of guesses.
- An unknown account costs the same hash verification as a known one (no user enumeration by timing).
- Per-device application passwords are accepted wherever the main password is, and can be revoked alone.
- Bearer tokens (``mailserver.oauth``) and client certificates (``mailserver.certauth``) go through the
  same ``_login``: the same counters, the per-mailbox allowed methods (``allows``), and one audit event
  naming the method and the person (national identifier, certificate subject).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import argon2
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from config.settings import AuthSettings, OAuthSettings
from mailserver import certauth
from mailserver.audit import Audit
from mailserver.certauth import CertificateError, ClientCertificates
from mailserver.credential_cache import CredentialCache
from mailserver.db.engine import Database, run_core
from mailserver.db.models import (
    READ_RIGHT,
    SHARED_TYPES,
    AppPassword,
    AuthFailure,
    Mailbox,
    MailboxCert,
    Membership,
    utcnow,
)
from mailserver.metrics import UNSCRAPED, Metrics
from mailserver.oauth import TokenError, TokenIdentity, TokenValidator
from mailserver.revocation import RevocationChecker
from mailserver.store import queries

LOGIN_STAMP_PERIOD = dt.timedelta(hours=1)  # last_login_at precision: inactivity is counted in months


@dataclass(frozen=True)
class AuthOutcome:
    """Success carries the mailbox; a failure carries ``reason``: ``invalid``, ``locked``, ``disabled``."""

    mailbox_id: int | None
    address: str | None
    reason: str = ""  # or "unavailable": the identity provider could not be asked
    method: str = ""  # one of METHODS
    person: str = ""  # the address, the national identifier or the certificate subject
    # A shared mailbox opened by a member: their own mailboxes, whose membership the session rechecks,
    # and the first one's address, the actor the audit names for what they do there.
    members: tuple[int, ...] = ()
    person_address: str = ""

    @property
    def ok(self) -> bool:
        return self.mailbox_id is not None


@dataclass(frozen=True)
class Credential:
    """The secret that matched: the mailbox's own password (``app_id`` None) or one application
    password, named as the audit trail shows it."""

    app_id: int | None = None
    label: str = ""

    def __str__(self) -> str:
        return "password" if self.app_id is None else f'application password "{self.label}"'


MAIN_PASSWORD = Credential()


class Passwords:
    """argon2id hashing with the configured cost (measured on this hardware, see README)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.hasher = argon2.PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=argon2.Type.ID,
        )
        self._dummy = self.hasher.hash(secrets.token_hex(16))

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, hashed: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(hashed or self._dummy, password) and hashed is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    async def hash_async(self, password: str) -> str:
        return await asyncio.to_thread(self.hash, password)


def generate_app_password() -> str:
    """Four groups of four lower-case letters: easy to type on a phone, ~75 bits of entropy."""
    return "-".join("".join(secrets.choice(string.ascii_lowercase) for _ in range(4)) for _ in range(4))


class Authenticator:
    def __init__(
        self,
        db: Database,
        settings: AuthSettings,
        audit: Audit,
        passwords: Passwords | None = None,
        oauth: OAuthSettings | None = None,
        client_ca: str = "",
        metrics: Metrics = UNSCRAPED,
        revocation: RevocationChecker | None = None,
        patients_through_portal: bool = False,
    ) -> None:
        self.db = db
        self.patients_through_portal = patients_through_portal
        self.metrics = metrics
        self.settings = settings
        self.audit = audit
        self.passwords = passwords or Passwords(settings)
        self.tokens = TokenValidator(oauth) if oauth is not None and oauth.enabled else None
        self.certificates = ClientCertificates(revocation) if client_ca and revocation is not None else None
        self._turn = asyncio.Condition()
        self._holding = 0  # attempts of this process holding places in the counters
        self.cache = CredentialCache(settings.credential_cache_ttl, settings.credential_cache_size)

    def refusal(self, mb: Mailbox, method: str, service: str) -> str | None:
        """Why ``mb`` may not log in by ``method`` on ``service``, or None: the mailbox's allowed
        methods (``allows``), and a patient's second factor: when the portal asks one
        (``[portal] second_factor``), a patient's password opens only the portal, never IMAP,
        submission or the API, which would read their health data with the password alone."""
        if not allows(mb, method):
            return f"{method} not allowed for this mailbox"
        if mb.type == "PAT" and self.patients_through_portal and service not in PORTAL_SERVICES:
            return PORTAL_ONLY
        return None

    @contextlib.asynccontextmanager
    async def _taking_turns(self) -> AsyncIterator[None]:
        """At most ``auth.concurrent_verifications`` attempts of this process hold places in the
        counters at a time; the others wait here, before taking one. A place is held until the
        verification ends, so attempts waiting for a verification thread would otherwise fill the
        counters: a hospital's clients logging in together from its one address, several as the same
        clinician, would be refused as locked. argon2 needs the CPU and memory anyway."""
        async with self._turn:
            await self._turn.wait_for(lambda: self._holding < self.settings.concurrent_verifications)
            self._holding += 1
        try:
            yield
        finally:
            async with self._turn:
                self._holding -= 1
                self._turn.notify()

    def _reserve(self, session: Session, limits: dict[str, int], refusal: tuple[str, ...]) -> bool:
        """Take one place in each counter of ``limits`` (key → limit), or none when one is full or
        locked, then record ``refusal`` (the audit event) in the same transaction. A counter whose
        lock-out is over, or whose window passed without one, starts again. Reaching the limit starts
        the lock-out at once: attempts still being verified hold their places meanwhile."""
        now = utcnow()
        keys = sorted(limits)  # one locking order everywhere: no deadlock between two attempts
        insert = (postgresql if self.db.kind == "postgresql" else sqlite).insert(AuthFailure)
        session.execute(
            insert.values(
                [{"key": k, "count": 0, "window_start": now} for k in keys]
            ).on_conflict_do_nothing()
        )
        rows = list(
            session.execute(
                select(AuthFailure)
                .where(AuthFailure.key.in_(keys))
                .order_by(AuthFailure.key)
                .with_for_update()
            ).scalars()
        )
        window = dt.timedelta(seconds=self.settings.failure_window)
        for row in rows:
            served = row.locked_until is not None and row.locked_until <= now
            if served or (row.locked_until is None and now - row.window_start > window):
                row.count, row.window_start, row.locked_until = 0, now, None
        if any(r.count >= limits[r.key] or r.locked_until is not None for r in rows):
            self.audit.record_in(session, *refusal)
            return False
        for row in rows:
            row.count += 1
            if row.count >= limits[row.key]:
                row.locked_until = now + dt.timedelta(seconds=self.settings.lockout)
        return True

    def _give_back(
        self,
        session: Session,
        account_key: str,
        ip_key: str,
        credential: Credential | None,
        event: tuple[str, ...],
        login: Mailbox | None = None,
    ) -> None:
        """The password was right: the account's counter is cleared, the address gives back the place
        this attempt took (its earlier failures still count), the application password used is stamped,
        ``login``'s last login too (at most hourly: a busy mailbox's row is not written at every
        connection) and ``event`` is audited, all in one transaction."""
        now = utcnow()
        if login is not None and (
            login.last_login_at is None
            or login.inactive_notice_at is not None
            or now - login.last_login_at >= LOGIN_STAMP_PERIOD
        ):
            session.execute(
                update(Mailbox)
                .where(Mailbox.id == login.id)
                .values(last_login_at=now, inactive_notice_at=None)
            )
        ip = session.get(AuthFailure, ip_key, with_for_update=True)
        if ip is not None:
            ip.count = max(ip.count - 1, 0)
            if ip.count < self.settings.max_failures_per_ip:
                ip.locked_until = None
        session.execute(delete(AuthFailure).where(AuthFailure.key == account_key))
        if credential is not None and credential.app_id is not None:
            app = session.get(AppPassword, credential.app_id)
            if app is not None:
                app.last_used_at = utcnow()
        self.audit.record_in(session, *event)

    # ------------------------------------------------------------------ the one login path

    async def _login(
        self,
        named: str | None,
        remote: str,
        service: str,
        method: str,
        verify: Callable[[], Awaitable[Verdict]],
    ) -> AuthOutcome:
        """``_judge``, counted by method (the one that succeeded, else the one tried) and result."""
        outcome = await self._judge(named, remote, service, verify)
        self.metrics.login(outcome.method or method, "ok" if outcome.ok else outcome.reason)
        return outcome

    async def _judge(
        self, named: str | None, remote: str, service: str, verify: Callable[[], Awaitable[Verdict]]
    ) -> AuthOutcome:
        """Every method's login: a place in the lock-out counters (the named account's, when the
        client names one, and the address's) before ``verify`` runs, then the mailbox's state and its
        allowed methods (``allows``), then the audit event naming the method and the person."""
        ip_key = f"ip:{remote}"
        limits = {ip_key: self.settings.max_failures_per_ip}
        if named:
            limits[f"mailbox:{named}"] = self.settings.max_failures
        actor = named or f"client:{remote}"
        request = f"{service} login"
        locked = (actor, "login-failure", remote, request, "locked")
        if not await self.db.run_write(lambda s: self._reserve(s, limits, locked), brief=True):
            if named:
                self.cache.forget(named)
            return AuthOutcome(None, None, "locked")
        verdict = await verify()
        mb = verdict.mailbox
        if mb is None or verdict.reason:
            who = mb.address if mb is not None else actor
            event = (who, "login-failure", remote, f"{request} ({verdict.detail})", verdict.reason)
            if verdict.temporary:  # the provider is down: not the client's failure
                await self.db.run_write(lambda s: self._refund(s, list(limits), event), brief=True)
                return AuthOutcome(None, None, "unavailable")
            await self.audit.record(*event)  # the place taken stays, as this failure
            return AuthOutcome(None, None, "invalid")
        account_key = f"mailbox:{mb.address}"
        if not mb.enabled:
            event = (mb.address, "login-failure", remote, f"{request} ({verdict.detail})", "mailbox disabled")
            await self.db.run_write(
                lambda s: self._give_back(s, account_key, ip_key, None, event), brief=True
            )
            return AuthOutcome(None, None, "disabled")
        why = self.refusal(mb, verdict.method, service)
        if why:  # same reply as a wrong secret: no oracle
            event = (mb.address, "login-failure", remote, f"{request} ({verdict.detail})", why)
            if why == PORTAL_ONLY:  # the right password: a patient's mail client must not lock them out
                await self.db.run_write(
                    lambda s: self._give_back(s, account_key, ip_key, None, event), brief=True
                )
            else:  # counts as one failure
                await self.audit.record(*event)
            return AuthOutcome(None, None, "invalid")
        event = (mb.address, "login", remote, f"{request} ({verdict.detail})", "ok")
        credential = Credential(verdict.app_id, "") if verdict.app_id is not None else None
        await self.db.run_write(
            lambda s: self._give_back(s, account_key, ip_key, credential, event, mb), brief=True
        )
        return AuthOutcome(
            mb.id,
            mb.address,
            method=verdict.method,
            person=verdict.person,
            members=verdict.members,
            person_address=verdict.person_address,
        )

    async def attempt(self, address: str, remote: str, request: str) -> bool:
        """Before a secret other than a password is checked for ``address`` (a portal activation code):
        a place in the same counters as a login, the account's and the client address's, so wrong ones
        lock out as ``max_failures`` wrong passwords do. False, audited as a ``login-failure``
        answered ``locked``, while either is locked: the secret is then not even looked at. A wrong
        secret keeps its place (one failure); ``succeeded`` gives it back."""
        address = address.lower()
        limits = {
            f"ip:{remote}": self.settings.max_failures_per_ip,
            f"mailbox:{address}": self.settings.max_failures,
        }
        locked = (address, "login-failure", remote, request, "locked")
        return bool(await self.db.run_write(lambda s: self._reserve(s, limits, locked), brief=True))

    async def succeeded(self, address: str, remote: str, event: tuple[str, ...]) -> None:
        """The secret of an ``attempt`` was right: the counters as after a successful login, and
        ``event`` audited in the same transaction."""
        account_key, ip_key = f"mailbox:{address.lower()}", f"ip:{remote}"
        await self.db.run_write(lambda s: self._give_back(s, account_key, ip_key, None, event), brief=True)

    async def is_locked(self, address: str) -> bool:
        """Whether ``address``'s account is locked out now (by failed passwords or second factors)."""
        async with self.db.read() as session:
            row = await session.get(AuthFailure, f"mailbox:{address.lower()}")
        return row is not None and row.locked_until is not None and row.locked_until > utcnow()

    async def lock(self, address: str, remote: str, request: str, reason: str) -> None:
        """Lock ``address``'s account for ``auth.lockout`` now, as ``max_failures`` failed passwords
        would (a second factor's tries are spent): the same counters refuse its next logins on every
        node. Audited as a ``login-failure`` answered ``locked``."""
        key = f"mailbox:{address.lower()}"
        now = utcnow()

        def write(session: Session) -> None:
            insert = (postgresql if self.db.kind == "postgresql" else sqlite).insert(AuthFailure)
            session.execute(
                insert.values([{"key": key, "count": 0, "window_start": now}]).on_conflict_do_nothing()
            )
            row = session.get(AuthFailure, key, with_for_update=True)
            assert row is not None
            row.count = max(row.count, self.settings.max_failures)
            row.locked_until = now + dt.timedelta(seconds=self.settings.lockout)
            event = (address.lower(), "login-failure", remote, f"{request} ({reason})", "locked")
            self.audit.record_in(session, *event)

        await self.db.run_write(write, brief=True)
        self.cache.forget(address.lower())

    # ------------------------------------------------------------------ passwords

    def _refund(self, session: Session, keys: list[str], event: tuple[str, ...]) -> None:
        """Give back the places an attempt took without judging it (the identity provider was down)."""
        for row in session.execute(
            select(AuthFailure)
            .where(AuthFailure.key.in_(sorted(keys)))
            .order_by(AuthFailure.key)
            .with_for_update()
        ).scalars():
            row.count = max(row.count - 1, 0)
        self.audit.record_in(session, *event)

    async def authenticate(self, username: str, password: str, remote: str, service: str) -> AuthOutcome:
        """Check a username (the mailbox address) and a password or application password. A password
        the cache knows (``_known_login``) skips the counters' places and the verification queue."""
        address = username.strip().lower()
        known = await self._known_login(address, password, remote, service)
        if known is not None:
            self.metrics.login(known.method or "password", "ok" if known.ok else known.reason)
            return known
        async with self._taking_turns():
            verify = lambda: self._verify_password(address, password)  # noqa: E731
            return await self._login(address, remote, service, "password", verify)

    async def _known_login(
        self, address: str, password: str, remote: str, service: str
    ) -> AuthOutcome | None:
        """A password argon2 accepted a moment ago: one read and ONE brief write transaction
        (``_accept_known``), no place taken in the counters, no wait behind verifications. The place a
        login takes exists so that guesses are verified at most ``max_failures`` times; a cache hit
        verifies nothing and is never a guess (a wrong password is never a hit). None: not a hit, or
        what the hit was bound to changed meanwhile; the caller takes the full path."""
        if not self.cache.knows(address):
            return None
        async with self.db.read() as session:
            mb = await run_core(session, queries.login_mailbox, address)
            if mb is None:
                return None
            apps = await run_core(session, queries.app_passwords, mb.id)
        credential = self._cached(address, mb, apps, password)
        if credential is None:
            return None
        stored = (
            mb.password_hash
            if credential.app_id is None
            else next(a.password_hash for a in apps if a.id == credential.app_id)
        )
        outcome = await self.db.run_write(
            lambda s: self._accept_known(s, address, credential, stored or "", remote, service), brief=True
        )
        if outcome is None or not outcome.ok:
            self.cache.forget(address)
        return outcome

    def _accept_known(
        self, session: Session, address: str, credential: Credential, stored: str, remote: str, service: str
    ) -> AuthOutcome | None:
        """In one transaction: the mailbox and the credential re-read (a password changed, an
        application password revoked since the read: None, the full path judges), the lock-outs of the
        account and of the address (locked or disabled: refused and audited, as on the full path), then
        the login recorded (account counter cleared, last login, application password stamp, audit).
        The counter is cleared only if no lock-out is set on it: another node or process that locks
        the account meanwhile keeps its lock (re-checked by the DELETE itself on PostgreSQL)."""
        now = utcnow()
        conn = session.connection()
        mb = queries.login_mailbox(conn, address)
        if mb is None:
            return None
        if credential.app_id is None:
            current = mb.password_hash
        else:
            apps = queries.app_passwords(conn, mb.id)
            current = next((a.password_hash for a in apps if a.id == credential.app_id), None)
        if not current or current != stored:
            return None
        method = "password" if credential.app_id is None else "app-password"
        person = f"8{mb.rpps}" if mb.type == "PER" and mb.rpps else address
        detail = str(credential) + (f", person {person}" if person != address else "")
        request = f"{service} login"
        account_key, ip_key = f"mailbox:{address}", f"ip:{remote}"
        if queries.active_locks(conn, (account_key, ip_key), now):
            self.audit.record_in(session, address, "login-failure", remote, request, "locked")
            return AuthOutcome(None, None, "locked", method=method)
        if not mb.enabled:
            self.audit.record_in(
                session, address, "login-failure", remote, f"{request} ({detail})", "mailbox disabled"
            )
            return AuthOutcome(None, None, "disabled", method=method)
        if self.refusal(mb, method, service):
            return None  # the full path refuses it and counts it, as for any method not allowed
        queries.clear_account(conn, account_key, now)
        if (
            mb.last_login_at is None
            or mb.inactive_notice_at is not None
            or now - mb.last_login_at >= LOGIN_STAMP_PERIOD
        ):
            queries.stamp_login(conn, mb.id, now)
        if credential.app_id is not None:
            queries.stamp_app_password(conn, credential.app_id, now)
        self.audit.record_in(session, address, "login", remote, f"{request} ({detail})", "ok")
        return AuthOutcome(mb.id, address, method=method, person=person)

    async def _verify_password(self, address: str, password: str) -> Verdict:
        async with self.db.read() as session:
            mb = (
                await session.execute(select(Mailbox).where(Mailbox.address == address))
            ).scalar_one_or_none()
            apps = []
            if mb is not None:
                apps = list(
                    (
                        await session.execute(select(AppPassword).where(AppPassword.mailbox_id == mb.id))
                    ).scalars()
                )
        credential = self._cached(address, mb, apps, password)
        if credential is None:
            credential = await asyncio.to_thread(self._check, mb, apps, password)
            self._remember(address, mb, apps, password, credential)
        if mb is None or credential is None:
            self.cache.forget(address)
            return Verdict(None, "password", "password", reason="invalid credentials")
        method = "password" if credential.app_id is None else "app-password"
        person = f"8{mb.rpps}" if mb.type == "PER" and mb.rpps else address  # RPPS type digit first
        detail = str(credential) + (f", person {person}" if person != address else "")
        return Verdict(mb, method, detail, person=person, app_id=credential.app_id)

    def _cached(
        self,
        address: str,
        mb: Mailbox | queries.LoginMailbox | None,
        apps: list[AppPassword] | list[queries.LoginAppPassword],
        password: str,
    ) -> Credential | None:
        """The credential argon2 accepted for this password a moment ago, if its stored hash is unchanged."""
        if mb is None:
            return None
        hit = self.cache.lookup(address, password, mb.password_hash, ((a.id, a.password_hash) for a in apps))
        if hit is None:
            return None
        return MAIN_PASSWORD if hit.app_id is None else Credential(hit.app_id, hit.label)

    def _remember(
        self,
        address: str,
        mb: Mailbox | None,
        apps: list[AppPassword],
        password: str,
        credential: Credential | None,
    ) -> None:
        if mb is None or credential is None:
            return
        if credential.app_id is None:
            stored = mb.password_hash
        else:
            stored = next(a.password_hash for a in apps if a.id == credential.app_id)
        if stored:
            self.cache.remember(address, password, credential.app_id, credential.label, stored)

    def _check(self, mb: Mailbox | None, apps: list[AppPassword], password: str) -> Credential | None:
        """Which secret ``password`` is, None when none (in a thread)."""
        if mb is None:
            self.passwords.verify(None, password)
            return None
        if mb.password_hash and self.passwords.verify(mb.password_hash, password):
            return MAIN_PASSWORD
        for app in apps:
            if self.passwords.verify(app.password_hash, password):
                return Credential(app.id, app.label)
        return None

    # ------------------------------------------------------------------ bearer tokens

    @property
    def tokens_enabled(self) -> bool:
        return self.tokens is not None

    async def authenticate_token(
        self, token: str, authzid: str | None, remote: str, service: str, mechanism: str
    ) -> AuthOutcome:
        """A bearer token of the identity provider (SASL OAUTHBEARER/XOAUTH2, the API's Bearer header):
        the person it names opens their PER mailbox, or ``authzid`` when it is one of theirs."""
        named = authzid.strip().lower() if authzid else None
        verify = lambda: self._verify_token(token, named, mechanism)  # noqa: E731
        return await self._login(named, remote, service, "oauth", verify)

    async def _verify_token(self, token: str, authzid: str | None, mechanism: str) -> Verdict:
        detail = f"bearer token {mechanism}"
        if self.tokens is None:
            return Verdict(None, "oauth", detail, reason="bearer tokens not configured")
        try:
            identity = await self.tokens.validate(token)
        except TokenError as exc:
            return Verdict(None, "oauth", detail, reason=exc.reason, temporary=exc.temporary)
        detail = f"{detail}, person {identity.national_id}"
        mailboxes = await self.person_mailboxes(identity)
        if not mailboxes:
            return Verdict(None, "oauth", detail, reason="no mailbox for this person")
        chosen = next((m for m in mailboxes if authzid is None or m.address == authzid), None)
        if chosen is None:
            return Verdict(None, "oauth", detail, reason=f"{authzid} is not a mailbox of this person")
        members: tuple[int, ...] = ()
        address = ""
        if chosen.type in SHARED_TYPES:  # the audit names the person and the shared mailbox
            own = [m for m in mailboxes if m.type not in SHARED_TYPES]  # by id, never empty here
            members, address = tuple(m.id for m in own), own[0].address
            detail = f"{detail} {address} as member of {chosen.address}"
        return Verdict(
            chosen, "oauth", detail, person=identity.national_id, members=members, person_address=address
        )

    async def still_member(self, shared_id: int, members: tuple[int, ...]) -> bool:
        """Whether one of ``members`` still holds the ``r`` right on the shared mailbox: an open
        session that a membership let in ends when the membership does."""
        async with self.db.read() as session:
            found = await session.execute(
                select(Membership.member_id).where(
                    Membership.mailbox_id == shared_id,
                    Membership.member_id.in_(members),
                    Membership.rights.contains(READ_RIGHT),
                )
            )
            return found.first() is not None

    async def person_mailboxes(self, identity: TokenIdentity) -> list[Mailbox]:
        """The mailboxes a professional may open: their PER mailbox (by RPPS) first, then the ORG
        and CAB mailboxes they are a member of with the ``r`` right (``caducee mailbox member add``)."""
        if identity.rpps is None:
            return []
        async with self.db.read() as session:
            own = list(
                (
                    await session.execute(
                        select(Mailbox)
                        .where(Mailbox.type == "PER", Mailbox.rpps == identity.rpps)
                        .order_by(Mailbox.id)
                    )
                ).scalars()
            )
            if not own:
                return []
            shared = (
                await session.execute(
                    select(Mailbox)
                    .join(Membership, Membership.mailbox_id == Mailbox.id)
                    .where(
                        Membership.member_id.in_([m.id for m in own]),
                        Membership.rights.contains(READ_RIGHT),
                        Mailbox.type.in_(SHARED_TYPES),
                    )
                    .order_by(Mailbox.address)
                )
            ).scalars()
            return [*own, *shared]

    # ------------------------------------------------------------------ certificates

    async def authenticate_certificate(
        self, der: bytes | None, authzid: str | None, remote: str, service: str
    ) -> AuthOutcome:
        """SASL EXTERNAL: the TLS client certificate registered for a mailbox logs it in."""
        named = authzid.strip().lower() if authzid else None
        return await self._login(
            named, remote, service, "cert", lambda: self._verify_certificate(der, named, remote)
        )

    async def _verify_certificate(self, der: bytes | None, authzid: str | None, remote: str = "") -> Verdict:
        if der is None or self.certificates is None:
            return Verdict(None, "cert", "certificate EXTERNAL", reason="no client certificate")
        try:
            cert = await self.certificates.verify(der, remote)
        except CertificateError as exc:
            return Verdict(None, "cert", "certificate EXTERNAL", reason=str(exc))
        f = certauth.facts(cert)
        detail = f"certificate EXTERNAL, subject {f.subject}, serial {f.serial}"
        async with self.db.read() as session:
            q = (
                select(Mailbox)
                .join(MailboxCert, MailboxCert.mailbox_id == Mailbox.id)
                .where(
                    or_(
                        and_(MailboxCert.issuer == f.issuer, MailboxCert.serial == f.serial),
                        and_(MailboxCert.match == "subject", MailboxCert.subject == f.subject),
                    )
                )
                .order_by(Mailbox.address)
            )
            if authzid is not None:
                q = q.where(Mailbox.address == authzid)
            found = (await session.execute(q)).scalars().first()
        if found is None:
            reason = "certificate not registered" + (f" for {authzid}" if authzid else " for any mailbox")
            return Verdict(None, "cert", detail, reason=reason)
        return Verdict(found, "cert", detail, person=f.subject)


METHODS = ("password", "app-password", "oauth", "cert")
PORTAL_ONLY = "patients sign in through the portal (second factor)"
# Where a patient's password is taken: the portal's login, and its re-check in a signed-in session
# before a change of the contact details (``portal.service.change_contact``).
PORTAL_SERVICES = ("portal", "portal-confirm")


def allows(mb: Mailbox | queries.LoginMailbox, method: str) -> bool:
    """The per-mailbox policy (``caducee mailbox auth --allow``): NULL allows every method."""
    return mb.auth_methods is None or method in mb.auth_methods.split(",")


@dataclass(frozen=True)
class Verdict:
    """What one method's check found: the mailbox (None: refused, with ``reason``), the method
    (``METHODS``) and how the audit trail names the credential and the person."""

    mailbox: Mailbox | None
    method: str
    detail: str
    person: str = ""
    reason: str = ""
    app_id: int | None = None
    temporary: bool = False
    members: tuple[int, ...] = ()
    person_address: str = ""
