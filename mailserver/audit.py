"""The audit trail: one append-only table, written only through this module.

Who (a mailbox address, a peer operator's domain, ``admin``), when, from where, what was asked and
what was answered. Never message content: callers pass envelope facts and reply codes only.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from mailserver.db.engine import Database
from mailserver.db.models import AuditEvent, utcnow
from mailserver.db.prepared import Prepared
from mailserver.metrics import UNSCRAPED, Metrics

log = logging.getLogger("caducee.audit")

_MAX = 2000
# For the delivery group commit (``Store.deliver``'s ``trace``): ``INSERT_EVENTS.many`` of ``event_row``s.
INSERT_EVENTS = Prepared(
    insert(AuditEvent.__table__).values(
        {c: bindparam(c) for c in ("at", "actor", "remote", "action", "request", "response")}
    )
)


@dataclass(frozen=True)
class Event:
    id: int
    at: dt.datetime
    actor: str
    remote: str
    action: str
    request: str
    response: str

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "remote": self.remote,
            "action": self.action,
            "request": self.request,
            "response": self.response,
        }


def as_member(org: str) -> str:
    """What a row adds when a person acted in an ORG/CAB mailbox as its member: " as member of ORG",
    so that the export names the person (the actor) and the ORG; "" otherwise."""
    return f" as member of {org}" if org else ""


def _text(value: str, most: int) -> str:
    """PostgreSQL text holds no NUL: a refused input quoted in a trace has its NULs shown as ``\\0``."""
    return value.replace("\x00", "\\0")[:most]


def event_row(actor: str, action: str, remote: str, request: str, response: str) -> dict[str, object]:
    return {
        "at": utcnow(),
        "actor": _text(actor, 400),
        "remote": _text(remote, 100),
        "action": _text(action, 40),
        "request": _text(request, _MAX),
        "response": _text(response, _MAX),
    }


def _row(actor: str, action: str, remote: str, request: str, response: str) -> AuditEvent:
    return AuditEvent(**event_row(actor, action, remote, request, response))


class Audit:
    def __init__(self, db: Database, metrics: Metrics = UNSCRAPED) -> None:
        self.db = db
        self.metrics = metrics

    async def record(
        self, actor: str, action: str, remote: str = "", request: str = "", response: str = ""
    ) -> None:
        """Append one event in its own transaction (a failure to trace is logged, never hidden); a
        plain INSERT through ``run_write`` (brief), since logins and refusals make these the most
        frequent small writes."""
        row = event_row(actor, action, remote, request, response)
        try:
            await self.db.run_write(lambda s: INSERT_EVENTS.many(s.connection(), [row]), brief=True)
        except Exception:
            self.metrics.audit_error()
            log.exception("could not write audit event %s %s", actor, action)
            raise

    @staticmethod
    def record_in(
        session: AsyncSession | Session,
        actor: str,
        action: str,
        remote: str = "",
        request: str = "",
        response: str = "",
    ) -> None:
        """Append one event inside the caller's transaction (kept only if that transaction commits);
        ``Session`` for the synchronous work of ``db.run_write``, where it is a plain INSERT."""
        if isinstance(session, Session):
            INSERT_EVENTS.many(session.connection(), [event_row(actor, action, remote, request, response)])
        else:
            session.add(_row(actor, action, remote, request, response))

    async def read(self, actor: str, remote: str, via: str, what: str, org: str = "") -> None:
        """A consultation of message content (IMAP body FETCH, portal page, download): one event per
        command or page naming the messages read (a UID set, conversation and message ids), so that a
        FETCH 1:* of ten thousand messages is one row, never the content itself; ``org``: read as a
        member of that ORG/CAB mailbox."""
        await self.record(actor, "read", remote, f"{via} {what}", "ok" + as_member(org))

    async def purge(self, before: dt.datetime, batch: int = 5000) -> int:
        """Delete events older than ``before`` in short transactions (the table stays writable)."""
        total = 0
        while True:
            ids = select(AuditEvent.id).where(AuditEvent.at < before).limit(batch).scalar_subquery()
            async with self.db.write() as session:
                done = (await session.execute(delete(AuditEvent).where(AuditEvent.id.in_(ids)))).rowcount
            total += done or 0
            if not done or done < batch:
                return total

    async def stream(
        self, since: dt.datetime | None, until: dt.datetime | None, batch: int = 1000
    ) -> AsyncIterator[Event]:
        """Every event of a period in order, read a batch at a time (an export of months stays small)."""
        last = 0
        while True:
            q = select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.id).limit(batch)
            if since is not None:
                q = q.where(AuditEvent.at >= since)
            if until is not None:
                q = q.where(AuditEvent.at < until)
            async with self.db.read() as session:
                rows = [
                    Event(r.id, r.at, r.actor, r.remote, r.action, r.request, r.response)
                    for r in (await session.execute(q)).scalars()
                ]
            for e in rows:
                yield e
            if len(rows) < batch:
                return
            last = rows[-1].id

    async def events(
        self,
        since: dt.datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        q = select(AuditEvent).order_by(AuditEvent.id)
        if since is not None:
            q = q.where(AuditEvent.at >= since)
        if actor is not None:
            q = q.where(AuditEvent.actor == actor.lower())
        if action is not None:
            q = q.where(AuditEvent.action == action)
        async with self.db.read() as session:
            rows = (await session.execute(q.limit(limit))).scalars()
            return [Event(r.id, r.at, r.actor, r.remote, r.action, r.request, r.response) for r in rows]
