"""POST /api/v1/messages under the submission policy: the patient and conversation rules, the trust
space and sending as a shared (ORG) mailbox, each refusal a problem+json naming the recipient and why."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from sqlalchemy import select

from directory.patients import add_patient, make_record
from mailserver import accounts
from mailserver.db.models import AuditEvent
from mailserver.portal import service
from tests.api.conftest import API, DPI
from tests.api.test_send_api import fetch_inbox, problem
from tests.imap.conftest import MARTIN, SECRETARIAT
from tests.portal.helpers import OTHER_INS, OTHER_PATIENT, PATIENT, PATIENT_INS

PATIENT_PASSWORD = "correct horse battery"


@pytest.fixture
async def patients(api: API) -> API:
    """Two activated patients, who may use the API with their password: ``[portal] second_factor``
    is off (the ``api`` fixture sets it after the runtime was built, so its authenticator is told)."""
    api.rt.auth.patients_through_portal = False
    for ins, address, first in ((PATIENT_INS, PATIENT, "Pierrette"), (OTHER_INS, OTHER_PATIENT, "Émilie")):
        await accounts.add_mailbox(api.rt, address, "PAT", display_name=f"PATIENT {first}")
        birth = "1962-11-23" if ins == PATIENT_INS else "1935-03-07"
        await add_patient(api.rt.db, make_record(ins, "Petit", first, "F", birth))
        _address, code, _expires = await service.invite(api.rt, ins)
        await service.activate(api.rt, ins, code, PATIENT_PASSWORD, "127.0.0.1")
    return api


async def test_patient_and_conversation_rules_refuse_naming_the_recipient(patients: API) -> None:
    api = patients
    as_patient = api.auth(PATIENT, PATIENT_PASSWORD)
    mine = {"from": PATIENT, "subject": "Question", "text": "Bonjour docteur."}
    async with aiohttp.ClientSession() as http:
        # A patient writes only to professionals...
        status, doc = await problem(http, api, {**mine, "to": [OTHER_PATIENT]}, headers=as_patient)
        assert status == 422 and doc["recipient"] == OTHER_PATIENT
        assert doc["smtp"].startswith("550 5.7.1") and "only to a professional" in doc["detail"]
        # ...and only to one who opened a conversation with them.
        status, doc = await problem(http, api, {**mine, "to": [MARTIN]}, headers=as_patient)
        assert status == 422 and doc["recipient"] == MARTIN and "no open conversation" in doc["detail"]
        # The hospital's software opens one; a new message (not a reply in it) is still refused,
        # naming the professional it was written to.
        body = {"from": DPI, "to": [PATIENT], "subject": "Résultats", "text": "Vos résultats sont prêts."}
        async with http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r:
            assert r.status == 202, await r.text()
        status, doc = await problem(http, api, {**mine, "to": [DPI]}, headers=as_patient)
        assert status == 422 and doc["recipient"] == DPI and "only reply" in doc["detail"]
        # Outside the trust space, whoever else the message names.
        status, doc = await problem(
            http, api, {"from": DPI, "to": [MARTIN, "x@ailleurs.test"], "subject": "s", "text": "t"}
        )
        assert status == 422 and doc["recipient"] == "x@ailleurs.test"
        assert doc["smtp"].startswith("550 5.7.1") and "trust space" in doc["detail"]
    assert await asyncio.to_thread(fetch_inbox, api, MARTIN) == []


async def test_sending_as_an_org_needs_the_send_right(api: API) -> None:
    body = {"from": SECRETARIAT, "to": [MARTIN], "subject": "Rendez-vous", "text": "Confirmé."}
    async with aiohttp.ClientSession() as http:
        status, doc = await problem(http, api, body)  # not a member
        assert status == 403 and SECRETARIAT in doc["detail"]
        await accounts.add_member(api.rt, SECRETARIAT, DPI, "lr")  # a member, without "p"
        status, doc = await problem(http, api, body)
        assert status == 403 and SECRETARIAT in doc["detail"]
        await accounts.add_member(api.rt, SECRETARIAT, DPI, "lrp")
        async with http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r:
            assert r.status == 202, await r.text()
            sent = await r.json()
        assert sent["from"] == SECRETARIAT and [x["state"] for x in sent["recipients"]] == ["delivered"]
    [msg] = await asyncio.to_thread(fetch_inbox, api, MARTIN)
    assert msg["From"] == SECRETARIAT and msg["Subject"] == "Rendez-vous"
    async with api.rt.db.read() as session:
        outcomes = (
            await session.execute(
                select(AuditEvent.actor, AuditEvent.response)
                .where(AuditEvent.action == "api-send")
                .order_by(AuditEvent.id)
            )
        ).all()
    # The person (here the software) stays the actor of every attempt, refused or not.
    assert [(a, r[:3]) for a, r in outcomes] == [(DPI, "403"), (DPI, "403"), (DPI, "202")]
