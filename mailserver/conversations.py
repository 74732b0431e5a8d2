"""Patient conversations: the one policy that SMTP, the portal, the API and IMAP keywords all apply.

- A conversation is between one professional address and one patient mailbox (``INS@patient-domain``).
  Only a professional opens one, by writing to the patient; a local ``ORG`` mailbox flagged
  ``accepts_patient_first`` (a pharmacy) may also be written to first by a patient.
- A patient writes only to a professional with an open conversation, and only as a reply within it:
  the message it answers (In-Reply-To, else the last of References) must belong to that conversation.
  The server, not the client, decides which conversation a message belongs to.
- The professional closes it with a message whose subject is exactly ``[FIN]``, a message carrying
  ``X-MSS-MES: FIN``, the keyword ``$MSSClosed`` on one of its messages in their own mailbox, or
  ``caducee conversation close``; the last two deliver a short notice to the patient. At most one
  conversation is open per pair, and the professional's next message after a close opens a new one.

Never put message content (bodies, subjects) in audit events: identifiers and states only.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailserver.conversation_models import CLOSED, CLOSED_BY, OPEN, Conversation, ConversationMessage
from mailserver.db.models import Domain, Folder, Mailbox, Message, utcnow
from mailserver.delivery import Delivery
from mailserver.headers import HeaderView, decode_header
from mailserver.policy import LocalTarget, Refusal
from mailserver.runtime import Runtime
from mailserver.store import mime

FIN_SUBJECT = "[FIN]"
FIN_HEADER = "X-MSS-MES"
CLOSE_KEYWORD = "$MSSClosed"
_MSG_ID = re.compile(r"<[^<>\s]+>")


class ConversationError(Exception):
    """A refused conversation request (unknown identifier), phrased for the operator."""


class ConversationRefused(Refusal):
    """A patient's message refused by the conversation rules; ``explanation`` is for the patient (French)."""

    def __init__(self, text: str, explanation: str) -> None:
        super().__init__(550, "5.7.1", text)
        self.explanation = explanation


@dataclass(frozen=True)
class ConversationView:
    public_id: str
    professional: str
    professional_name: str
    professional_mailbox_id: int | None
    patient_ins: str
    patient_mailbox_id: int
    subject: str
    state: str
    opened_at: dt.datetime
    closed_at: dt.datetime | None
    closed_by: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.public_id,
            "professional": self.professional,
            "professional_name": self.professional_name,
            "patient_ins": self.patient_ins,
            "subject": self.subject,
            "state": self.state,
            "opened_at": self.opened_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "closed_by": self.closed_by,
        }


def view(c: Conversation) -> ConversationView:
    return ConversationView(
        c.public_id,
        c.professional,
        c.professional_name,
        c.professional_mailbox_id,
        c.patient_ins,
        c.patient_mailbox_id,
        c.subject,
        c.state,
        c.opened_at,
        c.closed_at,
        c.closed_by,
    )


def message_ids(value: str | None) -> list[str]:
    return _MSG_ID.findall(value) if value else []


def closing_reason(headers: HeaderView) -> str | None:
    """``subject`` for a subject exactly ``[FIN]``, ``header`` for ``X-MSS-MES: FIN``, else None."""
    subject = headers.text("Subject")
    if subject is not None and subject.strip() == FIN_SUBJECT:
        return "subject"
    value = headers.get(FIN_HEADER)
    if value is not None and value.strip().upper() == "FIN":
        return "header"
    return None


def _domain(address: str) -> str:
    return address.strip().rpartition("@")[2].lower().rstrip(".")


def _norm(address: str) -> str:
    return address.strip().lower()


async def _patient_domains(session: AsyncSession) -> set[str]:
    return set((await session.execute(select(Domain.name).where(Domain.patients.is_(True)))).scalars())


async def _mailbox(session: AsyncSession, address: str) -> Mailbox | None:
    return (
        await session.execute(select(Mailbox).where(Mailbox.address == _norm(address)))
    ).scalar_one_or_none()


async def _open_conversation(
    session: AsyncSession, patient_mailbox_id: int, professional: str
) -> Conversation | None:
    return (
        await session.execute(
            select(Conversation).where(
                Conversation.patient_mailbox_id == patient_mailbox_id,
                Conversation.professional == professional,
                Conversation.state == OPEN,
            )
        )
    ).scalar_one_or_none()


