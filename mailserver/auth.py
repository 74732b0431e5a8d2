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
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass

import argon2
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from config.settings import AuthSettings
from mailserver.audit import Audit
from mailserver.db.engine import Database
from mailserver.db.models import AppPassword, AuthFailure, Mailbox, utcnow

LOGIN_STAMP_PERIOD = dt.timedelta(hours=1)  # last_login_at precision: inactivity is counted in months


@dataclass(frozen=True)
class AuthOutcome:
    """Success carries the mailbox; a failure carries ``reason``: ``invalid``, ``locked``, ``disabled``."""

    mailbox_id: int | None
    address: str | None
    reason: str = ""

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
        self, db: Database, settings: AuthSettings, audit: Audit, passwords: Passwords | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.audit = audit
        self.passwords = passwords or Passwords(settings)
        self._turn = asyncio.Condition()
        self._holding = 0  # attempts of this process holding places in the counters

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

    async def authenticate(self, username: str, password: str, remote: str, service: str) -> AuthOutcome:
        """Check a username (the mailbox address) and a password or application password."""
        async with self._taking_turns():
            return await self._authenticate(username, password, remote, service)

    async def _authenticate(self, username: str, password: str, remote: str, service: str) -> AuthOutcome:
        address = username.strip().lower()
        account_key, ip_key = f"mailbox:{address}", f"ip:{remote}"
        limits = {account_key: self.settings.max_failures, ip_key: self.settings.max_failures_per_ip}
        request = f"{service} login"
        locked = (address, "login-failure", remote, request, "locked")
        if not await self.db.run_write(lambda s: self._reserve(s, limits, locked), brief=True):
            return AuthOutcome(None, None, "locked")
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
        credential = await asyncio.to_thread(self._check, mb, apps, password)
        if mb is None or credential is None:  # the place taken stays, as this failure
            await self.audit.record(address, "login-failure", remote, request, "invalid credentials")
            return AuthOutcome(None, None, "invalid")
        if not mb.enabled:
            event = (address, "login-failure", remote, request, "mailbox disabled")
            await self.db.run_write(
                lambda s: self._give_back(s, account_key, ip_key, None, event), brief=True
            )
            return AuthOutcome(None, None, "disabled")
        event = (address, "login", remote, f"{request} ({credential})", "ok")
        await self.db.run_write(
            lambda s: self._give_back(s, account_key, ip_key, credential, event, mb), brief=True
        )
        return AuthOutcome(mb.id, mb.address)

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
