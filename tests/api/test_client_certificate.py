"""The sending API over mutual TLS (``[api] listen_tls``, issue 17): an APP mailbox logs in with its
IGC-Santé certificate, through the same registrations and revocation checker as SASL EXTERNAL; a
revoked or unregistered certificate gets a 403 problem, one from another PKI a TLS refusal, all audited."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import re
import shlex
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mailserver import accounts, app
from mailserver.db import migrate
from mailserver.portal import client_certs
from mailserver.runtime import Runtime
from tests.conftest import make_settings
from tests.identity.certs import AppCerts, make_app_certs
from tests.smtp.conftest import wait_for

DPI = "dpi@a.mssante.test"
MARTIN = "dr.martin@a.mssante.test"


@dataclass
class Env:
    rt: Runtime
    pki: Any
    certs: AppCerts
    url: str
    listeners: list[Any]

    def client(self, identity: Any | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.pki.peer_ca))
        ctx.check_hostname = False
        if identity is not None:
            ctx.load_cert_chain(str(identity.chain_path), str(identity.key_path))
        return ctx

    async def send(self, identity: Any | None, **headers: str) -> tuple[int, str, dict[str, Any]]:
        body = {"from": DPI, "to": [MARTIN], "subject": "Compte rendu d'hospitalisation", "text": "Texte."}
        conn = aiohttp.TCPConnector(ssl=self.client(identity))
        async with (
            aiohttp.ClientSession(connector=conn) as http,
            http.post(f"{self.url}/api/v1/messages", json=body, headers=headers) as r,
        ):
            return r.status, r.content_type, await r.json()

    async def audit(self, action: str) -> list[Any]:
        return await self.rt.audit.events(action=action)


@pytest.fixture
async def env(tmp_path: Path, db_url: str, pki: Any) -> AsyncIterator[Env]:
    certs = make_app_certs(pki, tmp_path / "app-pki")
    a = pki.tls["a.mssante.test"]
    settings = make_settings(
        tmp_path,
        db_url,
        tls={"cert": str(a.chain_path), "key": str(a.key_path), "peer_ca": str(pki.peer_ca)},
        auth={"client_crl": [str(certs.crl_path)], "max_failures": 3},
        api={"listen_tls": ["127.0.0.1:0"]},
    )
    await migrate.upgrade_async(db_url)
    rt = Runtime.build(settings)
    await asyncio.to_thread(rt.blobs.ensure)
    await accounts.add_domain(rt, "a.mssante.test", patients=False)
    await accounts.add_mailbox(rt, MARTIN, "PER", rpps="10000000009", password="secret-password-1")
    await accounts.add_mailbox(rt, DPI, "APP")
    await accounts.add_certificate(rt, DPI, certs.dpi.cert_pem, "issuer-serial")
    listeners = await client_certs.start(rt)
    try:
        assert [x.service for x in listeners] == ["api"]
        yield Env(rt, pki, certs, f"https://{listeners[0].address}", listeners)
    finally:
        for listener in listeners:
            await listener.close()
        await rt.close()


async def martin_inbox(rt: Runtime) -> list[Any]:
    mb = await accounts.get_mailbox(rt, MARTIN)
    folder = await rt.store.folder(mb.id, "INBOX")
    _info, msgs = await rt.store.snapshot(folder.id)
    return [
        email.message_from_bytes(await rt.store.read_blob(m.blob_id), policy=email.policy.default)
        for m in msgs
    ]


async def test_the_app_certificate_sends_through_the_api(env: Env) -> None:
    status, _ctype, body = await env.send(env.certs.dpi)
    assert status == 202, body
    assert body["recipients"] == [{"address": MARTIN, "state": "delivered", "detail": ""}]
    [msg] = await martin_inbox(env.rt)
    assert msg["Subject"] == "Compte rendu d'hospitalisation" and msg["From"] == DPI
    login = (await env.audit("login"))[-1]
    serial = format(env.certs.dpi.cert.serial_number, "x")
    assert login.actor == DPI
    assert login.request == (
        f"api login (certificate EXTERNAL, subject {env.certs.dpi.subject}, serial {serial})"
    )
    sent = (await env.audit("api-send"))[-1]
    assert sent.actor == DPI and sent.response == "202"


async def test_without_a_certificate_the_api_asks_for_credentials(env: Env) -> None:
    status, ctype, body = await env.send(None)
    assert (status, ctype) == (401, "application/problem+json")
    assert body["status"] == 401


async def test_an_unregistered_certificate_is_refused_with_a_problem(env: Env) -> None:
    status, ctype, body = await env.send(env.certs.renewed)  # same subject, registered by serial
    assert (status, ctype) == (403, "application/problem+json")
    assert body["detail"] == "certificat client refusé"
    failure = (await env.audit("login-failure"))[-1]
    assert failure.response == "certificate not registered for any mailbox"
    assert (await env.audit("api-send"))[-1].response.startswith("403 ")
    assert await martin_inbox(env.rt) == []


async def test_a_revoked_certificate_is_refused_with_a_problem(env: Env) -> None:
    # registered by subject before its revocation was published: the CRL wins at login
    checker = env.rt.auth.certificates
    assert checker is not None
    checker.revocation.crl_files = []
    await accounts.add_certificate(env.rt, DPI, env.certs.revoked.cert_pem, "subject")
    checker.revocation.crl_files = [env.certs.crl_path]
    status, ctype, body = await env.send(env.certs.revoked)
    assert (status, ctype, body["detail"]) == (403, "application/problem+json", "certificat client refusé")
    revoked = env.certs.revoked.cert
    failure = (await env.audit("login-failure"))[-1]
    assert failure.response == (
        f"certificate of {revoked.subject.rfc4514_string()} revoked (serial {revoked.serial_number:x})"
    )
    assert await martin_inbox(env.rt) == []


async def test_a_certificate_of_another_pki_fails_the_handshake(env: Env) -> None:
    with pytest.raises(aiohttp.ClientError):
        await env.send(env.pki.tls_impostor)
    refused = await wait_for(lambda: env.audit("tls-refused"))
    assert refused[-1].request == "api TLS handshake"


async def test_basic_credentials_still_work_on_the_tls_listener(env: Env) -> None:
    _id, secret = await accounts.add_app_password(env.rt, DPI, "dpi")
    auth = "Basic " + base64.b64encode(f"{DPI}:{secret}".encode()).decode()
    status, _ctype, body = await env.send(env.certs.renewed, Authorization=auth)
    assert status == 202, body


def test_serve_starts_the_tls_api_listener() -> None:
    assert "mailserver.portal.client_certs" in app.SERVICES


README = Path(__file__).resolve().parents[2] / "README.md"


async def test_the_readme_curl_example_logs_in_by_certificate(env: Env) -> None:
    """The README's curl command, as written, with this listener's address and the test PKI's files."""
    section = README.read_text(encoding="utf-8").split("#### Client certificates (mutual TLS)", 1)[1]
    command = re.search(r"```sh\n(.*?)```", section, re.S)
    assert command is not None
    line = command[1].replace("\\\n", " ").replace("https://127.0.0.1:8443", env.url)
    line = line.replace("demo/tls/peer-ca.pem", str(env.pki.peer_ca))
    line = line.replace("dpi.pem", str(env.certs.dpi.cert_path)).replace(
        "dpi.key", str(env.certs.dpi.key_path)
    )
    proc = await asyncio.create_subprocess_exec(
        *shlex.split(line), "-sS", "-w", "\n%{http_code}", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().rsplit("\n", 1)[1] == "202", out
    [msg] = await martin_inbox(env.rt)
    assert msg["Subject"] == "Compte rendu" and msg["Disposition-Notification-To"] == DPI
