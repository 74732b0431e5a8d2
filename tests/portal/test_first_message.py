"""A patient writes first (issue 18), on SQLite and PostgreSQL: only to an ORG mailbox flagged
``accepts_patient_first`` (a pharmacy), under ``conversations.check_message`` like SMTP; the list of
whom they may write to is bounded by ``[portal] first_contacts_max``."""

from __future__ import annotations

import base64
import email
import email.policy

import aiohttp
import pytest
from sqlalchemy import select, update

from directory.models import DirectoryMailbox, Structure
from mailserver import accounts
from mailserver.conversation_models import Conversation
from mailserver.db.models import AuditEvent, Folder, Mailbox
from mailserver.portal import service
from mailserver.runtime import Runtime
from tests.portal.conftest import PASSWORD, Portal
from tests.portal.helpers import DOCTOR, NURSE, PATIENT, PATIENT_INS, PHARMACY, populate, tiny_png

PHARMACY_2 = "pharmacie.gare@a.mssante.test"


@pytest.fixture
async def rt(runtime: Runtime) -> Runtime:
    await populate(runtime)
    return runtime


async def _patient_id(rt: Runtime) -> int:
    async with rt.db.read() as session:
        return (await session.execute(select(Mailbox.id).where(Mailbox.address == PATIENT))).scalar_one()


async def _folder(rt: Runtime, address: str, name: str) -> list[bytes]:
    async with rt.db.read() as session:
        folder_id = (
            await session.execute(
                select(Folder.id)
                .join(Mailbox, Mailbox.id == Folder.mailbox_id)
                .where(Mailbox.address == address, Folder.name == name)
            )
        ).scalar_one()
    _info, msgs = await rt.store.snapshot(folder_id)
    return [await rt.store.read_blob(m.blob_id) for m in msgs]