async def _accepts_patient_first(session: AsyncSession, address: str) -> bool:
    mb = await _mailbox(session, address)
    return mb is not None and mb.enabled and mb.type == "ORG" and mb.accepts_patient_first


async def check_message(
    session_or_rt: AsyncSession | Runtime,
    sender: str,
    recipients: Sequence[str],
    headers: HeaderView | None,
) -> None:
    """Refuse (``ConversationRefused``, 550 5.7.1) a patient's message outside an open conversation.

    Messages from anyone else pass untouched. ``headers=None`` is the envelope-only check (at RCPT):
    it refuses what no header could make acceptable; with the headers (end of DATA, portal) the
    message must also answer a message of that very conversation.
    """
    if isinstance(session_or_rt, Runtime):
        async with session_or_rt.db.read() as session:
            await check_message(session, sender, recipients, headers)
        return
    session = session_or_rt
    patient_domains = await _patient_domains(session)
    if _domain(sender) not in patient_domains:
        return
    patient = await _mailbox(session, sender)
    if patient is None or not patient.enabled:
        raise ConversationRefused(
            f"<{sender}>: unknown patient mailbox", "Ce compte patient n'existe pas ou est désactivé."
        )
    answered = None
    if headers is not None:
        answered = (message_ids(headers.get("In-Reply-To")) or message_ids(headers.get("References")))[-1:]
    for rcpt in recipients:
        address = _norm(rcpt)
        if _domain(address) in patient_domains:
            raise ConversationRefused(
                f"<{address}>: a patient may write only to a professional",
                "Vous ne pouvez écrire qu'aux professionnels de santé qui vous ont écrit.",
            )
        if await _accepts_patient_first(session, address):
            continue
        conv = await _open_conversation(session, patient.id, address)
        if conv is None:
            raise ConversationRefused(
                f"<{address}>: no open conversation with this professional (only a professional starts one)",
                "Vous ne pouvez pas écrire à ce professionnel : seul un professionnel peut commencer une "
                "conversation, et celle-ci est close ou n'existe pas. Il doit d'abord vous écrire.",
            )
        if headers is None:
            continue
        if not answered:
            raise ConversationRefused(
                f"<{address}>: a patient may only reply within the open conversation",
                "Votre message doit être une réponse dans la conversation ouverte avec ce professionnel.",
            )
        linked = (
            await session.execute(
                select(ConversationMessage.conversation_id).where(
                    ConversationMessage.message_id == answered[0]
                )
            )
        ).scalars()
        if conv.id not in set(linked):
            raise ConversationRefused(
                f"<{address}>: the message answered does not belong to the open conversation",
                "Ce message ne répond pas à la conversation ouverte avec ce professionnel.",
            )


def _new_conversation(
    professional: str, name: str, professional_mb: Mailbox | None, patient: Mailbox, subject: str
) -> Conversation:
    return Conversation(
        # Hex: safe in URLs, and never starts with "-" (an id like "-MkZ…" read as an option by the CLI).
        public_id=secrets.token_hex(12),
        professional=professional,
        professional_name=name[:300],
        professional_mailbox_id=professional_mb.id if professional_mb else None,
        patient_ins=patient.address.partition("@")[0].upper(),
        patient_mailbox_id=patient.id,
        subject=subject[:500],
        state=OPEN,
        opened_at=utcnow(),
    )


def _display_name(headers: HeaderView) -> str:
    """The decoded display name of the first From mailbox: parsed first, then RFC 2047-decoded, so an
    encoded word cannot forge the address part."""
    first = next((a for a in mime.parse_addresses(headers.get("From")) or [] if a[3] is not None), None)
    return decode_header(first[0]).strip() if first and first[0] else ""


