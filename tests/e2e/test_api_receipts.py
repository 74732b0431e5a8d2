"""Issue 17 end to end, two ``caducee serve`` processes: B's patient-record system sends through B's
API over mutual TLS with its client certificate to a local mailbox (dr.durand at B), a patient and
a professional of the peer operator A; the patient reads it in A's portal (headless chromium) and
accepts to send a read receipt, which crosses back to B over SMTP and shows in B's API state."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser

from mailserver import accounts, trust
from tests.e2e.conftest import PATIENT, PATIENT_DOMAIN, PATIENT_INS, PATIENT_PASSWORD, _setup_a
from tests.identity.certs import AppCerts, make_app_certs
from tests.ports import free_port
from tests.smtp.conftest import wait_for
from tests.smtp.operators import Operator, prepare, two_operators, write_config

DPI = "dpi@b.mssante.test"
DURAND = "dr.durand@b.mssante.test"
MARTIN = "dr.martin@a.mssante.test"


@dataclass
class Sites:
    a: Operator
    b: Operator
    pki: Any
    certs: AppCerts
    api: str  # B's mutual-TLS API

    def client(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.pki.peer_ca))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(self.certs.dpi.chain_path), str(self.certs.dpi.key_path))
        return ctx


@pytest.fixture
async def sites(tmp_path: Path, pki: Any) -> AsyncIterator[Sites]:
    a, b = two_operators(tmp_path)
    a.imaps, a.portal, a.also_hosts = free_port(), free_port(), (PATIENT_DOMAIN,)
    api_port = free_port()
    write_config(a, pki, f"sqlite+aiosqlite:///{a.directory}/caducee.db", b)
    write_config(b, pki, f"sqlite+aiosqlite:///{b.directory}/caducee.db", a)
    with b.config.open("a", encoding="utf-8") as f:
        f.write(f'[api]\nlisten_tls = ["127.0.0.1:{api_port}"]\n')
    certs = make_app_certs(pki, tmp_path / "app-pki")
    try:
        await prepare(a, pki, ["dr.martin"])
        await prepare(b, pki, ["dr.durand"])
        assert b.rt is not None
        await trust.add(b.rt.db, PATIENT_DOMAIN, pki.tls["a.mssante.test"].subject)
        await accounts.add_mailbox(b.rt, DPI, "APP")
        await accounts.add_certificate(b.rt, DPI, certs.dpi.cert_pem, "issuer-serial")
        await _setup_a(a)
        a.start()
        b.start()
        await asyncio.gather(a.ready(), b.ready())
        yield Sites(a, b, pki, certs, f"https://127.0.0.1:{api_port}")
    finally:
        for op in (a, b):
            op.stop()
            if op.rt is not None:
                await op.rt.close()


@pytest.mark.slow
async def test_api_send_by_certificate_then_a_read_receipt_from_the_peers_patient(
    sites: Sites, browser: Browser
) -> None:
    body = {
        "from": DPI,
        "to": [DURAND, PATIENT, MARTIN],
        "subject": "Compte rendu de consultation",
        "text": "Bonjour,\nvoici le compte rendu de votre consultation.",
        "read_receipt": True,
    }
    conn = aiohttp.TCPConnector(ssl=sites.client())
    async with aiohttp.ClientSession(connector=conn) as http:
        async with http.post(f"{sites.api}/api/v1/messages", json=body) as r:
            assert r.status == 202, await r.text()
            public_id = (await r.json())["id"]

        async def state() -> dict[str, Any]:
            async with http.get(f"{sites.api}/api/v1/messages/{public_id}") as r:
                assert r.status == 200
                return {x["address"]: x for x in (await r.json())["recipients"]}

        async def remote_done() -> dict[str, Any] | None:
            s = await state()
            return s if s[PATIENT]["state"] != "queued" and s[MARTIN]["state"] != "queued" else None

        done = await wait_for(remote_done, 30)
        assert done[DURAND]["state"] == "delivered"
        assert {done[PATIENT]["state"], done[MARTIN]["state"]} <= {"sent", "relayed"}
        [at_b] = await sites.b.inbox("dr.durand")
        [at_a] = await sites.a.inbox("dr.martin")
        for raw in (at_a, at_b):
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert msg["Subject"] == "Compte rendu de consultation"
            assert msg["Disposition-Notification-To"] == DPI

        page = await browser.new_page(viewport={"width": 420, "height": 780})
        url = f"http://127.0.0.1:{sites.a.portal}"
        await page.goto(f"{url}/connexion")
        await page.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
        await page.get_by_label("Mot de passe").fill(PATIENT_PASSWORD)
        await page.get_by_role("button", name="Se connecter").click()
        await page.wait_for_url(f"{url}/conversations")
        await page.get_by_role("link", name="Compte rendu de consultation").click()
        assert await page.get_by_text("voici le compte rendu de votre consultation.").is_visible()
        await page.get_by_role("button", name="Envoyer l'accusé de lecture").click()
        await page.wait_for_load_state()
        assert await page.get_by_text("Accusé de lecture envoyé.").is_visible()
        await page.close()

        async def receipt() -> list[dict[str, Any]] | None:
            return (await state())[PATIENT].get("receipts")

        [got] = await wait_for(receipt, 30)
        assert got["disposition"] == "displayed" and got["mode"] == "manual-action/MDN-sent-manually"
    [report] = await sites.b.inbox("dpi")
    mdn = email.message_from_bytes(report, policy=email.policy.default)
    assert mdn.get_content_type() == "multipart/report"
    assert mdn.get_param("report-type") == "disposition-notification"
    [fields] = list(mdn.iter_parts())[1].get_payload()
    assert fields["Final-Recipient"] == f"rfc822; {PATIENT}"
    assert "displayed" in fields["Disposition"]
