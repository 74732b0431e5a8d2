"""A conversation message whose file is gone from the storage (issue 20 item 5), over real HTTP: the
conversation page, the API and both attachment downloads answer 503 with a clear French message
(never a 500 traceback), log one JSON line and one audit event each, and the session still works."""

from __future__ import annotations

import asyncio
import logging
import os

import aiohttp
import pytest

from tests.portal.conftest import PASSWORD, Portal
from tests.portal.helpers import DOCTOR, PATIENT, PATIENT_INS, build, send


async def test_a_lost_message_file_is_a_503_and_the_session_goes_on(
    portal: Portal, caplog: pytest.LogCaptureFixture
) -> None:
    msg = build(DOCTOR, PATIENT, "Compte rendu", "Voici le compte rendu.", name="Dr Martin")
    msg.add_attachment(os.urandom(96 * 1024), maintype="application", subtype="pdf", filename="cr.pdf")
    [conv_id] = await send(portal.rt, msg)  # ~130 KiB: beyond inline_max, kept as a file
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        r = await http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD})
        assert r.status == 200
        auth = {"Authorization": f"Bearer {(await r.json())['token']}"}
        conv = await (await http.get(f"{portal.url}/api/conversations/{conv_id}", headers=auth)).json()
        mid = conv["messages"][0]["id"]
        (path,) = await asyncio.to_thread(lambda: list(portal.rt.blobs.all_paths()))
        os.unlink(portal.rt.blobs.root / path)

        for url in (f"/conversations/{conv_id}", f"/messages/{mid}/pieces-jointes/1"):
            async with http.get(portal.url + url) as page:  # the session cookie set by /api/login
                text = await page.text()
                assert page.status == 503 and page.headers["Retry-After"] == "60", (url, text)
                assert page.content_type == "text/html" and "momentanément indisponible" in text
                assert "default-src 'none'" in page.headers["Content-Security-Policy"]
                assert "Traceback" not in text and 'action="/deconnexion"' in text  # still signed in
        for url in (f"/api/conversations/{conv_id}", f"/api/messages/{mid}/attachments/1"):
            async with http.get(portal.url + url, headers=auth) as answer:
                assert answer.status == 503 and answer.headers["Retry-After"] == "60"
                assert "momentanément indisponible" in (await answer.json())["error"]
        async with http.get(f"{portal.url}/conversations") as page:
            assert page.status == 200 and "Compte rendu" in await page.text()

    lines = [r for r in caplog.records if getattr(r, "event", None) == "message-unavailable"]
    assert len(lines) == 4 and all(r.levelno == logging.ERROR for r in lines)
    for record in lines:
        fields = record.fields  # type: ignore[attr-defined]
        assert fields["service"] == "portal" and "FileNotFoundError" in fields["reason"]
        assert PATIENT not in str(fields)
    events = await portal.rt.audit.events(action="storage-error")
    assert sorted(e.request for e in events) == sorted(
        [
            f"GET /conversations/{conv_id}",
            f"GET /messages/{mid}/pieces-jointes/1",
            f"GET /api/conversations/{conv_id}",
            f"GET /api/messages/{mid}/attachments/1",
        ]
    )
    assert {(e.actor, e.remote) for e in events} == {(PATIENT, "127.0.0.1")}