async def record_message(
    rt: Runtime,
    sender: str,
    recipients: Sequence[str],
    headers: HeaderView,
    *,
    blob_id: int | None = None,
) -> list[str]:
    """Follow a committed message in its conversations; returns the public ids it touched.

    Professional → local patient: joins the open conversation of the pair or opens one, and closes it
    when the message is a ``[FIN]`` / ``X-MSS-MES: FIN`` one. Patient → professional (already allowed by
    ``check_message``): linked to the open conversation (or opens one with a pharmacy that accepts it).
    ``blob_id`` is the patient's copy (the delivered blob, or their Sent copy for their own messages).
    Messages between professionals cost one query and are ignored.
    """
    ids = message_ids(headers.get("Message-ID"))
    msg_id = ids[0] if ids else f"<caducee-{secrets.token_hex(12)}@no-message-id>"
    subject = (headers.text("Subject") or "").strip()
    reason = closing_reason(headers)
    touched: list[str] = []
    audit: list[tuple[str, str, str]] = []
    now = utcnow()
    async with rt.db.write() as session:
        patient_domains = await _patient_domains(session)
        sender_address = _norm(sender)
        if _domain(sender_address) in patient_domains:
            patient = await _mailbox(session, sender_address)
            if patient is None:
                return []
            await session.execute(select(Mailbox.id).where(Mailbox.id == patient.id).with_for_update())
            for rcpt in recipients:
                address = _norm(rcpt)
                conv = await _open_conversation(session, patient.id, address)
                if conv is None:
                    pro = await _mailbox(session, address)
                    if pro is None or not (pro.type == "ORG" and pro.accepts_patient_first):
                        continue
                    conv = _new_conversation(address, pro.display_name, pro, patient, subject)
                    session.add(conv)
                    await session.flush()
                    audit.append((sender_address, conv.public_id, "opened by the patient (pharmacy)"))
                session.add(
                    ConversationMessage(
                        conversation_id=conv.id, message_id=msg_id, direction="out", blob_id=blob_id, at=now
                    )
                )
                touched.append(conv.public_id)
            return touched
        name = _display_name(headers)
        pro_mb = None
        for rcpt in recipients:
            address = _norm(rcpt)
            if _domain(address) not in patient_domains:
                continue
            patient = await _mailbox(session, address)
            if patient is None or patient.type != "PAT":
                continue
            await session.execute(select(Mailbox.id).where(Mailbox.id == patient.id).with_for_update())
            conv = await _open_conversation(session, patient.id, sender_address)
            if conv is None:
                pro_mb = pro_mb or await _mailbox(session, sender_address)
                conv = _new_conversation(
                    sender_address, name or (pro_mb.display_name if pro_mb else ""), pro_mb, patient, subject
                )
                session.add(conv)
                await session.flush()
                audit.append((sender_address, conv.public_id, "opened"))
            elif name and not conv.professional_name:
                conv.professional_name = name[:300]
            session.add(
                ConversationMessage(
                    conversation_id=conv.id, message_id=msg_id, direction="in", blob_id=blob_id, at=now
                )
            )
            if reason is not None:
                conv.state, conv.closed_at, conv.closed_by = CLOSED, now, reason
                audit.append((sender_address, conv.public_id, f"closed by {reason}"))
            touched.append(conv.public_id)
    for actor, public_id, what in audit:
        await rt.audit.record(actor, "conversation", "", f"conversation {public_id}", what)
    return touched


def _notice(conv: Conversation, patient_address: str, last_id: str | None, hostname: str) -> bytes:
    """The short French notice a patient receives when a conversation is closed other than by a message."""
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr(
        ("Messagerie Caducée", f"ne-pas-repondre@{_domain(patient_address)}")
    )
    msg["To"] = patient_address
    msg["Subject"] = FIN_SUBJECT
    msg["Date"] = email.utils.format_datetime(utcnow())
    msg["Message-ID"] = f"<close-{conv.public_id}-{secrets.token_hex(6)}@{hostname}>"
    if last_id:
        msg["In-Reply-To"] = last_id
        msg["References"] = last_id
    msg["Auto-Submitted"] = "auto-generated"
    msg[FIN_HEADER] = "FIN"
    who = conv.professional_name or "Le professionnel"
    msg.set_content(
        f"{who} a clos cette conversation.\n\n"
        "Vous ne pouvez plus y répondre. Si un nouvel échange est nécessaire, le professionnel vous "
        "écrira : une nouvelle conversation s'ouvrira alors.\n"
    )
    return bytes(msg)


