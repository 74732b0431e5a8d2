"""Shared test helpers: hosted professionals and patients, and messages delivered the way SMTP will."""

from __future__ import annotations

import email.utils
import secrets
import struct
import zlib
from email.message import EmailMessage

from directory.models import DirectoryMailbox, Professional
from mailserver import accounts, conversations
from mailserver.delivery import Delivery
from mailserver.headers import HeaderView
from mailserver.policy import local_recipient
from mailserver.runtime import Runtime

PATIENT_INS = "262112B82955335"
OTHER_INS = "235037926101886"
PATIENT = f"{PATIENT_INS.lower()}@patient.a.mssante.test"
OTHER_PATIENT = f"{OTHER_INS.lower()}@patient.a.mssante.test"
DOCTOR = "dr.martin@a.mssante.test"
NURSE = "infirmiere@a.mssante.test"
PHARMACY = "pharmacie@a.mssante.test"
REMOTE_DOCTOR = "dr.bernard@b.mssante.test"


async def add_professional(
    rt: Runtime, address: str, rpps: str, last_name: str, first_name: str, skill: str, *, hosted: bool
) -> None:
    """A physician in the directory (as an import would make it), so pages show a name, not an address."""
    async with rt.db.write() as session:
        pro = Professional(
            identifier="8" + rpps,
            id_type="8",
            rpps=rpps,
            civility="DR",
            last_name=last_name,
            first_name=first_name,
            profession_label="Médecin",
            skill_label=skill,
            row_hash=b"0" * 16,
        )
        session.add(pro)
        await session.flush()
        session.add(
            DirectoryMailbox(
                address=address, type="PER", professional_id=pro.id, hosted=hosted, row_hash=b"0" * 16
            )
        )


async def populate(rt: Runtime) -> None:
    await accounts.add_mailbox(
        rt, DOCTOR, "PER", rpps="10000000009", display_name="Dr Martin", password="x" * 12
    )
    await accounts.add_mailbox(rt, NURSE, "ORG", display_name="Infirmière")
    await accounts.add_mailbox(
        rt, PHARMACY, "ORG", display_name="Pharmacie du Port", accepts_patient_first=True
    )
    await accounts.add_mailbox(rt, PATIENT, "PAT", display_name="PETIT Pierre")
    await accounts.add_mailbox(rt, OTHER_PATIENT, "PAT", display_name="GIRARD Émilie")


def build(
    sender: str,
    to: str,
    subject: str,
    body: str = "Bonjour",
    *,
    in_reply_to: str | None = None,
    extra: dict[str, str] | None = None,
    name: str = "",
    domain: str = "test",
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr((name, sender)) if name else sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@{domain}>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    for key, value in (extra or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg


async def send(rt: Runtime, msg: EmailMessage, recipients: list[str] | None = None) -> list[str]:
    """What the SMTP layer does: policy check, two-phase delivery to local mailboxes, then record."""
    sender = email.utils.parseaddr(msg["From"])[1]
    rcpts = recipients or [email.utils.parseaddr(msg["To"])[1]]
    headers = HeaderView.parse(bytes(msg))
    await conversations.check_message(rt, sender, rcpts, headers)
    delivery = Delivery(rt, sender, source="test")
    async with rt.db.read() as session:
        for rcpt in rcpts:
            target = await local_recipient(session, rcpt)
            if target is not None:
                delivery.add_local(target)
    await delivery.body(bytes(msg))
    result = await delivery.commit()
    return await conversations.record_message(
        rt,
        sender,
        rcpts,
        headers,
        blob_id=result.blob_id,
    )


def tiny_png() -> bytes:
    """A valid 1×1 PNG, made here (no fixture file)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )
