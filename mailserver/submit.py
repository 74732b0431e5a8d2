"""Committing an accepted message, the one path SMTP (MTA and submission) and the sending API share.

``commit_message`` writes the blob, every local copy and the outbound queue entries in one
transaction (``Delivery``), records patient conversations and wakes the queue; its caller answers
(SMTP 250, API 202) only after it returned: durable before acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailserver import conversations
from mailserver.delivery import Delivery, DeliveryResult, OnCommit
from mailserver.headers import HeaderView
from mailserver.policy import LocalTarget
from mailserver.queue.queue import Queue
from mailserver.runtime import Runtime
from mailserver.smtp.server import Recipient


async def commit_message(
    rt: Runtime,
    queue: Queue | None,
    sender: str,
    recipients: Sequence[Recipient],
    content: bytes,
    headers: HeaderView,
    *,
    source: str,
    remote_addr: str,
    patients: bool,
    envid: str | None = None,
    ret: str | None = None,
    smtputf8: bool = False,
    on_commit: OnCommit | None = None,
) -> DeliveryResult:
    """Store and queue ``content`` for every recipient (already checked by policy); ``on_commit`` writes
    the caller's own rows in the same transaction."""
    hook = queue.enqueue_hook(envid, ret, smtputf8) if queue else None
    delivery = Delivery(rt, sender, source=source, remote_addr=remote_addr, enqueue=hook, on_commit=on_commit)
    for r in recipients:
        if isinstance(r.target, LocalTarget):
            delivery.add_local(r.target)
        else:
            delivery.add_remote(r.target, {"notify": ",".join(r.notify), "orcpt": r.orcpt})
    try:
        await delivery.body(content)
        result = await delivery.commit()
    except BaseException:
        await delivery.abort()
        raise
    if patients and (result.delivered or result.queued):
        # Only a copy a patient holds may be linked: a patient's own message keeps none here (the
        # queue's copy is released after sending, and its id may then be reused by another message).
        patient_copy = any(
            isinstance(r.target, LocalTarget)
            and r.target.type == "PAT"
            and r.target.address in result.delivered
            for r in recipients
        )
        await conversations.record_message(
            rt,
            sender,
            [r.address for r in recipients],
            headers,
            blob_id=result.blob_id if patient_copy else None,
        )
    if result.queued and queue:
        queue.wake()
    return result
