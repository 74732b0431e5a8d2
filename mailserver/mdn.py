"""Message disposition notifications (RFC 8098): read receipts a patient sends from the portal, and the
receipts that come back for messages sent through the API.

- Asking: a message asks for a receipt with ``Disposition-Notification-To`` (any header case). The
  portal offers to send one only when that address is the message's author (its From, or Sender):
  a receipt tells that the patient read the message, which nobody else than the professional who
  wrote it is to learn (RFC 8098 §2.1 lets the user agent decline; §6.2 on privacy).
- Building: ``multipart/report; report-type=disposition-notification`` with a human-readable part,
  the ``message/disposition-notification`` fields (Reporting-UA, Original-Recipient when known,
  Final-Recipient, Original-Message-ID, ``Disposition: manual-action/MDN-sent-manually; displayed``)
  and the original's header (``text/rfc822-headers``), from a null envelope sender (RFC 8098 §3).
- Receiving: every delivery looks (cheaply) whether the message is such a report; when it reaches the
  mailbox that sent an API message whose Message-ID the report names, for one of that message's
  recipients, the disposition is recorded (``api_receipt``) in the delivery's own transaction, from
  the portal or from a peer over SMTP alike.
"""

from __future__ import annotations

import datetime as dt
import email.header
import email.policy
import email.utils
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from mailserver.api_models import APIMessage, APIReceipt, APIRecipient
from mailserver.db.models import utcnow
from mailserver.headers import HeaderView, header_end

REPORT_MAX = 1024 * 1024  # a report is a few KiB; a larger one is not parsed for receipts
_DISPOSITION = re.compile(
    r"^\s*(?P<mode>[a-z-]+/[a-z-]+)\s*;\s*(?P<type>[a-z-]+)(?:/[a-z-,\s]+)?\s*$", re.IGNORECASE
)
DISPOSITIONS = ("displayed", "deleted", "dispatched", "processed")  # RFC 8098 §3.2.6.2


@dataclass(frozen=True)
class Request:
    """A message's request for a receipt: where it goes, and what identifies the message."""

    to: str
    message_id: str


@dataclass(frozen=True)
class Receipt:
    """The fields of a received MDN that matter to the API's message state."""

    original_message_id: str
    final_recipient: str
    disposition: str
    mode: str


def _address(value: str | None) -> str:
    if not value:
        return ""
    _name, addr = email.utils.parseaddr(value)
    return addr.strip().lower() if "@" in addr else ""


def requested(headers: HeaderView) -> Request | None:
    """The receipt a message asks for, when it names its own author (From or Sender) as the one to
    tell; None otherwise (no request, several addresses, or a third party)."""
    field = headers.get("Disposition-Notification-To")
    if not field or len(email.utils.getaddresses([field])) != 1:
        return None
    to = _address(field)
    if not to or to not in {_address(headers.get("From")), _address(headers.get("Sender"))}:
        return None
    return Request(to, (headers.get("Message-ID") or "").strip())


def _encoded(text: str) -> str:
    return email.header.Header(text, "utf-8").encode() if not text.isascii() else text


