"""Issue 19: the admin listener's ``/healthz`` and ``/readyz``, on real sockets, with real failures."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mailserver import admin
from mailserver.db import migrate
from mailserver.runtime import Runtime
from mailserver.smtp import service as smtp
from tests.conftest import make_settings, pg_admin


class Served:
    """An admin listener and operator A's SMTP listeners, started as ``caducee serve`` starts them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def __aenter__(self) -> Served:
        self.rt.listeners.extend(await admin.start(self.rt))
        self.port = int(self.rt.listeners[0].address.rsplit(":", 1)[1])
        self.rt.listeners.extend(await smtp.start(self.rt))
        self.rt.started = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        for listener in reversed(self.rt.listeners):
            await listener.close()

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.port}{path}") as r:
            return r.status, await r.json()


async def build(tmp_path: Path, url: str, pki: Any) -> Runtime:
    a = pki.tls["a.mssante.test"]
    await migrate.upgrade_async(url)
    rt = Runtime.build(
        make_settings(
            tmp_path,
            url,
            tls={"cert": str(a.chain_path), "key": str(a.key_path), "peer_ca": str(pki.peer_ca)},
            smtp={"listen": ["127.0.0.1:0"]},
            submission={"listen": ["127.0.0.1:0"], "tls_listen": []},
            delivery={"workers": 1},
        )
    )
    await asyncio.to_thread(rt.blobs.ensure)
    return rt


@pytest.fixture
async def rt(tmp_path: Path, db_url: str, pki: Any) -> AsyncIterator[Runtime]:
    runtime = await build(tmp_path, db_url, pki)
    try:
        yield runtime
    finally:
        await runtime.close()


async def test_ready_when_database_store_and_listeners_are(rt: Runtime) -> None:
    async with Served(rt) as served:
        assert await served.get("/healthz") == (200, {"status": "up"})
        assert await served.get("/readyz") == (200, {"ready": True})
        assert not list(rt.blobs.root.glob(admin.PROBE + "*"))  # the write probe leaves nothing


async def test_not_ready_while_starting(rt: Runtime) -> None:
    async with Served(rt) as served:
        rt.started = False
        status, body = await served.get("/readyz")
        assert (status, body) == (503, {"ready": False, "failing": {"listeners": "still starting"}})


async def test_a_closed_listener_is_named(rt: Runtime) -> None:
    async with Served(rt) as served:
        mta = next(x for x in rt.listeners if x.service == "smtp")
        mta.server.close()
        await mta.server.wait_closed()
        status, body = await served.get("/readyz")
        assert status == 503
        assert body["failing"] == {f"listener smtp {mta.address}": "not accepting connections"}
        assert await served.get("/healthz") == (200, {"status": "up"})


async def test_a_store_that_cannot_be_written_is_named(rt: Runtime) -> None:
    async with Served(rt) as served:
        shutil.rmtree(rt.blobs.root)
        rt.blobs.root.write_text("not a directory")  # as a lost mount would leave it: no write goes in
        status, body = await served.get("/readyz")
        assert status == 503 and list(body["failing"]) == ["store"], body
        assert "NotADirectoryError" in body["failing"]["store"]
        rt.blobs.root.unlink()
        rt.blobs.ensure()
        assert await served.get("/readyz") == (200, {"ready": True})


async def test_an_unreadable_crl_file_is_named(rt: Runtime, tmp_path: Path) -> None:
    """Every peer would be refused while a CRL file cannot be read: not ready, and which one says why."""
    async with Served(rt) as served:
        rt.revocation.crl_files = [tmp_path / "none.crl"]
        status, body = await served.get("/readyz")
        assert status == 503 and list(body["failing"]) == ["revocation"], body
        assert "none.crl" in body["failing"]["revocation"]


async def test_a_database_that_is_gone_is_named(tmp_path: Path, pg_url: str, pki: Any) -> None:
    rt = await build(tmp_path, pg_url, pki)
    try:
        async with Served(rt) as served:
            assert (await served.get("/readyz"))[0] == 200
            name = pg_url.rsplit("/", 1)[1]
            await pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')
            status, body = await served.get("/readyz")
            assert status == 503 and list(body["failing"]) == ["database"], body
            assert await served.get("/healthz") == (200, {"status": "up"})
    finally:
        await rt.close()