async def _refusals(rt: Runtime) -> list[tuple[str, str, str]]:
    async with rt.db.read() as session:
        rows = await session.execute(
            select(AuditEvent.actor, AuditEvent.request, AuditEvent.response)
            .where(AuditEvent.action == "portal-refused")
            .order_by(AuditEvent.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_first_message_to_a_pharmacy_opens_a_conversation(rt: Runtime) -> None:
    pid = await _patient_id(rt)
    files = [service.Upload("ordonnance.png", "image/png", tiny_png())]
    public_id = await service.write_first(
        rt, pid, PHARMACY, "Renouvellement", "Bonjour,\nmon ordonnance est jointe.", files, "127.0.0.1"
    )
    [delivered] = await _folder(rt, PHARMACY, "INBOX")
    msg = email.message_from_bytes(delivered, policy=email.policy.default)
    assert msg["Subject"] == "Renouvellement" and PATIENT in msg["From"] and PHARMACY in msg["To"]
    assert msg["In-Reply-To"] is None
    [png] = list(msg.iter_attachments())
    assert png.get_content_type() == "image/png" and png.get_content() == tiny_png()
    assert len(await _folder(rt, PATIENT, "Sent")) == 1
    async with rt.db.read() as session:
        conv = (
            await session.execute(select(Conversation).where(Conversation.public_id == public_id))
        ).scalar_one()
    assert (conv.professional, conv.state, conv.patient_mailbox_id) == (PHARMACY, "open", pid)
    detail = await service.read_conversation(rt, pid, public_id)
    assert [m.direction for m in detail.messages] == ["out"]
    assert detail.messages[0].attachments[0].preview


@pytest.mark.parametrize("to", [NURSE, DOCTOR, "inconnu@a.mssante.test", "x@ailleurs.test"])
async def test_first_message_elsewhere_is_refused_and_audited(rt: Runtime, to: str) -> None:
    pid = await _patient_id(rt)
    with pytest.raises(service.PortalError) as refused:
        await service.write_first(rt, pid, to, "Bonjour", "Puis-je venir demain ?", [], "127.0.0.1")
    assert refused.value.status == 403
    assert "seul un professionnel peut commencer une conversation" in refused.value.message
    [(actor, request, response)] = await _refusals(rt)
    assert (actor, request) == (PATIENT, f"portal first message to <{to}>")
    assert response.startswith("550 5.7.1 <") and "no open conversation" in response
    assert await _folder(rt, PATIENT, "Sent") == []
    if to in (NURSE, DOCTOR):
        assert await _folder(rt, to, "INBOX") == []


async def test_the_flag_decides_not_the_page(rt: Runtime) -> None:
    """The portal asks the shared rule each time: the operator flags the ORG, and it may be written to."""
    pid = await _patient_id(rt)
    with pytest.raises(service.PortalError):
        await service.write_first(rt, pid, NURSE, "Bonjour", "Un pansement ?", [], "127.0.0.1")
    async with rt.db.write() as session:
        await session.execute(
            update(Mailbox).where(Mailbox.address == NURSE).values(accepts_patient_first=True)
        )
    await service.write_first(rt, pid, NURSE, "Bonjour", "Un pansement ?", [], "127.0.0.1")
    assert len(await _folder(rt, NURSE, "INBOX")) == 1


@pytest.mark.parametrize(
    ("subject", "text", "status"),
    [
        ("", "x", 400),
        ("x" * (service.MAX_SUBJECT + 1), "x", 400),
        ("Objet", "", 400),
        ("Sujet\x00X", "x", 400),  # a NUL reached the pharmacy's Subject: field (found by a new user)
        ("Objet", "a\x00b", 400),
    ],
)
async def test_bad_forms_are_refused_precisely(rt: Runtime, subject: str, text: str, status: int) -> None:
    with pytest.raises(service.PortalError) as refused:
        await service.write_first(rt, await _patient_id(rt), PHARMACY, subject, text, [], "127.0.0.1")
    assert refused.value.status == status
    assert await _folder(rt, PHARMACY, "INBOX") == []


async def test_contacts_are_named_from_the_directory_bounded_and_searchable(rt: Runtime) -> None:
    await accounts.add_mailbox(rt, PHARMACY_2, "ORG", display_name="", accepts_patient_first=True)
    async with rt.db.write() as session:
        structure = Structure(
            identifier="1-0001",
            legal_name="SELARL PHARMA GARE",
            trade_name="Pharmacie de la Gare",
            city="BREST",
            row_hash=b"0" * 16,
        )
        session.add(structure)
        await session.flush()
        session.add(
            DirectoryMailbox(
                address=PHARMACY_2,
                type="ORG",
                structure_id=structure.id,
                hosted=True,
                search_text="pharmacie de la gare brest",
                row_hash=b"0" * 16,
            )
        )
    contacts, more = await service.first_contacts(rt)
    assert [(c.address, c.name) for c in contacts] == [
        (PHARMACY_2, "Pharmacie de la Gare"),
        (PHARMACY, "Pharmacie du Port"),
    ]
    assert contacts[0].detail == "BREST" and not more
    assert NURSE not in {c.address for c in contacts}  # an ORG without the flag is never offered
    contacts, _more = await service.first_contacts(rt, "brest")
    assert [c.address for c in contacts] == [PHARMACY_2]
    contacts, _more = await service.first_contacts(rt, "PORT")
    assert [c.address for c in contacts] == [PHARMACY]
    assert await service.first_contacts(rt, "100% _") == ([], False)
    rt.settings.portal.first_contacts_max = 1
    contacts, more = await service.first_contacts(rt)
    assert len(contacts) == 1 and more


async def test_a_recipient_with_a_line_break_is_refused_not_a_crash(rt: Runtime) -> None:
    """Found by a new user: CR/LF in the form's recipient was a 500 (``email`` refuses the header)."""
    with pytest.raises(service.PortalError) as refused:
        to = f"{PHARMACY}\r\nBcc: {DOCTOR}"
        await service.write_first(rt, await _patient_id(rt), to, "Objet", "x", [], "127.0.0.1")
    assert refused.value.status == 400
    assert await _folder(rt, PHARMACY, "INBOX") == [] and await _folder(rt, DOCTOR, "INBOX") == []


async def test_api_lists_and_writes_first(portal: Portal) -> None:
    """``GET /api/first-contacts`` and ``POST /api/conversations``: the same service, the same rule."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD}) as r:
            auth = {"Authorization": f"Bearer {(await r.json())['token']}"}
        async with http.get(f"{portal.url}/api/first-contacts", params={"q": "port"}, headers=auth) as r:
            assert await r.json() == {
                "contacts": [{"address": PHARMACY, "name": "Pharmacie du Port", "detail": ""}],
                "more": False,
            }
        png = {
            "filename": "o.png",
            "content_type": "image/png",
            "data": base64.b64encode(tiny_png()).decode(),
        }
        body = {"to": NURSE, "subject": "Bonjour", "text": "Un pansement ?"}
        async with http.post(f"{portal.url}/api/conversations", json=body, headers=auth) as r:
            assert r.status == 403
            assert "seul un professionnel" in (await r.json())["error"]
        body = {"to": PHARMACY, "subject": "Bonjour", "text": "Mon ordonnance.", "attachments": [png]}
        async with http.post(f"{portal.url}/api/conversations", json=body, headers=auth) as r:
            assert r.status == 201
            public_id = (await r.json())["id"]
        async with http.get(f"{portal.url}/api/conversations/{public_id}", headers=auth) as r:
            detail = await r.json()
    big = f"{portal.url}/api/messages/{'9' * 23}/attachments/1"  # past 64 bits: 404, no overflow
    async with aiohttp.ClientSession() as http, http.get(big, headers=auth) as r:
        assert r.status == 404
    assert detail["professional"]["address"] == PHARMACY
    assert [m["text"].strip() for m in detail["messages"]] == ["Mon ordonnance."]
    assert len(await _folder(portal.rt, PHARMACY, "INBOX")) == 1
    [(actor, request, _response)] = await _refusals(portal.rt)
    assert (actor, request) == (PATIENT, f"portal first message to <{NURSE}>")
