"""A conversation message never points at a blob that was deleted (its id could be reused)."""

from __future__ import annotations

from sqlalchemy import select

from mailserver import accounts, conversations
from mailserver.conversation_models import ConversationMessage
from mailserver.headers import HeaderView
from mailserver.runtime import Runtime

PATIENT = "262112b82955335@patient.a.mssante.test"


async def test_expunged_copy_is_unlinked(runtime: Runtime) -> None:
    pro = await accounts.add_mailbox(runtime, "dr.x@a.mssante.test", "PER", rpps="10000000009")
    patient = await accounts.add_mailbox(runtime, PATIENT, "PAT")
    headers = {"From": f"<{pro.address}>", "To": f"<{PATIENT}>", "Subject": "Bonjour", "Message-ID": "<m1@a>"}
    raw = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + "\r\nVos résultats.\r\n".encode()
    stored = await runtime.store.deliver(await runtime.store.prepare(raw), [patient.id])
    await conversations.record_message(
        runtime, pro.address, [PATIENT], HeaderView.parse(raw), blob_id=stored.blob_id
    )
    async with runtime.db.read() as session:
        assert (await session.execute(select(ConversationMessage.blob_id))).scalar_one() == stored.blob_id

    inbox = await runtime.store.folder(patient.id, "INBOX")
    await runtime.store.set_flags(inbox.id, [1], "add", {"\\Deleted"})
    await runtime.store.expunge(inbox.id)
    async with runtime.db.read() as session:
        assert (await session.execute(select(ConversationMessage.blob_id))).scalar_one() is None