def build(
    hostname: str,
    patient: str,
    request: Request,
    original: bytes,
    *,
    disposition: str = "displayed",
    now: dt.datetime | None = None,
) -> bytes:
    """A ``displayed`` MDN sent manually (the patient said yes) from ``patient``, as CRLF bytes."""
    headers = HeaderView.parse(original)
    subject = " ".join((headers.text("Subject") or "").split())[:200]
    sent = " ".join(headers.get("Date", "").split())[:100]
    boundary = f"=_caducee_mdn_{uuid.uuid4().hex}"
    date = email.utils.format_datetime(now or dt.datetime.now(dt.UTC))
    lines = [
        f"From: <{patient}>",
        f"To: <{request.to}>",
        f"Subject: {_encoded('Accusé de lecture : ' + subject if subject else 'Accusé de lecture')}",
        f"Date: {date}",
        f"Message-ID: <{uuid.uuid4().hex}@{hostname}>",
        *(
            [f"In-Reply-To: {request.message_id}", f"References: {request.message_id}"]
            if request.message_id
            else []
        ),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=disposition-notification; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"Votre message{' du ' + sent if sent else ''} a été affiché par son destinataire"
        f" <{patient}> le {date}.",
        "Cela ne garantit pas que le message a été lu ou compris.",
        "",
        f"--{boundary}",
        "Content-Type: message/disposition-notification",
        "",
        f"Reporting-UA: {hostname}; Caducée portail patient",
    ]
    original_recipient = headers.get("Original-Recipient")
    if original_recipient:
        lines.append(f"Original-Recipient: {' '.join(original_recipient.split())}")
    lines.append(f"Final-Recipient: rfc822; {patient}")
    if request.message_id:
        lines.append(f"Original-Message-ID: {request.message_id}")
    lines += [
        f"Disposition: manual-action/MDN-sent-manually; {disposition}",
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    original_head = original[: header_end(original)].rstrip(b"\r\n") + b"\r\n"
    return head + original_head + f"\r\n--{boundary}--\r\n".encode()


def parse(data: bytes) -> Receipt | None:
    """The receipt ``data`` carries, or None: only a ``multipart/report`` of report-type
    ``disposition-notification`` (checked on the header first, so ordinary mail costs one scan)."""
    end = header_end(data)
    if b"disposition-notification" not in data[:end].lower() or len(data) > REPORT_MAX:
        return None
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/report":
        return None
    if (msg.get_param("report-type") or "").lower() != "disposition-notification":
        return None
    parts = msg.get_payload()
    if not isinstance(parts, list):
        return None
    for part in parts:
        if isinstance(part, Message) and part.get_content_type() == "message/disposition-notification":
            receipt = _fields(part)
            # Only the recipient tells that they read it: the report's author (its From, which
            # submission and the portal hold to the sender's own addresses, as each operator of the
            # trust space does) must be its Final-Recipient, else anyone could answer for them.
            if receipt is None or _address(msg.get("From")) != receipt.final_recipient:
                return None
            return receipt
    return None


def _fields(part: Message) -> Receipt | None:
    payload = part.get_payload()
    blocks = payload if isinstance(payload, list) else []
    if not blocks:
        return None
    fields: dict[str, str] = {}
    for block in blocks:
        for name, value in block.items():
            fields.setdefault(name.lower(), " ".join(str(value).split()))
    disposition = _DISPOSITION.match(fields.get("disposition", ""))
    recipient = fields.get("final-recipient", "")
    original = fields.get("original-message-id", "")
    if disposition is None or ";" not in recipient or not original:
        return None
    kind = disposition.group("type").lower()
    if kind not in DISPOSITIONS:
        return None
    address = recipient.split(";", 1)[1].strip().lower()
    return Receipt(original[:998], address[:320], kind, disposition.group("mode")[:100])


def record(session: Session, receipt: Receipt, mailboxes: Iterable[tuple[int, str]]) -> int:
    """In the delivery's transaction: the receipt for the API message it answers, when one of the
    receiving ``(mailbox id, address)`` sent it (as itself or as a mailbox it may send as) to the
    report's Final-Recipient; one row per recipient and disposition. Returns the rows written."""
    mailboxes = list(mailboxes)
    ids = [m for m, _a in mailboxes]
    addresses = [a.lower() for _m, a in mailboxes]
    messages = session.execute(
        select(APIMessage.id).where(
            APIMessage.message_id == receipt.original_message_id,
            or_(APIMessage.mailbox_id.in_(ids), func.lower(APIMessage.sender).in_(addresses)),
        )
    ).scalars()
    written = 0
    for message_id in messages:
        known = session.execute(
            select(APIRecipient.id).where(
                APIRecipient.message_id == message_id,
                func.lower(APIRecipient.address) == receipt.final_recipient,
            )
        ).first()
        if known is None:
            continue
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        values = {
            "message_id": message_id,
            "address": receipt.final_recipient,
            "disposition": receipt.disposition,
            "mode": receipt.mode,
            "received_at": utcnow(),
        }
        result = session.execute(insert(APIReceipt).values(**values).on_conflict_do_nothing())
        written += result.rowcount or 0
    return written


async def received(session: AsyncSession, api_message_id: str) -> dict[str, list[dict[str, str]]]:
    """The receipts recorded for an API message, by recipient address (lower case), oldest first."""
    rows = (
        await session.execute(
            select(APIReceipt).where(APIReceipt.message_id == api_message_id).order_by(APIReceipt.id)
        )
    ).scalars()
    out: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault(r.address, []).append(
            {"disposition": r.disposition, "mode": r.mode, "received_at": r.received_at.isoformat()}
        )
    return out
