"""Authentication: the one entry point every protocol (SMTP AUTH, IMAP LOGIN/AUTHENTICATE, portal,
LDAP bind) calls, so lock-out, application passwords and the audit trail behave the same everywhere.

- Passwords are argon2id hashes; verification runs in a thread, never on the event loop.
- An account is locked after ``auth.max_failures`` failures within ``auth.failure_window``, and a client
  address after ``auth.max_failures_per_ip``; counters live in the database so every node shares them.
- An unknown account costs the same hash verification as a known one (no user enumeration by timing).
- Per-device application passwords are accepted wherever the main password is, and can be revoked alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import string
from dataclasses import dataclass

import argon2
from sqlalchemy import delete, select

from config.settings import AuthSettings
from mailserver.audit import Audit
from mailserver.db.engine import Database
from mailserver.db.models import AppPassword, AuthFailure, Mailbox, utcnow


@dataclass(frozen=True)
class AuthOutcome:
    """Success carries the mailbox; a failure carries ``reason``: ``invalid``, ``locked``, ``disabled``."""

    mailbox_id: int | None
    address: str | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.mailbox_id is not None


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

    async def _failures(self, keys: list[str]) -> tuple[bool, set[str]]:
        """(whether any key is locked now, the keys that have a failure record)."""
        now = utcnow()
        async with self.db.read() as session:
            rows = list(
                (await session.execute(select(AuthFailure).where(AuthFailure.key.in_(keys)))).scalars()
            )
        return any(r.locked_until is not None and r.locked_until > now for r in rows), {r.key for r in rows}

    async def _fail(self, keys: list[tuple[str, int]]) -> None:
        now = utcnow()
        window = dt.timedelta(seconds=self.settings.failure_window)
        async with self.db.write(brief=True) as session:
            for key, limit in keys:
                row = await session.get(AuthFailure, key, with_for_update=True)
                if row is None:
                    row = AuthFailure(key=key, count=0, window_start=now)
                    session.add(row)
                if now - row.window_start > window:
                    row.count, row.window_start = 0, now
                row.count += 1
                if row.count >= limit:
                    row.locked_until = now + dt.timedelta(seconds=self.settings.lockout)

    async def _clear(self, key: str) -> None:
        async with self.db.write(brief=True) as session:
            await session.execute(delete(AuthFailure).where(AuthFailure.key == key))

    async def authenticate(self, username: str, password: str, remote: str, service: str) -> AuthOutcome:
        """Check a username (the mailbox address) and a password or application password."""
        address = username.strip().lower()
        account_key, ip_key = f"mailbox:{address}", f"ip:{remote}"
        locked, recorded = await self._failures([account_key, ip_key])
        if locked:
            await self.audit.record(address, "login-failure", remote, f"{service} login", "locked")
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
        matched_app = await asyncio.to_thread(self._check, mb, apps, password)
        if mb is None or matched_app is False:
            await self._fail(
                [(account_key, self.settings.max_failures), (ip_key, self.settings.max_failures_per_ip)]
            )
            await self.audit.record(
                address, "login-failure", remote, f"{service} login", "invalid credentials"
            )
            return AuthOutcome(None, None, "invalid")
        if not mb.enabled:
            await self.audit.record(address, "login-failure", remote, f"{service} login", "mailbox disabled")
            return AuthOutcome(None, None, "disabled")
        if account_key in recorded:
            await self._clear(account_key)
        if isinstance(matched_app, int):
            async with self.db.write(brief=True) as session:
                app = await session.get(AppPassword, matched_app)
                if app is not None:
                    app.last_used_at = utcnow()
        how = "application password" if isinstance(matched_app, int) else "password"
        await self.audit.record(address, "login", remote, f"{service} login ({how})", "ok")
        return AuthOutcome(mb.id, mb.address)

    def _check(self, mb: Mailbox | None, apps: list[AppPassword], password: str) -> bool | int:
        """True for the main password, an application password's id, False otherwise (in a thread)."""
        if mb is None:
            self.passwords.verify(None, password)
            return False
        if mb.password_hash and self.passwords.verify(mb.password_hash, password):
            return True
        for app in apps:
            if self.passwords.verify(app.password_hash, password):
                return app.id
        return False
