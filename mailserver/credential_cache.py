"""Verified-credential cache (as Dovecot's ``auth_cache``): a password argon2 accepted a moment ago is
accepted again without paying argon2 again (~100 ms of a core per login at the default cost), which is
most of what a mail client that logs in for each check costs the server.

- Only successes are kept, as an HMAC-SHA256 of (address, password) under a random key made when the
  process starts: neither the password nor anything an attacker could test guesses against offline
  without that key is kept, and the key dies with the process. A wrong password is never a cache hit,
  so it is still verified by argon2 and counted for the lock-out.
- An entry is bound to the stored hash that verified it (the mailbox's ``password_hash`` or one
  application password's): the login reads those rows anyway, so a password change (a new salted
  hash), an application password revoked (its row gone) or replaced is seen at once by every node
  sharing the database, at no extra read. Entries also live at most ``auth.credential_cache_ttl``
  seconds (0 disables the cache) and at most ``auth.credential_cache_size`` are kept (least recently
  used dropped first).
- This process also drops an address's entries when it changes its password, disables it, revokes one
  of its application passwords, or when a login for it fails or is refused as locked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Cached:
    """What a verification found: ``app_id`` None for the main password, else the application
    password's id and label, with the stored hash it matched (the binding)."""

    app_id: int | None
    label: str
    stored_hash: str
    expires: float


class CredentialCache:
    """Bounded, expiring map of HMAC(address, password) → the credential argon2 accepted."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[tuple[str, bytes], Cached] = OrderedDict()
        self._by_address: dict[str, set[bytes]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0

    def knows(self, address: str) -> bool:
        """Whether any entry is kept for ``address``: a login for an address with none skips the lookup."""
        return self.enabled and address in self._by_address

    def _digest(self, address: str, password: str) -> bytes:
        return hmac.digest(self._key, address.encode() + b"\0" + password.encode(), hashlib.sha256)

    def lookup(
        self, address: str, password: str, main_hash: str | None, apps: Iterable[tuple[int, str]]
    ) -> Cached | None:
        """The cached credential for this password, if it still matches what is stored now
        (``main_hash`` and the (id, hash) of each application password); None otherwise."""
        if not self.enabled:
            return None
        key = (address, self._digest(address, password))
        entry = self._entries.get(key)
        if entry is None:
            return None
        current = main_hash if entry.app_id is None else dict(apps).get(entry.app_id)
        if entry.expires <= self._clock() or current is None or current != entry.stored_hash:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def remember(self, address: str, password: str, app_id: int | None, label: str, stored_hash: str) -> None:
        """Keep a credential argon2 has just accepted."""
        if not self.enabled:
            return
        key = (address, self._digest(address, password))
        self._entries[key] = Cached(app_id, label, stored_hash, self._clock() + self.ttl)
        self._entries.move_to_end(key)
        self._by_address.setdefault(address, set()).add(key[1])
        while len(self._entries) > self.size:
            self._drop(next(iter(self._entries)))

    def forget(self, address: str) -> None:
        """Drop every entry of ``address`` (its credentials changed, or someone is guessing)."""
        for digest in self._by_address.pop(address.strip().lower(), ()):
            self._entries.pop((address.strip().lower(), digest), None)

    def _drop(self, key: tuple[str, bytes]) -> None:
        self._entries.pop(key, None)
        digests = self._by_address.get(key[0])
        if digests is not None:
            digests.discard(key[1])
            if not digests:
                del self._by_address[key[0]]

    def __len__(self) -> int:
        return len(self._entries)
