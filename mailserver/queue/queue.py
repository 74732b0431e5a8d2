"""The persistent outbound queue: written in the accepting transaction, drained by workers on any node.

- ``enqueue_hook`` is the ``Delivery`` hook: queue rows are written in the very transaction that makes
  the message durable, so an SMTP 250 means the remote copies are queued too.
- Claiming is safe across nodes: on PostgreSQL the message's row is taken with ``SELECT … FOR UPDATE
  SKIP LOCKED`` before its recipients are read, on SQLite the write transaction is ``BEGIN IMMEDIATE``
  (one writer at a time). A claimed batch (one message, one domain: every due recipient there) gets a
  lease (``leased_until``, with the worker's ``lease_token``) of ``[queue] lease``, renewed every third
  of it while the delivery runs (heartbeat), so a crashed node's batch goes to another worker soon,
  and a slow peer's never does; ``next_attempt`` stays the retry schedule, and ``queue retry`` never
  touches a leased row.
- Temporary failures are retried on ``delivery.retry_schedule`` (last step repeated) with ±10 % jitter
  until ``delivery.expire``; then, like a permanent failure, the recipient fails. The attempt that
  would come after ``delivery.delay_warning`` is brought forward to it, so a DELAY DSN leaves on time.
- When no recipient of a message is left queued, one transaction removes the entry, drops its blob
  reference and (when a report is due) stores the single RFC 3464 report in the sender's mailbox.
- A queued message whose file cannot be read (``MessageUnavailable``: a node with another storage
  path, a share not mounted) stays queued: the attempt counts as a temporary failure, logged and
  audited (``mailserver.storage_faults``), never a crash of the worker loop. Bouncing at once would
  lose a message another node (or this one, once its storage is back) can still send; so it is
  retried on the schedule and bounced at ``delivery.expire`` like any undeliverable message, the
  report then carrying the original's header only if it can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from mailserver import storage_faults
from mailserver.api_models import APIRecipient
from mailserver.db.models import utcnow
from mailserver.delivery import EnqueueHook
from mailserver.logs import log_event, private, reply_code
from mailserver.policy import LocalTarget, Refusal, RemoteTarget, local_recipient
from mailserver.queue import dsn
from mailserver.queue.models import QueueMessage, QueueRecipient
from mailserver.runtime import Runtime
from mailserver.store.store import MessageUnavailable, drop_blob_ref

log = logging.getLogger("caducee.queue")

CLAIM_CANDIDATES = 16  # due rows looked at per claim: past those locked by other workers
FINAL = ("sent", "relayed", "failed")


@dataclass(frozen=True)
class QueuedRecipient:
    id: int
    address: str
    notify: str
    orcpt: str | None


@dataclass(frozen=True)
class Batch:
    """The recipients of one message at one domain, claimed together (one SMTP transaction)."""

    message_id: int
    blob_id: int
    sender: str
    envid: str | None
    ret: str | None
    smtputf8: bool
    created_at: dt.datetime
    expires_at: dt.datetime
    domain: str
    recipients: tuple[QueuedRecipient, ...]
    token: str = ""  # the lease this worker holds on the recipients' rows
    relay: bool = False  # a patient alert: through ``[relay]``, never to a peer operator


@dataclass(frozen=True)
class Outcome:
    """``kind``: sent (peer handles DSNs), relayed (peer lacks DSN), temporary or permanent failure."""

    kind: str
    reply: str


Sender = Callable[[Batch, bytes], Awaitable[dict[int, Outcome]]]


def _unleased(now: dt.datetime) -> Any:
    """No worker holds the row: never leased, released, or its lease ran out (a crashed worker)."""
    return or_(QueueRecipient.leased_until.is_(None), QueueRecipient.leased_until <= now)


class _Gone(Exception):
    """The entry was finished by someone else meanwhile."""


class Queue:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.settings.delivery
        self.lease = dt.timedelta(seconds=rt.settings.queue.lease)
        self._wake = asyncio.Event()
        # Every time the queue reads or writes (retry times, leases, ages): tests move it forward.
        self.clock: Callable[[], dt.datetime] = utcnow

    # ------------------------------------------------------------------ writing

    def enqueue_hook(
        self, envid: str | None = None, ret: str | None = None, smtputf8: bool = False, relay: bool = False
    ) -> EnqueueHook:
        """The ``Delivery`` hook writing one entry with the message's DSN options (RFC 3461 §4.3-4.4).

        ``relay`` is for patient alerts only (mailserver/alerts.py): no entry point that takes mail from
        a client or a peer ever sets it, so the relay is never open to anyone else."""

        def hook(
            session: Session,
            blob_id: int,
            sender: str,
            remote: list[tuple[RemoteTarget, dict[str, Any]]],
        ) -> int:
            now = self.clock()
            msg = QueueMessage(
                blob_id=blob_id,
                sender=sender,
                envid=envid,
                ret=ret,
                smtputf8=smtputf8,
                relay=relay,
                created_at=now,
                expires_at=now + dt.timedelta(seconds=self.settings.expire),
            )
            session.add(msg)
            session.flush()
            for target, options in remote:
                session.add(
                    QueueRecipient(
                        message_id=msg.id,
                        address=target.address,
                        domain=target.domain,
                        notify=options.get("notify") or "",
                        orcpt=options.get("orcpt"),
                        status="queued",
                        attempts=0,
                        next_attempt=now,
                        last_reply="",
                        updated_at=now,
                    )
                )
            return msg.id

        return hook

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ claiming and recording

    def _lockable(self, q: Any) -> Any:
        return q.with_for_update(skip_locked=True) if self.rt.db.kind == "postgresql" else q

    async def claim(self) -> Batch | None:
        """Take the most overdue (message, domain) batch, all its due recipients at once, and lease it.

        The message's ``queue_message`` row is locked first (``SKIP LOCKED`` on PostgreSQL: a worker
        claiming it makes the others pass to the next message), and only under that lock are its
        recipients read and leased, so two workers can never split one message's recipients at one
        domain between two SMTP transactions. On SQLite the write transaction is the lock.
        """
        now = self.clock()
        due = (QueueRecipient.status == "queued", QueueRecipient.next_attempt <= now, _unleased(now))
        token = uuid.uuid4().hex
        async with self.rt.db.write() as session:
            candidates = (
                await session.execute(
                    select(QueueRecipient.message_id)
                    .where(*due)
                    .order_by(QueueRecipient.next_attempt)
                    .limit(CLAIM_CANDIDATES)
                )
            ).scalars()
            for message_id in dict.fromkeys(candidates):
                msg = (
                    await session.execute(
                        self._lockable(select(QueueMessage).where(QueueMessage.id == message_id))
                    )
                ).scalar_one_or_none()
                if msg is None:
                    continue  # claimed by another worker (locked) or finished meanwhile
                rows = list(
                    (
                        await session.execute(
                            select(QueueRecipient)
                            .where(*due, QueueRecipient.message_id == message_id)
                            .order_by(QueueRecipient.next_attempt, QueueRecipient.id)
                        )
                    ).scalars()
                )
                if not rows:
                    continue  # leased by the worker that held the lock just before us
                domain = rows[0].domain
                rows = sorted((r for r in rows if r.domain == domain), key=lambda r: r.id)
                for r in rows:
                    r.leased_until, r.lease_token, r.updated_at = now + self.lease, token, now
                return Batch(
                    msg.id,
                    msg.blob_id,
                    msg.sender,
                    msg.envid,
                    msg.ret,
                    msg.smtputf8,
                    msg.created_at,
                    msg.expires_at,
                    domain,
                    tuple(QueuedRecipient(r.id, r.address, r.notify, r.orcpt) for r in rows),
                    token,
                    msg.relay,
                )
        return None

    def delay(self, attempts: int) -> dt.timedelta:
        """The wait after the ``attempts``-th failure: the schedule (last step repeating), ±10 % jitter."""
        schedule = self.settings.retry_schedule or [300.0]
        base = schedule[min(attempts, len(schedule)) - 1]
        return dt.timedelta(seconds=base * random.uniform(0.9, 1.1))

    def _retry_at(self, now: dt.datetime, r: QueueRecipient, batch: Batch) -> dt.datetime:
        """The next attempt on the schedule, brought forward to the moment ``[delivery] delay_warning``
        passes when that comes first and a DELAY report may be due (RFC 3461 §4.1): the report then
        leaves at about delay_warning (``warn_delays`` after that attempt fails), not at the first
        failure after it (5 h 21 with the default schedule and 4 h)."""
        at = now + self.delay(r.attempts)
        warning = self.settings.delay_warning
        if warning <= 0 or r.delay_notified_at is not None or not batch.sender or batch.relay:
            return at
        if "DELAY" not in _notify(r.notify):
            return at
        warn_at = _aware(batch.created_at) + dt.timedelta(seconds=warning)
        return warn_at if now < warn_at < at else at

    async def record(self, batch: Batch, outcomes: dict[int, Outcome]) -> None:
        """Store each recipient's outcome and release the lease, then finish the message if nothing is
        left to try. A row claimed meanwhile by another worker (this lease ran out) keeps that worker's
        lease; it still takes a final outcome (the peer did answer), never a retry time."""
        now = self.clock()
        async with self.rt.db.write() as session:
            for rid, outcome in outcomes.items():
                r = await session.get(QueueRecipient, rid, with_for_update=True)
                if r is None or r.status != "queued":
                    continue
                if r.lease_token == batch.token:
                    r.leased_until = r.lease_token = None
                elif outcome.kind == "temporary":
                    continue
                r.attempts += 1
                r.last_reply, r.updated_at = outcome.reply[:2000], now
                if outcome.kind in ("sent", "relayed"):
                    r.status = outcome.kind
                elif outcome.kind == "permanent":
                    r.status = "failed"
                elif now >= batch.expires_at:
                    r.status = "failed"
                    r.last_reply = f"expired after {r.attempts} attempts; last reply: {outcome.reply}"[:2000]
                else:
                    r.next_attempt = self._retry_at(now, r, batch)
        metrics = self.rt.metrics
        for outcome in outcomes.values():
            metrics.delivery_attempt(outcome.kind)
            if outcome.kind in ("sent", "relayed"):
                metrics.delivered("remote")
        if not await self.finish(batch.message_id):
            await self.warn_delays(batch.message_id)

    async def warn_delays(self, message_id: int) -> None:
        """One DELAY DSN (RFC 3461 NOTIFY=DELAY, RFC 3464 ``Action: delayed``) for the recipients of
        the entry still queued ``[delivery] delay_warning`` after it was accepted, each reported once:
        the rows are marked in the transaction that stores the report, so no restart, retry or other
        node sends it again. Rows whose NOTIFY leaves DELAY out, and entries with a null sender (a
        report itself) or a patient alert, are marked without a report."""
        warning = self.settings.delay_warning
        if warning <= 0:
            return
        now = self.clock()
        async with self.rt.db.read() as session:
            msg = await session.get(QueueMessage, message_id)
            if msg is None or now - _aware(msg.created_at) < dt.timedelta(seconds=warning):
                return
            rows = list(
                (
                    await session.execute(
                        select(QueueRecipient)
                        .where(
                            QueueRecipient.message_id == message_id,
                            QueueRecipient.status == "queued",
                            QueueRecipient.delay_notified_at.is_(None),
                            QueueRecipient.attempts > 0,
                        )
                        .order_by(QueueRecipient.id)
                    )
                ).scalars()
            )
        if not rows:
            return
        ids = [r.id for r in rows]

        def mark(session: Session, *_unused: object) -> None:
            marked = session.execute(
                update(QueueRecipient)
                .where(
                    QueueRecipient.id.in_(ids),
                    QueueRecipient.status == "queued",
                    QueueRecipient.delay_notified_at.is_(None),
                )
                .values(delay_notified_at=now)
            ).rowcount
            if marked != len(ids):
                raise _Gone  # another worker reported them meanwhile (or they ended): nothing twice

        wanted = [r for r in rows if "DELAY" in _notify(r.notify)]
        target = await self._local_sender(msg.sender) if wanted and not msg.relay else None
        try:
            if target is None:
                await self.rt.db.run_write(mark)
                return
            original = await self._original(message_id, msg.blob_id)
            reports = [
                dsn.RecipientReport(
                    r.address,
                    "delayed",
                    "4" + dsn.status_of(r.last_reply, False)[1:],
                    r.last_reply,
                    orcpt=r.orcpt,
                    will_retry_until=_aware(msg.expires_at),
                )
                for r in wanted
            ]
            data = dsn.build(
                self.rt.settings.server.hostname,
                msg.sender,
                reports,
                original or b"",
                envid=msg.envid,
                ret="HDRS",
                arrival=_aware(msg.created_at),
            )
            prepared = await self.rt.store.prepare(data)
            result = await self.rt.store.deliver(prepared, [target.mailbox_id], in_transaction=mark)
            if result.blob_id is None:
                log.warning("delay report for queue entry %s refused (mailbox full): dropped", message_id)
                await self.rt.db.run_write(mark)
                return
        except _Gone:
            return
        await self.rt.audit.record(
            msg.sender,
            "receive",
            "",
            "delivery status notification (delay)",
            f"queue entry {message_id}: {', '.join(r.address for r in wanted)}"[:500],
        )

    # ------------------------------------------------------------------ finishing

    async def finish(self, message_id: int) -> bool:
        """Close the entry once every recipient is final: one report, blob reference dropped."""
        async with self.rt.db.read() as session:
            msg = await session.get(QueueMessage, message_id)
            rows = list(
                (
                    await session.execute(
                        select(QueueRecipient).where(QueueRecipient.message_id == message_id)
                    )
                ).scalars()
            )
        if msg is None or any(r.status == "queued" for r in rows):
            return False
        reports = _reports(rows)
        removed: list[str] = []

        def close(session: Session, *_unused: object) -> None:
            current = session.get(QueueMessage, message_id, with_for_update=True)
            if current is None:
                raise _Gone
            left = session.execute(
                select(func.count())
                .select_from(QueueRecipient)
                .where(QueueRecipient.message_id == message_id, QueueRecipient.status == "queued")
            )
            if left.scalar_one():
                raise _Gone
            for r in rows:  # final outcomes (read above, final ones never change) outlive the entry
                session.execute(
                    update(APIRecipient)
                    .where(APIRecipient.queue_message_id == message_id, APIRecipient.address == r.address)
                    .values(state="bounced" if r.status == "failed" else r.status, detail=r.last_reply)
                )
            session.execute(delete(QueueRecipient).where(QueueRecipient.message_id == message_id))
            session.execute(delete(QueueMessage).where(QueueMessage.id == message_id))
            path = drop_blob_ref(session, current.blob_id)
            if path:
                removed.append(path)

        try:
            target = await self._local_sender(msg.sender) if reports else None
            if target is not None:
                original = await self._original(message_id, msg.blob_id)
                data = dsn.build(
                    self.rt.settings.server.hostname,
                    msg.sender,
                    reports,
                    original or b"",
                    envid=msg.envid,
                    ret=msg.ret if original is not None else "HDRS",
                    arrival=msg.created_at,
                )
                prepared = await self.rt.store.prepare(data)
                result = await self.rt.store.deliver(prepared, [target.mailbox_id], in_transaction=close)
                if result.blob_id is None:
                    log.warning("report for queue entry %s refused (mailbox full): dropped", message_id)
                    await self.rt.db.run_write(close)
                else:
                    await self.rt.audit.record(
                        msg.sender, "receive", "", "delivery status notification", f"queue entry {message_id}"
                    )
            else:
                await self.rt.db.run_write(close)
        except _Gone:
            return False
        for path in removed:
            await asyncio.to_thread(self.rt.blobs.remove, path)
        return True

    async def _original(self, message_id: int, blob_id: int) -> bytes | None:
        """The queued message for its report; None (reported) when its file cannot be read."""
        try:
            return await self.rt.store.read_blob(blob_id)
        except MessageUnavailable as exc:
            await self._unavailable(exc, f"report for queue entry {message_id}")
            return None

    async def _unavailable(self, exc: MessageUnavailable, request: str) -> None:
        await storage_faults.report(
            self.rt, [exc], service="queue", actor="queue", remote="", request=request
        )

    async def _local_sender(self, sender: str) -> LocalTarget | None:
        if not sender:
            return None
        try:
            async with self.rt.db.read() as session:
                return await local_recipient(session, sender)
        except Refusal as refusal:
            log_event(
                "dsn-not-sent",
                logging.WARNING,
                reply=reply_code(refusal.smtp),
                **private(sender=sender, response=refusal.smtp),
            )
            return None

    # ------------------------------------------------------------------ workers

    async def seconds_to_next(self) -> float | None:
        """Until the next row is due: the earliest retry time of the free rows, or a lease running out."""
        now = self.clock()
        queued = QueueRecipient.status == "queued"
        async with self.rt.db.read() as session:
            free = (
                await session.execute(
                    select(func.min(QueueRecipient.next_attempt)).where(queued, _unleased(now))
                )
            ).scalar_one_or_none()
            leased = (
                await session.execute(
                    select(func.min(QueueRecipient.leased_until)).where(
                        queued, QueueRecipient.leased_until > now
                    )
                )
            ).scalar_one_or_none()
        times = [t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (free, leased) if t is not None]
        if not times:
            return None
        return max(0.0, (min(times) - now).total_seconds())

    async def process_one(self, send: Sender) -> bool:
        """Claim and attempt one batch; False when nothing is due."""
        batch = await self.claim()
        if batch is None:
            return False
        delivered = asyncio.Event()
        heartbeat = asyncio.create_task(self._renew(batch, delivered))
        try:
            data = await self.rt.store.read_blob(batch.blob_id)
            outcomes = await send(batch, data)
        except MessageUnavailable as exc:
            await self._unavailable(exc, f"deliver queue entry {batch.message_id}")
            reply = "451 4.3.0 message file unavailable in this node's storage"
            outcomes = {r.id: Outcome("temporary", reply) for r in batch.recipients}
        except Exception as exc:
            log.exception("delivery attempt for queue entry %s failed", batch.message_id)
            outcomes = {r.id: Outcome("temporary", f"451 4.3.0 local error: {exc}") for r in batch.recipients}
        finally:
            delivered.set()  # not cancel(): a renewal half-way through its transaction ends cleanly
            await heartbeat
        await self.record(batch, outcomes)
        return True

    async def _renew(self, batch: Batch, delivered: asyncio.Event) -> None:
        """The heartbeat: push the lease forward every third of it until ``delivered`` is set."""
        ids = [r.id for r in batch.recipients]
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(delivered.wait(), self.lease.total_seconds() / 3)
            if delivered.is_set():
                return
            now = self.clock()
            try:
                async with self.rt.db.write(brief=True) as session:
                    renewed = (
                        await session.execute(
                            update(QueueRecipient)
                            .where(
                                QueueRecipient.id.in_(ids),
                                QueueRecipient.status == "queued",
                                QueueRecipient.lease_token == batch.token,
                            )
                            .values(leased_until=now + self.lease)
                        )
                    ).rowcount
            except Exception as exc:  # the database is away: try again at the next beat
                log.warning("lease of queue entry %s not renewed: %s", batch.message_id, exc)
                continue
            if not renewed:
                log.warning("queue entry %s: lease lost, another worker may deliver it too", batch.message_id)

    async def worker(self, send: Sender) -> None:
        """Deliver due batches until cancelled; sleeps until the next due entry (at most 5 s) or a wake-up."""
        while True:
            try:
                if await self.process_one(send):
                    continue
                wait = await self.seconds_to_next()
            except Exception:
                log.exception("queue worker error")
                wait = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(wait if wait is not None else 5.0, 5.0) or 0.01)
            self._wake.clear()

    # ------------------------------------------------------------------ administration

    async def entries(self) -> list[dict[str, Any]]:
        async with self.rt.db.read() as session:
            msgs = list((await session.execute(select(QueueMessage).order_by(QueueMessage.id))).scalars())
            rcpts = list(
                (await session.execute(select(QueueRecipient).order_by(QueueRecipient.id))).scalars()
            )
        by_msg: dict[int, list[QueueRecipient]] = {}
        for r in rcpts:
            by_msg.setdefault(r.message_id, []).append(r)
        return [
            {
                "id": m.id,
                "sender": m.sender,
                "created_at": m.created_at.isoformat(),
                "expires_at": m.expires_at.isoformat(),
                "envid": m.envid,
                "relay": m.relay,  # a patient alert, for [relay]
                "recipients": [
                    {
                        "address": r.address,
                        "status": r.status,
                        "attempts": r.attempts,
                        "next_attempt": r.next_attempt.isoformat(),
                        "last_reply": r.last_reply,
                    }
                    for r in by_msg.get(m.id, [])
                ],
            }
            for m in msgs
        ]

    async def retry(self, message_id: int | None = None) -> int:
        """Make queued recipients due now (all, or one entry's); returns how many. A row a worker is
        delivering right now (leased) is left alone: its outcome decides what comes next, and making it
        due would hand it to a second worker, which sends the message twice."""
        now = self.clock()
        q = (
            update(QueueRecipient)
            .where(QueueRecipient.status == "queued", _unleased(now))
            .values(next_attempt=now)
        )
        if message_id is not None:
            q = q.where(QueueRecipient.message_id == message_id)
        async with self.rt.db.write() as session:
            count = (await session.execute(q)).rowcount
        self.wake()
        return int(count or 0)

    async def delivering(self, message_id: int | None = None) -> int:
        """How many queued recipients (all, or one entry's) a worker holds right now."""
        now = self.clock()
        q = (
            select(func.count())
            .select_from(QueueRecipient)
            .where(QueueRecipient.status == "queued", QueueRecipient.leased_until > now)
        )
        if message_id is not None:
            q = q.where(QueueRecipient.message_id == message_id)
        async with self.rt.db.read() as session:
            return int((await session.execute(q)).scalar_one())

    async def delete(self, message_id: int) -> bool:
        """Drop an entry without any report (an operator's decision, audited by the caller)."""
        path = None
        async with self.rt.db.write() as session:
            msg = await session.get(QueueMessage, message_id, with_for_update=True)
            if msg is None:
                return False
            await session.execute(delete(QueueRecipient).where(QueueRecipient.message_id == message_id))
            await session.execute(delete(QueueMessage).where(QueueMessage.id == message_id))
            path = await session.run_sync(drop_blob_ref, msg.blob_id)
        if path:
            await asyncio.to_thread(self.rt.blobs.remove, path)
        return True


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _notify(value: str) -> set[str]:
    """The NOTIFY keywords of a recipient; without the parameter, FAILURE,DELAY (RFC 3461 §4.1)."""
    return set(filter(None, value.upper().split(","))) or {"FAILURE", "DELAY"}


def _reports(rows: list[QueueRecipient]) -> list[dsn.RecipientReport]:
    """Failed recipients wanting FAILURE, relayed ones wanting SUCCESS (RFC 3461 §4.1 defaults)."""
    out = []
    for r in rows:
        notify = _notify(r.notify)
        if r.status == "failed" and "FAILURE" in notify:
            status = "5.4.7" if r.last_reply.startswith("expired") else dsn.status_of(r.last_reply, True)
            if status.startswith("4"):
                status = "5" + status[1:]
            out.append(dsn.RecipientReport(r.address, "failed", status, r.last_reply, orcpt=r.orcpt))
        elif r.status == "relayed" and "SUCCESS" in notify:
            out.append(dsn.RecipientReport(r.address, "relayed", "2.0.0", r.last_reply, orcpt=r.orcpt))
    return out
