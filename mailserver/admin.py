"""The operator's HTTP listener (``[admin] listen``, loopback by default): health, readiness, metrics.

- ``/healthz``: the process is up and its event loop answers (200, nothing else checked);
- ``/readyz``: the database answers a cheap query, the store directory can be written, and every
  listener ``caducee serve`` started is bound: 200 ``{"ready": true}``, else 503 with what is not
  ready (``{"ready": false, "failing": {"database": "...", "listener smtp 127.0.0.1:25": "..."}}``);
- ``/metrics``: Prometheus text format (``mailserver.metrics``).

Sockets go through the same connection gate as every other listener (``mailserver.limits``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import exists, func, select, text

from config.settings import parse_listen
from mailserver.db.models import utcnow
from mailserver.limits import ConnectionGate
from mailserver.logs import log_event
from mailserver.metrics import CONTENT_TYPE
from mailserver.portal.http import RT, security_headers
from mailserver.portal.web import Admission, PortalListener
from mailserver.queue.models import QueueMessage, QueueRecipient
from mailserver.runtime import Runtime

PROBE = ".readyz-probe"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "up"})


async def probe_database(rt: Runtime) -> None:
    """One round trip to the database (``SELECT 1``)."""
    async with rt.db.read() as session:
        await session.execute(text("SELECT 1"))


def _write_probe(root: Path) -> None:
    """Create, fsync and remove a small file: the store's filesystem is mounted, writable and not full."""
    path = root / PROBE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


async def probe_store(rt: Runtime) -> None:
    started = time.perf_counter()
    await asyncio.to_thread(_write_probe, rt.blobs.root)
    rt.metrics.store_latency("probe", time.perf_counter() - started)


def listener_problem(listener: Any) -> str | None:
    """Why a started listener no longer serves (its socket closed, its background task ended), or None."""
    server = getattr(listener, "server", None) or getattr(listener, "_server", None)
    if isinstance(server, asyncio.AbstractServer) and not server.is_serving():
        return "not accepting connections"
    for task in getattr(listener, "tasks", []):
        if task.done():
            return "a background task has ended"
    return None


async def readiness(rt: Runtime) -> dict[str, str]:
    """What is not ready, by name; empty when everything is."""
    failing: dict[str, str] = {}
    timeout = rt.settings.admin.timeout
    for name, probe in (("database", probe_database), ("store", probe_store)):
        try:
            await asyncio.wait_for(probe(rt), timeout)
        except TimeoutError:
            failing[name] = f"no answer within {timeout:g}s"
        except Exception as exc:  # any failure of the probe is the answer
            failing[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    for checker in rt.pki_checkers():
        try:
            await asyncio.to_thread(checker.check_files)
        except (OSError, ValueError) as exc:
            failing["revocation"] = str(exc).splitlines()[0][:300]
    if not rt.started:
        failing["listeners"] = "still starting"
    for listener in rt.listeners:
        problem = listener_problem(listener)
        if problem is not None:
            failing[f"listener {listener.service} {listener.address}"] = problem
    return failing


async def readyz(request: web.Request) -> web.Response:
    failing = await readiness(request.app[RT])
    if failing:
        return web.json_response({"ready": False, "failing": failing}, status=503)
    return web.json_response({"ready": True})


_WAITING = QueueRecipient.status == "queued"
# Two indexed aggregates (ix_queue_recipient_due leads with status): the cost is the queue's waiting
# rows, not the history of everything ever sent.
QUEUE_DEPTH = select(func.count()).select_from(QueueRecipient).where(_WAITING)
QUEUE_OLDEST = select(func.min(QueueMessage.created_at)).where(
    exists().where(QueueRecipient.message_id == QueueMessage.id, _WAITING)
)


async def scrape_queue(rt: Runtime) -> None:
    """Set the queue gauges from the database; on failure they keep their last values (and it is
    logged), so a slow database slows the scrape by at most ``[admin] timeout``."""

    async def read() -> tuple[int, float]:
        async with rt.db.read() as session:
            depth = int(await session.scalar(QUEUE_DEPTH) or 0)
            oldest = await session.scalar(QUEUE_OLDEST) if depth else None
        return depth, (utcnow() - oldest).total_seconds() if oldest is not None else 0.0

    try:
        depth, age = await asyncio.wait_for(read(), rt.settings.admin.timeout)
    except Exception as exc:  # the rest of the metrics are still worth serving
        log_event("metrics-queue-unavailable", logging.WARNING, reason=f"{type(exc).__name__}: {exc}"[:300])
        return
    rt.metrics.queue(depth, max(age, 0.0))


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RT]
    await scrape_queue(rt)
    resp = web.Response(body=rt.metrics.exposition())
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


def make_app(rt: Runtime) -> web.Application:
    app = web.Application(middlewares=[security_headers])
    app[RT] = rt
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class AdminListener(PortalListener):
    """The same aiohttp listener as the portal's, counted under its own service name."""

    service = "admin"


async def start(rt: Runtime) -> list[AdminListener]:
    """One plain-HTTP listener per ``[admin] listen`` address, behind one connection gate; in worker 0
    only (its port is not shared, so every scrape reaches the same process)."""
    if not rt.leads:
        return []
    listeners = []
    gate = ConnectionGate("admin", rt.settings.limits, rt.audit, rt.metrics)
    loop = asyncio.get_running_loop()
    for address in rt.settings.admin.listen:
        host, port = parse_listen(address)
        runner = web.AppRunner(
            make_app(rt),
            access_log=None,
            shutdown_timeout=5,
            keepalive_timeout=rt.settings.limits.portal_idle_timeout,
        )
        await runner.setup()
        handlers = runner.server
        assert handlers is not None
        server = await loop.create_server(
            lambda handlers=handlers: Admission(gate, handlers), host, port, reuse_address=True
        )
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        listeners.append(AdminListener(runner, server, gate, f"{bound_host}:{bound_port}"))
    return listeners
