"""Connection admission, one mechanism for every listener: SMTP, submission, IMAP, LDAP, the portal.

One :class:`ConnectionGate` per protocol and process, shared by that protocol's ports (``[imap] listen``
and ``tls_listen`` count together, so do submission's 587 and 465), applies the ``[limits]``:

- ``max_connections``: the protocol's connections in this process (five protocols: keep the process's
  open-file limit above five times this);
- ``connections_per_ip``: from one client address. Every clinician of a hospital comes from its NAT
  address, so this is a ceiling against floods, not a limit on people;
- ``connections_per_user_ip``: authenticated connections of one user from one address (as Dovecot's
  ``mail_max_userip_connections``), checked at authentication: IMAP LOGIN/AUTHENTICATE, SMTP AUTH,
  LDAP bind;
- ``connections_per_user``: authenticated connections of one user from all addresses together.

Counts are in memory: each process (node) admits its own connections. A refusal is logged and audited
the first time in a minute for its address (and user) and limit, up to ``AUDITED_PER_MINUTE`` of them;
the others are counted and reported in one event when the minute ends, so a flood costs a bounded number
of audit writes and log lines (``{"event":"connection-refused","service":..,"peer":..,"limit":..}``, and
``connections-refused`` with the number not audited one by one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

from config.settings import LimitsSettings
from mailserver.audit import Audit
from mailserver.logs import log_event
from mailserver.metrics import UNSCRAPED, Metrics

K = TypeVar("K")

AUDIT_MINUTE = 60.0
AUDITED_PER_MINUTE = 100


@dataclass(frozen=True)
class Refused:
    """Why a connection or a login was not admitted: the ``[limits]`` key and the text for the client."""

    limit: str
    text: str


@dataclass(eq=False)
class Slot:
    """One admitted connection: its client address and, once authenticated, its user."""

    ip: str
    user: str | None = None
    open: bool = True


class ConnectionGate:
    """The connections of one protocol in this process (see the module docstring)."""

    def __init__(
        self, service: str, limits: LimitsSettings, audit: Audit, metrics: Metrics = UNSCRAPED
    ) -> None:
        self.service = service
        self.limits = limits
        self.audit = audit
        self.metrics = metrics
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.per_user: Counter[str] = Counter()
        self.per_user_ip: Counter[tuple[str, str]] = Counter()
        self._audited: set[tuple[str, str, str]] = set()
        self._unaudited = 0
        self._minute_ends = 0.0
        self._summary: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def connect(self, ip: str) -> Slot | Refused:
        """Count a new connection from ``ip``, or refuse it (the caller answers and closes)."""
        if self.total >= self.limits.max_connections:
            refused = Refused("max_connections", "too many connections to this server, try again later")
        elif self.per_ip[ip] >= self.limits.connections_per_ip:
            refused = Refused("connections_per_ip", "too many connections from your address, try again later")
        else:
            self.total += 1
            self.per_ip[ip] += 1
            self.metrics.connection_opened(self.service)
            return Slot(ip)
        self._refused(ip, None, "connect", refused)
        return refused

    def login(self, slot: Slot, user: str) -> Refused | None:
        """Count ``slot`` as ``user``'s (replacing an earlier login on it), or refuse: None when admitted."""
        self.logout(slot)
        if self.per_user_ip[(user, slot.ip)] >= self.limits.connections_per_user_ip:
            text = "too many connections for this account from your address"
            refused = Refused("connections_per_user_ip", text)
        elif self.per_user[user] >= self.limits.connections_per_user:
            refused = Refused("connections_per_user", "too many connections for this account")
        else:
            slot.user = user
            self.per_user[user] += 1
            self.per_user_ip[(user, slot.ip)] += 1
            return None
        self._refused(slot.ip, user, "login", refused)
        return refused

    def logout(self, slot: Slot) -> None:
        """The connection is no longer authenticated (an LDAP bind that failed after one that succeeded)."""
        if slot.user is not None:
            _decrement(self.per_user, slot.user)
            _decrement(self.per_user_ip, (slot.user, slot.ip))
            slot.user = None

    def release(self, slot: Slot) -> None:
        """The connection is closed; releasing twice is harmless."""
        if not slot.open:
            return
        slot.open = False
        self.logout(slot)
        self.total -= 1
        _decrement(self.per_ip, slot.ip)
        self.metrics.connection_closed(self.service)

    async def drain(self) -> None:
        """Write the pending summary and wait for the audit writes (at shutdown, before the database goes)."""
        self._summarise()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    # ------------------------------------------------------------------ audit of refusals

    def _refused(self, ip: str, user: str | None, request: str, refused: Refused) -> None:
        self.metrics.connection_refused(self.service, refused.limit)
        now = time.monotonic()
        if now >= self._minute_ends:
            self._summarise()
            self._minute_ends = now + AUDIT_MINUTE
        key = (ip, user or "", refused.limit)
        if key in self._audited or len(self._audited) >= AUDITED_PER_MINUTE:
            self._unaudited += 1
            if self._summary is None:
                self._summary = asyncio.get_running_loop().call_later(
                    self._minute_ends - now, self._summarise
                )
            return
        self._audited.add(key)
        response = f"{refused.text} ([limits] {refused.limit} = {getattr(self.limits, refused.limit)})"
        log_event(
            "connection-refused",
            logging.WARNING,
            service=self.service,
            peer=ip,
            user=user,
            request=request,
            limit=refused.limit,
        )
        self._write(user or f"client:{ip}", ip, request, response)

    def _summarise(self) -> None:
        """End the minute: one event for the refusals not audited one by one."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if self._unaudited:
            response = f"{self._unaudited} more refusals within a minute, not audited one by one"
            log_event("connections-refused", logging.WARNING, service=self.service, unaudited=self._unaudited)
            self._write("server", "", "connect or login", response)
        self._audited.clear()
        self._unaudited = 0

    def _write(self, actor: str, ip: str, request: str, response: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.audit.record(actor, f"{self.service}-refused", ip, request, response)
        )
        self._writes.add(task)
        task.add_done_callback(_written)
        task.add_done_callback(self._writes.discard)


def _written(task: asyncio.Task[None]) -> None:
    """``Audit.record`` has logged a failure already; retrieving it keeps asyncio from logging it again."""
    if not task.cancelled():
        task.exception()


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
