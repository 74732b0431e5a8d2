"""Two-phase delivery of one message, the same for every entry point (as maddy's delivery interface).

    delivery = Delivery(rt, sender, source="mta:b.mssante.test", remote_addr="127.0.0.1")
    delivery.add_local(target) / delivery.add_remote(target, ...)   # recipients, already checked by policy
    await delivery.body(data)                                        # blob written and fsync'ed once
    result = await delivery.commit()                                 # one transaction for everything
    # or: await delivery.abort()

``commit`` writes the message rows of every local recipient and, through the outbound queue's
``enqueue`` hook, the queue rows of the remote ones in the same transaction, so an SMTP 250 sent after
``commit`` returns means every recipient's copy is durable. One blob serves them all. A patient's
new-message alert (``mailserver.alerts``) is queued in that transaction too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from mailserver import alerts, mdn
from mailserver.policy import LocalTarget, Refusal, RemoteTarget
from mailserver.runtime import Runtime
from mailserver.store.store import DeliveryResult as StoreResult
from mailserver.store.store import PreparedBlob

# enqueue(session, blob_id, sender, remote recipients with their options) inside the commit transaction
# (synchronous code: see ``Store.deliver``).
# It returns the queue entry's id (None when it keeps none).
EnqueueHook = Callable[[Session, int, str, list[tuple[RemoteTarget, dict[str, Any]]]], int | None]
# on_commit(session, blob_id, store result, queue entry id): a caller's rows in the same transaction.
OnCommit = Callable[[Session, int, StoreResult, int | None], None]


@dataclass
class DeliveryResult:
    """What happened to each recipient: local UIDs, queued remote recipients, refusals."""

    delivered: dict[str, int] = field(default_factory=dict)
    queued: list[str] = field(default_factory=list)
    refused: dict[str, Refusal] = field(default_factory=dict)
    blob_id: int | None = None


class Delivery:
    def __init__(
        self,
        rt: Runtime,
        sender: str,
        source: str,
        remote_addr: str = "",
        enqueue: EnqueueHook | None = None,
        on_commit: OnCommit | None = None,
    ) -> None:
        self.rt = rt
        self.sender = sender
        self.source = source
        self.remote_addr = remote_addr
        self.enqueue = enqueue
        self.on_commit = on_commit
        self.local: dict[int, LocalTarget] = {}
        self.remote: list[tuple[RemoteTarget, dict[str, Any]]] = []
        self.prepared: PreparedBlob | None = None
        self.folder = "INBOX"
        self.flags: tuple[str, ...] = ()
        self.receipt: mdn.Receipt | None = None  # the message is a read receipt (RFC 8098)

    def add_local(self, target: LocalTarget) -> None:
        self.local.setdefault(target.mailbox_id, target)

    def add_remote(self, target: RemoteTarget, options: dict[str, Any] | None = None) -> None:
        if self.enqueue is None:
            raise Refusal(550, "5.7.1", f"<{target.address}>: relaying denied")
        self.remote.append((target, options or {}))

    @property
    def recipient_count(self) -> int:
        return len(self.local) + len(self.remote)

    async def body(self, data: bytes) -> None:
        """Write the message once, durably, and parse it once; nothing is visible before commit."""
        if self.prepared is not None:
            raise RuntimeError("body() called twice for one delivery")
        self.prepared = await self.rt.store.prepare(data)
        self.receipt = mdn.parse(data)

    async def commit(self) -> DeliveryResult:
        if self.prepared is None:
            raise RuntimeError("commit() before body()")
        prepared, self.prepared = self.prepared, None
        remote = list(self.remote)
        enqueue, on_commit = self.enqueue, self.on_commit
        patients = any(t.type == "PAT" for t in self.local.values())
        alerted: list[str] = []
        receipt, local = self.receipt, self.local

        def in_transaction(session: Session, blob_id: int, stored: StoreResult) -> None:
            if patients:  # the patients' alerts commit with the message (mailserver/alerts.py)
                delivered = [self.local[m] for m in stored.uids if m in self.local]
                alerted[:] = alerts.queue_alerts(session, self.rt, self.sender, delivered)
            entry = None
            if remote:
                assert enqueue is not None  # add_remote refuses remote recipients without a queue
                entry = enqueue(session, blob_id, self.sender, remote)
            if receipt is not None:  # for a message sent through the API (mailserver/mdn.py)
                mdn.record(session, receipt, [(m, local[m].address) for m in stored.uids if m in local])
            if on_commit is not None:
                on_commit(session, blob_id, stored, entry)

        request = f"from <{self.sender}> via {self.source}"
        stored = await self.rt.store.deliver(
            prepared,
            list(self.local),
            folder=self.folder,
            flags=self.flags,
            extra_refs=1 if remote else 0,
            in_transaction=in_transaction if remote or on_commit or patients or receipt else None,
            trace=(self.remote_addr, request),
        )
        result = DeliveryResult(blob_id=stored.blob_id, queued=[t.address for t, _ in remote])
        for mailbox_id, target in self.local.items():
            if mailbox_id in stored.uids:
                result.delivered[target.address] = stored.uids[mailbox_id]
            else:
                result.refused[target.address] = Refusal(452, "4.2.2", f"<{target.address}>: mailbox full")
        self.rt.metrics.delivered("local", len(result.delivered))
        for outcome in alerted:
            self.rt.metrics.patient_alert(outcome)
        if "queued" in alerted:
            self.rt.queue.wake()
        if stored.blob_id is None:
            # Nothing was kept (every recipient full), so no transaction carried the audit events.
            for address, refusal in result.refused.items():
                await self.rt.audit.record(
                    address,
                    "receive",
                    self.remote_addr,
                    request,
                    refusal.smtp,
                )
        return result

    async def abort(self) -> None:
        """Forget the delivery; a blob already written is removed (no row ever referenced it)."""
        if self.prepared is not None:
            prepared, self.prepared = self.prepared, None
            await self.rt.store.discard(prepared)
