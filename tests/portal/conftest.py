"""A running portal on 127.0.0.1 (real listener) with a doctor in the directory and an activated patient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from playwright.async_api import Page

from directory.patients import add_patient, make_record
from mailserver.portal import service, web
from mailserver.runtime import Runtime
from tests.portal.helpers import DOCTOR, PATIENT_INS, add_professional, populate

PASSWORD = "correct horse battery"


@dataclass
class Portal:
    rt: Runtime
    url: str


@pytest.fixture
async def portal(runtime: Runtime) -> AsyncIterator[Portal]:
    runtime.settings.portal.secure_cookies = False
    # Tests of reading and replying sign in with the password alone; tests/portal/test_second_factor.py
    # runs the second factor (the default, email_or_totp) through the same pages.
    runtime.settings.portal.second_factor = "off"
    runtime.settings.portal.listen = ["127.0.0.1:0"]
    await populate(runtime)
    await add_patient(runtime.db, make_record(PATIENT_INS, "Petit", "Pierrette", "F", "1962-11-23"))
    await add_professional(
        runtime, DOCTOR, "10000000009", "MARTIN", "Claire", "Médecine générale", hosted=True
    )
    _address, code, _expires = await service.invite(runtime, PATIENT_INS)
    await service.activate(runtime, PATIENT_INS, code, PASSWORD, "127.0.0.1")
    [listener] = await web.start(runtime)
    try:
        yield Portal(runtime, f"http://{listener.address}")
    finally:
        await listener.close()


async def login(page: Page, url: str) -> None:
    """Sign in as the fixture's patient the way a patient does, in the browser."""
    await page.goto(f"{url}/connexion")
    await page.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{url}/conversations")
