"""The sending API on a real portal listener, beside real IMAP listeners to read what arrived."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from mailserver import accounts
from mailserver.portal import web
from mailserver.runtime import Runtime
from tests.imap.conftest import IMAPEnv, running

DPI = "dpi@a.mssante.test"


@dataclass
class API:
    imap: IMAPEnv
    url: str
    secret: str  # DPI's application password

    @property
    def rt(self) -> Runtime:
        return self.imap.rt

    def auth(self, user: str = DPI, password: str | None = None) -> dict[str, str]:
        creds = f"{user}:{self.secret if password is None else password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(creds).decode()}


@pytest.fixture
async def api(runtime: Runtime, pki: Any) -> AsyncIterator[API]:
    runtime.settings.portal.secure_cookies = False
    runtime.settings.portal.listen = ["127.0.0.1:0"]
    # Patients here sign in with their password alone (the second factor has its own tests in
    # tests/portal/test_second_factor.py, and these patients have no personal address to get a code).
    runtime.settings.portal.second_factor = "off"
    async with running(runtime, pki) as imap:
        await accounts.add_mailbox(runtime, DPI, "APP", display_name="DPI de l'hôpital")
        _id, secret = await accounts.add_app_password(runtime, DPI, "dpi")
        [listener] = await web.start(runtime)
        try:
            yield API(imap, f"http://{listener.address}", secret)
        finally:
            await listener.close()
