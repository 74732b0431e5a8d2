"""The services of one process, built once from the settings and shared by every listener and command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from mailserver.audit import Audit
from mailserver.auth import Authenticator, Passwords
from mailserver.db.engine import Database
from mailserver.metrics import Metrics
from mailserver.revocation import RevocationChecker
from mailserver.store.blobs import BlobStore
from mailserver.store.notify import Notifier
from mailserver.store.store import Store

if TYPE_CHECKING:
    from mailserver.queue.queue import Queue


@dataclass
class Runtime:
    settings: Settings
    db: Database
    blobs: BlobStore
    notifier: Notifier
    store: Store
    audit: Audit
    passwords: Passwords
    auth: Authenticator
    metrics: Metrics
    revocation: RevocationChecker
    _queue: Queue | None = field(default=None, init=False, repr=False)
    # What ``caducee serve`` has started (``mailserver.app.run`` fills them), for ``/readyz``.
    listeners: list[Any] = field(default_factory=list, init=False, repr=False)
    started: bool = field(default=False, init=False)
    # None when ``caducee serve`` is one process; else this worker's index (``mailserver.workers``):
    # its listeners accept on the sockets the supervisor bound (``handshakes.prebound``), and only
    # worker 0 runs the admin listener and the daily maintenance.
    worker: int | None = field(default=None, init=False)

    @property
    def leads(self) -> bool:
        """Whether this process runs what must run once per server: the admin listener, maintenance."""
        return self.worker in (None, 0)

    @property
    def queue(self) -> Queue:
        """The outbound queue shared by SMTP, the portal and reports, so one wake-up reaches its workers."""
        if self._queue is None:
            from mailserver.queue.queue import Queue  # the queue module itself builds on Runtime

            self._queue = Queue(self)
        return self._queue

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        metrics = Metrics()
        db = Database(
            settings.database.url, echo=settings.database.echo, pool_size=settings.database.pool_size
        )
        db.observe = metrics.database_latency
        blobs = BlobStore(settings.storage.path)
        blobs.observe = metrics.store_latency
        notifier = Notifier()
        store = Store(db, blobs, notifier, settings.quota, settings.storage.inline_max, settings.limits)
        audit = Audit(db, metrics)
        passwords = Passwords(settings.auth)
        revocation = RevocationChecker(settings.tls, audit, metrics)
        logins = RevocationChecker(settings.tls, audit, metrics, extra_crls=settings.auth.client_crl)
        auth = Authenticator(
            db,
            settings.auth,
            audit,
            passwords,
            settings.oauth,
            settings.tls.peer_ca,
            metrics=metrics,
            revocation=logins,
            patients_through_portal=settings.portal.second_factor != "off",
        )
        return cls(settings, db, blobs, notifier, store, audit, passwords, auth, metrics, revocation)

    def pki_checkers(self) -> list[RevocationChecker]:
        """The revocation checkers whose files must be readable: peers', and logins' when EXTERNAL is on."""
        certificates = self.auth.certificates
        return [self.revocation, *([certificates.revocation] if certificates is not None else [])]

    async def close(self) -> None:
        await self.db.close()


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime.build(settings)
    try:
        yield rt
    finally:
        await rt.close()
