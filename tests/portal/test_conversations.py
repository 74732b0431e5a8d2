"""Conversation rules, on SQLite and PostgreSQL: who opens, who may answer, every way of closing."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from mailserver import conversations
from mailserver.conversation_models import Conversation, ConversationMessage
from mailserver.conversations import ConversationRefused
from mailserver.db.models import Folder, Mailbox
from mailserver.runtime import Runtime
from tests.portal.helpers import (
    DOCTOR,
    NURSE,
    OTHER_PATIENT,
    PATIENT,
    PATIENT_INS,
    PHARMACY,
    REMOTE_DOCTOR,
    build,
    populate,
    send,
)


@pytest.fixture
async def rt(runtime: Runtime) -> Runtime:
    await populate(runtime)
    return runtime


async def _inbox_count(rt: Runtime, address: str) -> int:
    async with rt.db.read() as session:
        mb_id = (await session.execute(select(Mailbox.id).where(Mailbox.address == address))).scalar_one()
        folder_id = (
            await session.execute(select(Folder.id).where(Folder.mailbox_id == mb_id, Folder.name == "INBOX"))
        ).scalar_one()
    _info, msgs = await rt.store.snapshot(folder_id)
    return len(msgs)


async def test_professional_opens_and_patient_replies(rt: Runtime) -> None:
    first = build(DOCTOR, PATIENT, "Résultats", name="Dr Martin")
    [conv_id] = await send(rt, first)
    [listed] = await conversations.list_conversations(rt, patient=PATIENT_INS)
    assert (listed.public_id, listed.state, listed.professional, listed.professional_name) == (
        conv_id,
        "open",
        DOCTOR,
        "Dr Martin",
    )
    reply = build(PATIENT, DOCTOR, "Re: Résultats", in_reply_to=first["Message-ID"])
    assert await send(rt, reply) == [conv_id]
    assert await _inbox_count(rt, DOCTOR) == 1
    again = build(DOCTOR, PATIENT, "Re: Re: Résultats", in_reply_to=reply["Message-ID"])
    assert await send(rt, again) == [conv_id]
    # Usable as a CLI argument and in URLs: never a leading "-" that click would read as an option.
    assert re.fullmatch(r"[0-9a-f]{24}", conv_id)


async def test_remote_professional_opens(rt: Runtime) -> None:
    [conv_id] = await send(rt, build(REMOTE_DOCTOR, PATIENT, "Bonjour"))
    [c] = await conversations.list_conversations(rt, mailbox=REMOTE_DOCTOR)
    assert c.public_id == conv_id and c.professional_mailbox_id is None


async def test_patient_writing_first_is_refused(rt: Runtime) -> None:
    with pytest.raises(ConversationRefused) as exc:
        await send(rt, build(PATIENT, DOCTOR, "Question"))
    assert exc.value.smtp.startswith("550 5.7.1 ")
    assert "professionnel" in exc.value.explanation
    with pytest.raises(ConversationRefused):
        await conversations.check_message(rt, PATIENT, [REMOTE_DOCTOR], None)
    assert await _inbox_count(rt, DOCTOR) == 0


async def test_patient_may_not_write_to_a_patient(rt: Runtime) -> None:
    with pytest.raises(ConversationRefused):
        await conversations.check_message(rt, PATIENT, [OTHER_PATIENT], None)


async def test_patient_must_reply_within_the_conversation(rt: Runtime) -> None:
    await send(rt, build(DOCTOR, PATIENT, "Résultats"))
    await conversations.check_message(rt, PATIENT, [DOCTOR], None)
    with pytest.raises(ConversationRefused, match="only reply"):
        await send(rt, build(PATIENT, DOCTOR, "Nouvelle question"))


async def test_reply_pointed_at_another_conversation_is_refused(rt: Runtime) -> None:
    doctor_msg = build(DOCTOR, PATIENT, "Résultats")
    await send(rt, doctor_msg)
    nurse_msg = build(NURSE, PATIENT, "Pansement")
    await send(rt, nurse_msg)
    other_patient_msg = build(DOCTOR, OTHER_PATIENT, "Autre patient")
    await send(rt, other_patient_msg)
    with pytest.raises(ConversationRefused, match="does not belong"):
        await send(rt, build(PATIENT, DOCTOR, "Re: Pansement", in_reply_to=nurse_msg["Message-ID"]))
    with pytest.raises(ConversationRefused, match="does not belong"):
        await send(rt, build(PATIENT, DOCTOR, "Re", in_reply_to=other_patient_msg["Message-ID"]))
    with pytest.raises(ConversationRefused, match="does not belong"):
        await send(rt, build(PATIENT, DOCTOR, "Re", in_reply_to="<forged@test>"))


async def test_pharmacy_accepts_a_patient_first(rt: Runtime) -> None:
    first = build(PATIENT, PHARMACY, "Ordonnance")
    [conv_id] = await send(rt, first)
    assert await _inbox_count(rt, PHARMACY) == 1
    answer = build(PHARMACY, PATIENT, "Re: Ordonnance", in_reply_to=first["Message-ID"])
    assert await send(rt, answer) == [conv_id]
    with pytest.raises(ConversationRefused):
        await send(rt, build(PATIENT, NURSE, "Question"))


@pytest.mark.parametrize(
    ("subject", "extra", "closed_by"),
    [("[FIN]", {}, "subject"), (" [FIN] ", {}, "subject"), ("Dernier mot", {"X-MSS-MES": "FIN"}, "header")],
)
async def test_closing_message(rt: Runtime, subject: str, extra: dict[str, str], closed_by: str) -> None:
    first = build(DOCTOR, PATIENT, "Résultats")
    [conv_id] = await send(rt, first)
    await send(rt, build(DOCTOR, PATIENT, subject, extra=extra, in_reply_to=first["Message-ID"]))
    [c] = await conversations.list_conversations(rt, patient=PATIENT_INS)
    assert (c.public_id, c.state, c.closed_by) == (conv_id, "closed", closed_by)
    assert await _inbox_count(rt, PATIENT) == 2
    with pytest.raises(ConversationRefused, match="no open conversation"):
        await send(rt, build(PATIENT, DOCTOR, "Re", in_reply_to=first["Message-ID"]))
    [new_id] = await send(rt, build(DOCTOR, PATIENT, "Nouvelle consultation"))
    assert new_id != conv_id
    assert [c.state for c in await conversations.list_conversations(rt, patient=PATIENT_INS)] == [
        "closed",
        "open",
    ]


async def test_fin_in_a_longer_subject_does_not_close(rt: Runtime) -> None:
    await send(rt, build(DOCTOR, PATIENT, "Résultats"))
    await send(rt, build(DOCTOR, PATIENT, "[FIN] ou pas", extra={"X-MSS-MES": "NON"}))
    assert [c.state for c in await conversations.list_conversations(rt)] == ["open"]


async def test_cli_close_delivers_a_notice(rt: Runtime) -> None:
    first = build(DOCTOR, PATIENT, "Résultats")
    [conv_id] = await send(rt, first)
    await conversations.close(rt, conv_id, "cli")
    [c] = await conversations.list_conversations(rt, state="closed")
    assert (c.public_id, c.closed_by) == (conv_id, "cli")
    assert await _inbox_count(rt, PATIENT) == 2
    async with rt.db.read() as session:
        kinds = list(
            (
                await session.execute(select(ConversationMessage.kind).order_by(ConversationMessage.id))
            ).scalars()
        )
    assert kinds == ["message", "notice"]
    await conversations.close(rt, conv_id, "cli")
    assert await _inbox_count(rt, PATIENT) == 2
    with pytest.raises(ConversationRefused):
        await send(rt, build(PATIENT, DOCTOR, "Re", in_reply_to=first["Message-ID"]))
    with pytest.raises(conversations.ConversationError):
        await conversations.close(rt, "nope", "cli")


async def test_keyword_closes_from_the_professional_mailbox(rt: Runtime) -> None:
    first = build(DOCTOR, PATIENT, "Résultats")
    [conv_id] = await send(rt, first)
    reply = build(PATIENT, DOCTOR, "Re: Résultats", in_reply_to=first["Message-ID"])
    await send(rt, reply)
    async with rt.db.read() as session:
        conv = (await session.execute(select(Conversation))).scalar_one()
        pro_id = conv.professional_mailbox_id
        patient_id = conv.patient_mailbox_id
    assert pro_id is not None
    inbox = await rt.store.folder(pro_id, "INBOX")
    _f, msgs = await rt.store.snapshot(inbox.id)
    await rt.store.set_flags(inbox.id, [msgs[0].uid], "add", ["\\Flagged"])
    await conversations.on_flags_changed(rt, pro_id, inbox.id, [msgs[0].uid])
    assert [c.state for c in await conversations.list_conversations(rt)] == ["open"]
    patient_inbox = await rt.store.folder(patient_id, "INBOX")
    _f, patient_msgs = await rt.store.snapshot(patient_inbox.id)
    await rt.store.set_flags(patient_inbox.id, [patient_msgs[0].uid], "add", [conversations.CLOSE_KEYWORD])
    await conversations.on_flags_changed(rt, patient_id, patient_inbox.id, [patient_msgs[0].uid])
    assert [c.state for c in await conversations.list_conversations(rt)] == ["open"]
    await rt.store.set_flags(inbox.id, [msgs[0].uid], "add", [conversations.CLOSE_KEYWORD])
    await conversations.on_flags_changed(rt, pro_id, inbox.id, [msgs[0].uid])
    [c] = await conversations.list_conversations(rt)
    assert (c.public_id, c.state, c.closed_by) == (conv_id, "closed", "keyword")
    assert await _inbox_count(rt, PATIENT) == 2
    with pytest.raises(ConversationRefused):
        await send(rt, build(PATIENT, DOCTOR, "Re", in_reply_to=first["Message-ID"]))


async def test_professionals_between_themselves_are_ignored(rt: Runtime) -> None:
    assert await send(rt, build(DOCTOR, NURSE, "[FIN]")) == []
    assert await conversations.list_conversations(rt) == []
