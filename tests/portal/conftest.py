"""A running portal on 127.0.0.1 (real listener) with a doctor in the directory and an activated patient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from directory.models import DirectoryMailbox, Professional
from directory.patients import add_patient, make_record
from mailserver.portal import service, web
from mailserver.runtime import Runtime
from tests.portal.helpers import DOCTOR, PATIENT_INS, populate

PASSWORD = "correct horse battery"


@dataclass
class Portal:
    rt: Runtime
    url: str


@pytest.fixture
async def portal(runtime: Runtime) -> AsyncIterator[Portal]:
    runtime.settings.portal.secure_cookies = False
    runtime.settings.portal.listen = ["127.0.0.1:0"]
    await populate(runtime)
    await add_patient(runtime.db, make_record(PATIENT_INS, "Petit", "Pierrette", "F", "1962-11-23"))
    async with runtime.db.write() as session:
        pro = Professional(
            identifier="810000000009",
            id_type="8",
            rpps="10000000009",
            civility="DR",
            last_name="MARTIN",
            first_name="Claire",
            profession_label="Médecin",
            skill_label="Médecine générale",
            row_hash=b"0" * 16,
        )
        session.add(pro)
        await session.flush()
        session.add(
            DirectoryMailbox(
                address=DOCTOR, type="PER", professional_id=pro.id, hosted=True, row_hash=b"0" * 16
            )
        )
    _address, code, _expires = await service.invite(runtime, PATIENT_INS)
    await service.activate(runtime, PATIENT_INS, code, PASSWORD, "127.0.0.1")
    [listener] = await web.start(runtime)
    try:
        yield Portal(runtime, f"http://{listener.address}")
    finally:
        await listener.close()
