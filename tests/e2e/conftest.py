"""Two operators as real processes: A hosts patients (portal, IMAPS) and dr.martin, B hosts dr.durand.

Everything is set up in the databases before the processes start; afterwards the tests only speak to
the servers over sockets (SMTP submission, the portal's JSON API or a browser, IMAPS) and read the
stores to see what arrived.
"""

from __future__ import annotations

import asyncio
import imaplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from directory.patients import add_patient, make_record
from mailserver import accounts, trust
from mailserver.portal import service
from tests.portal.helpers import add_professional, build
from tests.ports import free_port
from tests.smtp.conftest import PASSWORD, tls_client, wait_for
from tests.smtp.operators import Operator, prepare, two_operators, write_config

PATIENT_INS = "262112B82955335"
PATIENT_DOMAIN = "patient.a.mssante.test"
PATIENT = f"{PATIENT_INS.lower()}@{PATIENT_DOMAIN}"
PATIENT_NAME = "PETIT Pierrette (patiente)"
PATIENT_PASSWORD = "correct horse battery"
DURAND = "dr.durand@b.mssante.test"
DURAND_NAME = "DR Jean DURAND"
MARTIN = "dr.martin@a.mssante.test"


@pytest.fixture
def a_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A's database: SQLite unless a test asks for ``postgresql`` (indirect parametrisation)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path}/a.mssante.test/caducee.db"


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


class PatientAPI:
    """The patient's side of A's portal JSON API, authenticated with the bearer token of ``/api/login``."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.token = ""

    async def login(self) -> None:
        async with self.http.post(
            f"{self.url}/api/login", json={"ins": PATIENT_INS, "password": PATIENT_PASSWORD}
        ) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert body["address"] == PATIENT
        self.token = body["token"]

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}{path}", headers=self._auth()) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body

    async def conversations(self) -> list[dict[str, Any]]:
        """Every professional group of ``GET /api/conversations``."""
        groups: list[dict[str, Any]] = (await self.get("/api/conversations"))["professionals"]
        return groups

    async def conversation(self, public_id: str) -> dict[str, Any]:
        return await self.get(f"/api/conversations/{public_id}")

    async def reply(self, public_id: str, text: str) -> Reply:
        async with self.http.post(
            f"{self.url}/api/conversations/{public_id}/messages", json={"text": text}, headers=self._auth()
        ) as resp:
            return Reply(resp.status, await resp.json())

    async def wait_conversation(self, professional: str, state: str = "open", count: int = 1) -> str:
        """The id of the latest conversation with ``professional`` in ``state``, once it is there."""

        async def found() -> str | None:
            for group in await self.conversations():
                matching = [c for c in group["conversations"] if c["state"] == state]
                if group["address"] == professional and len(matching) >= count:
                    return str(max(matching, key=lambda c: c["opened_at"])["id"])
            return None

        found_id: str = await wait_for(found)
        return found_id

    async def wait_closed(self, public_id: str) -> dict[str, Any]:
        async def closed() -> dict[str, Any] | None:
            detail = await self.conversation(public_id)
            return detail if detail["state"] == "closed" else None

        detail: dict[str, Any] = await wait_for(closed)
        return detail


@dataclass
class Deployment:
    a: Operator
    b: Operator
    pki: Any
    patient: PatientAPI

    @property
    def portal_url(self) -> str:
        return f"http://127.0.0.1:{self.a.portal}"

    async def professional_writes(
        self,
        sender: str,
        subject: str,
        body: str,
        *,
        name: str = "",
        in_reply_to: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> str:
        """``sender`` submits a message to the patient on their own operator; returns its Message-ID."""
        op = self.a if sender.endswith("@" + self.a.domain) else self.b
        msg = build(
            sender, PATIENT, subject, body, in_reply_to=in_reply_to, extra=extra, name=name, domain=op.domain
        )
        client = await op.submission_client(self.pki, sender)
        await client.send_message(msg)
        await client.quit()
        return str(msg["Message-ID"])

    async def durand_receives(self, in_reply_to: str) -> bytes:
        """dr.durand's copy at B of the message answering ``in_reply_to``, once B stored it."""

        async def arrived() -> bytes | None:
            wanted = f"In-Reply-To: {in_reply_to}".encode()
            return next((m for m in await self.b.inbox("dr.durand") if wanted in m), None)

        raw: bytes = await wait_for(arrived)
        return raw

    def imap(self, user: str) -> imaplib.IMAP4_SSL:
        """A blocking IMAPS session on A, logged in (call it and its commands from a thread)."""
        client = imaplib.IMAP4_SSL("127.0.0.1", self.a.imaps, ssl_context=tls_client(self.pki), timeout=10)
        client.login(user, PASSWORD)
        return client


async def _setup_a(a: Operator) -> None:
    """Patient domain, the patient (directory record, invited and activated), dr.durand in the directory."""
    assert a.rt is not None
    await accounts.add_domain(a.rt, PATIENT_DOMAIN, patients=True)
    await accounts.add_mailbox(a.rt, PATIENT, "PAT")
    await add_patient(a.rt.db, make_record(PATIENT_INS, "Petit", "Pierrette", "F", "1962-11-23"))
    await add_professional(a.rt, DURAND, "10000000017", "DURAND", "Jean", "Cardiologie", hosted=False)
    _address, code, _expires = await service.invite(a.rt, PATIENT_INS)
    await service.activate(a.rt, PATIENT_INS, code, PATIENT_PASSWORD, "127.0.0.1")


@pytest.fixture
async def deployment(tmp_path: Path, a_db_url: str, pki: Any) -> AsyncIterator[Deployment]:
    a, b = two_operators(tmp_path)
    ops = [a, b]
    a.imaps, a.portal, a.also_hosts = free_port(), free_port(), (PATIENT_DOMAIN,)
    write_config(a, pki, a_db_url, b)
    write_config(b, pki, f"sqlite+aiosqlite:///{b.directory}/caducee.db", a)
    try:
        await prepare(a, pki, ["dr.martin"])
        await prepare(b, pki, ["dr.durand"])
        assert b.rt is not None
        await trust.add(b.rt.db, PATIENT_DOMAIN, pki.tls["a.mssante.test"].subject)
        await _setup_a(a)
        a.start()
        b.start()
        await asyncio.gather(a.ready(), b.ready())
        async with aiohttp.ClientSession() as http:
            patient = PatientAPI(http, f"http://127.0.0.1:{a.portal}")
            await patient.login()
            yield Deployment(a, b, pki, patient)
    finally:
        for op in ops:
            op.stop()
            if op.rt is not None:
                await op.rt.close()
