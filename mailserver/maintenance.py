"""The daily housekeeping of a running server: audit retention, the mailbox life cycle and the large
files whose links expired.

Each task is a plain async function of the runtime, run once at start-up and then every day by
``caducee serve``; every one is idempotent, so several server processes on one database may all run
it. A task that fails is logged and retried the next day; it never stops the server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from mailserver import large_files, lifecycle
from mailserver.logs import log_event
from mailserver.runtime import Runtime

log = logging.getLogger("caducee.maintenance")

DAY = 86400.0


async def purge_audit(rt: Runtime, now: dt.datetime | None = None) -> int:
    """Delete audit events older than ``[audit] keep``; the purge itself is audited."""
    now = now or dt.datetime.now(dt.UTC)
    before = now - dt.timedelta(seconds=rt.settings.audit.keep)
    removed = await rt.audit.purge(before)
    if removed:
        await rt.audit.record(
            "admin", "audit-purge", request=f"before {before.isoformat()}", response=str(removed)
        )
    log_event("audit-purged", before=before.isoformat(), removed=removed)
    return removed


async def mailbox_lifecycle(rt: Runtime) -> None:
    """Notify the mailboxes without a login for ``[mailboxes] inactive_after``, disable those past grace."""
    notified, disabled = await lifecycle.run(rt)
    log_event("mailbox-lifecycle", notified=len(notified), disabled=len(disabled))


async def purge_large_files(rt: Runtime) -> int:
    """Delete large files past their link's ``[large_files] keep`` (or unfinished uploads past
    ``upload_expire``) and give their size back to the sender's quota."""
    return await large_files.purge(rt)


TASKS: list[Callable[[Runtime], Awaitable[object]]] = [purge_audit, mailbox_lifecycle, purge_large_files]


async def run_daily(rt: Runtime, period: float = DAY) -> None:
    """Run every task now, then once per ``period``, until cancelled."""
    while True:
        for task in TASKS:
            try:
                await task(rt)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("daily task %s failed", task.__name__)
        await asyncio.sleep(period)
