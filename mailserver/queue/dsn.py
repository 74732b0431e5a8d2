"""Delivery status notifications: RFC 3464 ``multipart/report`` messages (bounces, delays, successes).

A DSN is never sent for a message with a null sender (RFC 3461 §6.2, no loops), goes to a local mailbox
directly, and to a peer of the trust space through the outbound queue with a null sender. One report per
message lists every recipient concerned (RFC 3464 §2.3).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from mailserver.delivery import Delivery, EnqueueHook
from mailserver.logs import log_event, private, reply_code
from mailserver.policy import LocalTarget, Refusal, route_recipient
from mailserver.runtime import Runtime

log = logging.getLogger("caducee.dsn")

_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class RecipientReport:
    """One recipient's fate: ``action`` is failed, delayed, delivered or relayed (RFC 3464 §2.3.3)."""

    address: str
    action: str
    status: str
    diagnostic: str = ""
    remote_mta: str = ""
    orcpt: str | None = None
    will_retry_until: dt.datetime | None = None  # a delayed recipient: when the queue gives up


def status_of(reply: str, permanent: bool) -> str:
    """The RFC 3463 code of an SMTP reply, or a generic one from its class."""
    m = _ENHANCED.search(reply)
    if m:
        return m.group(1)
    return "5.0.0" if permanent else "4.0.0"


def _header_only(original: bytes) -> bytes:
    end = original.find(b"\r\n\r\n")
    return original if end < 0 else original[: end + 2]


def build(
    hostname: str,
    sender: str,
    reports: Sequence[RecipientReport],
    original: bytes,
    *,
    envid: str | None = None,
    ret: str | None = None,
    arrival: dt.datetime | None = None,
) -> bytes:
    """The report as CRLF bytes; the original is returned whole only for a failure with RET=FULL."""
    failed = any(r.action == "failed" for r in reports)
    delayed = not failed and any(r.action == "delayed" for r in reports)
    boundary = f"=_caducee_{uuid.uuid4().hex}"
    now = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    title = "Failure" if failed else "Delay" if delayed else "Success"
    intro = (
        "Your message could not be delivered to the following recipients:"
        if failed
        else "Your message has not been delivered yet to the following recipients; delivery is still "
        "being attempted and you will be told if it finally fails:"
        if delayed
        else "Your message was delivered to the following recipients:"
    )
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: Delivery Status Notification ({title})",
        f"Date: {now}",
        f"Message-ID: <{uuid.uuid4().hex}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        intro,
        "",
    ]
    for r in reports:
        lines.append(f"  <{r.address}>: {r.action}" + (f" ({r.diagnostic})" if r.diagnostic else ""))
    lines += ["", f"--{boundary}", "Content-Type: message/delivery-status", ""]
    lines.append(f"Reporting-MTA: dns; {hostname}")
    if envid:
        lines.append(f"Original-Envelope-Id: {envid}")
    if arrival:
        lines.append(f"Arrival-Date: {email.utils.format_datetime(arrival)}")
    for r in reports:
        lines.append("")
        if r.orcpt:
            lines.append(f"Original-Recipient: {r.orcpt}")
        lines += [f"Final-Recipient: rfc822; {r.address}", f"Action: {r.action}", f"Status: {r.status}"]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {' '.join(r.diagnostic.split())}")
        lines.append(f"Last-Attempt-Date: {now}")
        if r.will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {email.utils.format_datetime(r.will_retry_until)}")
    full = failed and ret == "FULL"
    lines += [
        "",
        f"--{boundary}",
        f"Content-Type: {'message/rfc822' if full else 'text/rfc822-headers'}",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    body = original if full else _header_only(original)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return head + body + f"--{boundary}--\r\n".encode()


async def send(
    rt: Runtime,
    enqueue_hook: EnqueueHook | None,
    sender: str,
    reports: Sequence[RecipientReport],
    original: bytes,
    *,
    envid: str | None = None,
    ret: str | None = None,
    arrival: dt.datetime | None = None,
) -> bool:
    """Deliver a report to ``sender`` (local mailbox, or a trust-space peer via the queue); True if sent."""
    if not sender or not reports:
        return False
    try:
        async with rt.db.read() as session:
            target = await route_recipient(session, sender, authenticated=True)
    except Refusal as refusal:
        log_event(
            "dsn-not-sent",
            logging.WARNING,
            reply=reply_code(refusal.smtp),
            **private(sender=sender, response=refusal.smtp),
        )
        return False
    data = build(
        rt.settings.server.hostname, sender, reports, original, envid=envid, ret=ret, arrival=arrival
    )
    delivery = Delivery(rt, "", source="dsn", enqueue=enqueue_hook)
    if isinstance(target, LocalTarget):
        delivery.add_local(target)
    else:
        delivery.add_remote(target, {"notify": "NEVER"})
    try:
        await delivery.body(data)
        result = await delivery.commit()
    except BaseException:
        await delivery.abort()
        raise
    return bool(result.delivered or result.queued)
