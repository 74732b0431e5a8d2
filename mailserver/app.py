"""``caducee serve``: every configured listener in one asyncio process, with a clean shutdown.

Each protocol module exposes ``async def start(rt: Runtime) -> list[Listener]``; the services are
listed once in ``SERVICES``. On SIGTERM/SIGINT the process stops accepting, lets what is in flight finish
(up to ``server.shutdown_grace`` seconds), closes the database and exits 0. With ``[server] workers``
> 1, ``mailserver.workers`` runs this in each worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from config.settings import Settings
from mailserver.db import migrate
from mailserver.logs import log_event
from mailserver.runtime import Runtime, open_runtime
from mailserver.store import identity

log = logging.getLogger("caducee")

# Modules providing ``start(rt)``; a module whose settings list no address starts nothing.
SERVICES: list[str] = [
    "mailserver.admin",  # first: /healthz answers, and /readyz says what is missing, while the rest start
    "mailserver.smtp.service",
    "mailserver.imap.server",
    "mailserver.portal.web",
    "mailserver.portal.client_certs",  # [api] listen_tls: the same application over mutual TLS
    "directory.ldap",
]


class Listener(Protocol):
    service: str
    address: str

    async def close(self) -> None:
        """Stop accepting, then wait for in-flight sessions to finish or be cut."""


class SchemaOutOfDate(Exception):
    pass


async def check_schema(rt: Runtime) -> None:
    current = set(await migrate.current(rt.settings.database.url))
    expected = set(migrate.heads())
    if current != expected:
        raise SchemaOutOfDate(
            f"database schema is at {sorted(current) or 'nothing'}, this version needs {sorted(expected)}: "
            "run `caducee db upgrade`"
        )


async def check(rt: Runtime) -> None:
    """What must hold before any listener opens: the schema, the store and its identity, the PKI files
    (under ``[server] workers`` > 1, checked once by the supervisor before it starts the workers)."""
    await check_schema(rt)
    await asyncio.to_thread(rt.blobs.ensure)
    await identity.ensure(rt)  # StorageMismatch: this node's store is not its database's
    for checker in rt.pki_checkers():
        try:
            await asyncio.to_thread(checker.check_files)
        except ValueError as exc:  # a CRL that does not parse: as unusable as a missing one
            raise OSError(str(exc)) from exc


async def check_only(settings: Settings) -> None:
    """:func:`check` with a runtime of its own, closed after (the supervisor's, before it forks)."""
    async with open_runtime(settings) as rt:
        await check(rt)


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    worker: int | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Start everything, wait for a signal (or ``stop``), then shut down in order. ``worker``: this
    process's index among ``[server] workers`` (None: the only process); ``ready`` is called once
    every listener is open."""
    rt = Runtime.build(settings)
    rt.worker = worker
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    listeners: list[Listener] = rt.listeners
    background: list[asyncio.Task[None]] = []
    try:
        if worker is None:
            await check(rt)
        if rt.db.kind == "postgresql":
            dsn = settings.database.url.replace("postgresql+asyncpg://", "postgresql://")
            background.append(asyncio.create_task(rt.notifier.listen_postgres(dsn)))
        if rt.leads:
            from mailserver.maintenance import run_daily

            background.append(asyncio.create_task(run_daily(rt)))
        for module in SERVICES:
            started = await importlib.import_module(module).start(rt)
            for listener in started:
                log_event("listening", service=listener.service, address=listener.address)
            listeners.extend(started)
        rt.started = True
        if ready is not None:  # before the log line: whoever sees "ready" may kill it as a started worker
            ready()
        log_event("ready", hostname=settings.server.hostname, listeners=len(listeners))
        await stop.wait()
        log_event("stopping")
    finally:
        for listener in reversed(listeners):
            try:
                await asyncio.wait_for(listener.close(), settings.server.shutdown_grace)
            except Exception as exc:
                log.warning(
                    "listener %s %s did not close cleanly: %s", listener.service, listener.address, exc
                )
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await rt.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log_event("stopped")
