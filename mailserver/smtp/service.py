"""``start(rt)`` for ``caducee serve``: the MTA and submission listeners, the queue workers, trust refresh.

Listeners: ``[smtp] listen`` (peers, STARTTLS + client certificate), ``[submission] listen`` (STARTTLS)
and ``tls_listen`` (implicit TLS, RFC 8314). Each connection gets its own protocol and handler objects;
connections are admitted per protocol (``mailserver.limits``: the MTA's gate, and one for submission's
two ports). Closing a listener stops accepting, closes idle sessions and waits for the
ones inside a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Literal

from config.settings import parse_listen
from mailserver import handshakes, trust, trust_download
from mailserver.limits import ConnectionGate
from mailserver.queue.outbound import Outbound
from mailserver.runtime import Runtime
from mailserver.smtp.handler import Handler
from mailserver.smtp.mta import MTAHandler
from mailserver.smtp.server import ServerConfig, SMTPServer
from mailserver.smtp.submission import SubmissionHandler
from mailserver.tls import server_context

log = logging.getLogger("caducee.smtp")

ClientCert = Literal["none", "optional", "required"]


class SMTPListener:
    def __init__(self, service: str, address: str, server: asyncio.Server, config: ServerConfig) -> None:
        self.service = service
        self.address = address
        self.server = server
        self.config = config
        self.gate = config.gate

    async def close(self) -> None:
        """Stop accepting; a session between commands hears 421 now, one receiving or storing a message
        once that message is answered (within ``[server] shutdown_grace``)."""
        self.server.close()
        self.config.stopping = True
        for session in list(self.config.active):
            if not (session.busy or session.receiving):
                session.say_goodbye()
        if self.config.active:
            await self.config.drained.wait()
        await self.config.gate.drain()


class BackgroundTasks:
    """Queue workers and the trust-list refresher, stopped like a listener."""

    def __init__(self, service: str, address: str, tasks: list[asyncio.Task[None]]) -> None:
        self.service = service
        self.address = address
        self.tasks = tasks

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def refresh_trust_list(rt: Runtime) -> None:
    """Re-import ``[trust] list`` every ``refresh`` seconds if it changed; a bad file keeps the old list."""
    path, last = rt.settings.trust.list, None
    while True:
        try:
            stamp = await asyncio.to_thread(os.stat, path)
            if last != (stamp.st_mtime_ns, stamp.st_size):
                report = await trust.import_file(rt.db, path)
                last = (stamp.st_mtime_ns, stamp.st_size)
                log.info(
                    "trust list %s imported: %d added, %d removed, %d changed",
                    path,
                    len(report.added),
                    len(report.removed),
                    len(report.changed),
                )
        except (OSError, trust.TrustListError) as exc:
            log.error("trust list %s not imported: %s", path, exc)
        await asyncio.sleep(rt.settings.trust.refresh or 3600)


async def _listen(
    rt: Runtime, config: ServerConfig, make_handler: Callable[[], Handler], address: str, implicit: bool
) -> SMTPListener:
    host, port = parse_listen(address)
    ctx = server_context(rt.settings.tls, config.client_cert) if implicit else None
    server = await handshakes.create_server(
        rt, config.service, lambda: SMTPServer(make_handler(), config), host, port, ctx
    )
    bound = server.sockets[0].getsockname()
    return SMTPListener(config.service, f"{bound[0]}:{bound[1]}", server, config)


async def start(rt: Runtime) -> list[SMTPListener | BackgroundTasks]:
    s = rt.settings
    if not (s.smtp.listen or s.submission.listen or s.submission.tls_listen):
        return []
    queue = rt.queue
    limits = s.limits
    # One gate per protocol: submission's two ports count together (see mailserver.limits).
    gates = {name: ConnectionGate(name, limits, rt.audit, rt.metrics) for name in ("smtp", "submission")}

    def config(
        service: str, starttls: bool, client_cert: ClientCert, auth: bool, implicit: bool
    ) -> ServerConfig:
        return ServerConfig(
            service=service,
            hostname=s.server.hostname,
            message_size=limits.message_size,
            line_length=limits.smtp_line_length,
            recipients_per_message=limits.recipients_per_message,
            idle_timeout=limits.smtp_idle_timeout,
            gate=gates["smtp" if service == "smtp" else "submission"],
            starttls=server_context(s.tls, client_cert) if starttls else None,
            implicit_tls=implicit,
            auth=auth,
            client_cert=client_cert,
            auth_line_length=limits.smtp_auth_line_length,
        )

    started: list[SMTPListener | BackgroundTasks] = []
    try:
        mta_config = config("smtp", True, "optional" if s.smtp.require_client_cert else "none", False, False)
        for address in s.smtp.listen:
            started.append(await _listen(rt, mta_config, lambda: MTAHandler(rt, queue), address, False))
        sub_config = config("submission", True, s.submission.client_cert, True, False)
        for address in s.submission.listen:
            started.append(
                await _listen(rt, sub_config, lambda: SubmissionHandler(rt, queue), address, False)
            )
        tls_config = config("submissions", False, s.submission.client_cert, True, True)
        for address in s.submission.tls_listen:
            started.append(await _listen(rt, tls_config, lambda: SubmissionHandler(rt, queue), address, True))
    except BaseException:
        for listener in started:
            with contextlib.suppress(Exception):
                await listener.close()
        raise
    outbound = Outbound(rt)
    tasks = [asyncio.create_task(queue.worker(outbound.send)) for _ in range(max(1, s.delivery.workers))]
    if s.trust.list:
        tasks.append(asyncio.create_task(refresh_trust_list(rt)))
    if s.trust.url:
        tasks.append(asyncio.create_task(trust_download.refresh_periodically(rt)))
    started.append(BackgroundTasks("queue", f"{len(tasks)} tasks", tasks))
    return started