async def close(rt: Runtime, conversation_id: str, by: str, *, actor: str = "admin") -> None:
    """Close a conversation by its public id; closed other than by a message, the patient gets a notice.

    Closing a closed conversation changes nothing (a keyword set twice, two administrators).
    """
    if by not in CLOSED_BY:
        raise ValueError(f"closed_by must be one of {CLOSED_BY}")
    async with rt.db.write() as session:
        conv = (
            await session.execute(
                select(Conversation).where(Conversation.public_id == conversation_id).with_for_update()
            )
        ).scalar_one_or_none()
        if conv is None:
            raise ConversationError(f"no conversation {conversation_id}")
        if conv.state == CLOSED:
            return
        conv.state, conv.closed_at, conv.closed_by = CLOSED, utcnow(), by
        patient = await session.get(Mailbox, conv.patient_mailbox_id)
        last_id = (
            await session.execute(
                select(ConversationMessage.message_id)
                .where(ConversationMessage.conversation_id == conv.id)
                .order_by(ConversationMessage.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    await rt.audit.record(actor, "conversation", "", f"conversation {conv.public_id}", f"closed by {by}")
    if by in ("subject", "header") or patient is None:
        return
    data = _notice(conv, patient.address, last_id, rt.settings.server.hostname)
    delivery = Delivery(rt, "", source="conversation-close")
    delivery.add_local(LocalTarget(patient.address, patient.id, patient.type))
    await delivery.body(data)
    result = await delivery.commit()
    async with rt.db.write() as session:
        session.add(
            ConversationMessage(
                conversation_id=conv.id,
                message_id=message_ids(HeaderView.parse(data).get("Message-ID"))[0],
                direction="in",
                kind="notice",
                blob_id=result.blob_id,
                at=utcnow(),
            )
        )


def closes(flags: Iterable[str]) -> bool:
    """Whether a flag list carries the closing keyword (IMAP keywords are case-insensitive)."""
    return any(f.lower() == CLOSE_KEYWORD.lower() for f in flags)


async def on_flags_changed(rt: Runtime, mailbox_id: int, folder_id: int, uids: Sequence[int]) -> None:
    """After IMAP STORE: ``$MSSClosed`` on a message in the professional's mailbox closes its conversation."""
    async with rt.db.read() as session:
        rows = (
            await session.execute(
                select(Message.uid, Message.blob_id, Message.flags)
                .join(Folder, Folder.id == Message.folder_id)
                .where(
                    Message.folder_id == folder_id,
                    Folder.mailbox_id == mailbox_id,
                    Message.uid.in_(list(uids)),
                )
            )
        ).all()
        blob_ids = [blob_id for _uid, blob_id, flags in rows if closes(flags.split())]
        if not blob_ids:
            return
        actor = (await session.execute(select(Mailbox.address).where(Mailbox.id == mailbox_id))).scalar_one()
    metas = await rt.store.blob_metas(blob_ids)
    ids = {m["headers"]["message_id"] for m in metas.values() if m["headers"].get("message_id")}
    if not ids:
        return
    async with rt.db.read() as session:
        to_close = set(
            (
                await session.execute(
                    select(Conversation.public_id)
                    .join(ConversationMessage, ConversationMessage.conversation_id == Conversation.id)
                    .where(
                        ConversationMessage.message_id.in_(ids),
                        Conversation.professional_mailbox_id == mailbox_id,
                        Conversation.state == OPEN,
                    )
                )
            ).scalars()
        )
    for public_id in sorted(to_close):
        await close(rt, public_id, "keyword", actor=actor)


async def list_conversations(
    rt: Runtime, *, patient: str | None = None, mailbox: str | None = None, state: str | None = None
) -> list[ConversationView]:
    """Conversations for the CLI: of one patient (INS), of one professional address, in one state."""
    q = select(Conversation).order_by(Conversation.opened_at, Conversation.id)
    if patient:
        q = q.where(Conversation.patient_ins == patient.strip().upper())
    if mailbox:
        q = q.where(Conversation.professional == _norm(mailbox))
    if state:
        q = q.where(Conversation.state == state)
    async with rt.db.read() as session:
        return [view(c) for c in (await session.execute(q)).scalars()]
