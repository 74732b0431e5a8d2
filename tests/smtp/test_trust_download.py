"""Issue 19: the trust list fetched over HTTPS from ``[trust] url``, against a local HTTPS server (aiohttp
with a test-PKI certificate on 127.0.0.1): the published sample, a broken XML, a 500, a wrong
certificate, a download that never ends, and a shrunken list (refused unless forced)."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from mailserver import trust, trust_download
from mailserver.runtime import Runtime
from tests.smtp.conftest import start_env, wait_for

SAMPLE = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "directory" / "listeblanchemssante.xml"
)
NAMES = re.findall(r"<Nom>([^<]+)</Nom>", SAMPLE.read_text(encoding="utf-8"))


def shrunken(keep: int) -> bytes:
    """The sample with only its first ``keep`` domains."""
    text = SAMPLE.read_text(encoding="utf-8")
    blocks = re.findall(r"\s*<Domaine>.*?</Domaine>", text, re.S)
    for block in blocks[keep:]:
        text = text.replace(block, "", 1)
    return text.encode()


class Publisher:
    """The ANS's web server, on loopback, with a certificate of ``identity``."""

    def __init__(self, identity: Any) -> None:
        self.identity = identity
        self.hang = asyncio.Event()

    async def __aenter__(self) -> Publisher:
        app = web.Application()
        pages = {
            "/listeblanchemssante.xml": SAMPLE.read_bytes(),
            "/broken.xml": SAMPLE.read_bytes()[:700],
            "/shrunk.xml": shrunken(3),
        }
        for path, body in pages.items():

            async def page(_request: web.Request, body: bytes = body) -> web.Response:
                return await _xml(body)

            app.router.add_get(path, page)
        app.router.add_get("/error", self.error)
        app.router.add_get("/slow", self.slow)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.identity.chain_path), str(self.identity.key_path))
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.hang.set()
        await self.runner.cleanup()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def error(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")

    async def slow(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(SAMPLE.read_bytes()[:100])
        await self.hang.wait()  # the rest never comes
        return resp


async def _xml(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/xml")


@pytest.fixture
async def publisher(pki: Any) -> AsyncIterator[Publisher]:
    async with Publisher(pki.tls["a.mssante.test"]) as p:
        yield p


def point(rt: Runtime, pki: Any, url: str) -> None:
    rt.settings.trust.url = url
    rt.settings.trust.ca_file = str(pki.peer_ca)


def samples(rt: Runtime) -> dict[str, float]:
    family = rt.metrics.trust_refreshes
    return {
        s.labels["result"]: s.value for m in family.collect() for s in m.samples if s.name.endswith("_total")
    }


async def names(rt: Runtime) -> list[str]:
    return [e.name for e in await trust.entries(rt.db)]


async def test_the_published_list_is_installed_then_unchanged(
    runtime: Runtime, pki: Any, publisher: Publisher
) -> None:
    point(runtime, pki, publisher.url("/listeblanchemssante.xml"))
    first = await trust_download.refresh(runtime, "admin")
    assert sorted(first.report.added) == sorted(NAMES) and len(NAMES) == 9
    again = await trust_download.refresh(runtime, "server")
    assert not again.changed and again.report.unchanged == 9
    assert samples(runtime) == {"installed": 1, "unchanged": 1}
    events = await runtime.audit.events(action="trust-refresh")
    assert [(e.actor, e.request, e.response) for e in events] == [
        (
            "admin",
            f"GET {runtime.settings.trust.url}",
            "installed: 9 added, 0 removed, 0 changed, 0 unchanged",
        ),
        (
            "server",
            f"GET {runtime.settings.trust.url}",
            "unchanged: 0 added, 0 removed, 0 changed, 9 unchanged",
        ),
    ]


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/broken.xml", "not well-formed XML"),
        ("/error", "answered HTTP 500 Internal Server Error"),
        ("/slow", "no complete answer within 1s"),
        ("/missing.xml", "answered HTTP 404"),
    ],
)
async def test_a_failed_download_keeps_the_current_list(
    runtime: Runtime, pki: Any, publisher: Publisher, path: str, why: str
) -> None:
    point(runtime, pki, publisher.url("/listeblanchemssante.xml"))
    await trust_download.refresh(runtime, "admin")
    point(runtime, pki, publisher.url(path))
    runtime.settings.trust.timeout = 1
    with pytest.raises(trust.TrustListError, match=why):
        await trust_download.refresh(runtime, "server")
    assert await names(runtime) == sorted(NAMES)
    assert samples(runtime) == {"installed": 1, "failed": 1}
    last = (await runtime.audit.events(action="trust-refresh"))[-1]
    assert last.actor == "server" and last.response.startswith("failed: ") and why in last.response
    assert last.response.endswith("the trust list is unchanged")


async def test_a_server_certificate_from_another_ca_is_refused(runtime: Runtime, pki: Any) -> None:
    async with Publisher(pki.tls_impostor) as impostor:
        point(runtime, pki, impostor.url("/listeblanchemssante.xml"))
        with pytest.raises(trust.TrustListError, match="server certificate refused"):
            await trust_download.refresh(runtime, "admin")
    assert await names(runtime) == []
    assert samples(runtime) == {"failed": 1}
    (event,) = await runtime.audit.events(action="trust-refresh")
    assert "CERTIFICATE_VERIFY_FAILED" in event.response or "certificate verify failed" in event.response


async def test_a_shrunken_list_is_refused_unless_forced(
    runtime: Runtime, pki: Any, publisher: Publisher
) -> None:
    point(runtime, pki, publisher.url("/listeblanchemssante.xml"))
    await trust_download.refresh(runtime, "admin")
    point(runtime, pki, publisher.url("/shrunk.xml"))
    with pytest.raises(trust.TooManyRemoved, match=r"removes 6 of the 9 current domains \(67%\)"):
        await trust_download.refresh(runtime, "server")
    assert await names(runtime) == sorted(NAMES)
    runtime.settings.trust.max_removed = 70  # 6 of 9 is within 70 %
    forced = await trust_download.refresh(runtime, "admin")
    assert len(forced.report.removed) == 6 and await names(runtime) == sorted(NAMES[:3])
    assert samples(runtime) == {"installed": 2, "refused": 1}
    responses = [e.response for e in await runtime.audit.events(action="trust-refresh")]
    assert responses[1].startswith("refused: the new list removes 6")


def test_cli_refresh_and_force(tmp_path: Path, pki: Any) -> None:
    from cli import main
    from mailserver.db import migrate

    async def serve_and_run() -> list[Any]:
        async with Publisher(pki.tls["a.mssante.test"]) as p:
            url = f"sqlite+aiosqlite:///{tmp_path}/c.db"
            cfg = tmp_path / "caducee.toml"
            results = []
            for path in ("/listeblanchemssante.xml", "/shrunk.xml"):
                cfg.write_text(
                    f'[database]\nurl = "{url}"\n[storage]\npath = "{tmp_path}/store"\n'
                    f'[trust]\nurl = "{p.url(path)}"\nca_file = "{pki.peer_ca}"\n'
                )
                for extra in ([], ["--force"]) if path == "/shrunk.xml" else ([],):
                    args = ["--config", str(cfg), "trust", "refresh", *extra]
                    results.append(await asyncio.to_thread(CliRunner().invoke, main, args))
            return results

    migrate.upgrade(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    installed, refused, forced = asyncio.run(serve_and_run())
    assert installed.exit_code == 0 and "added    chu-nord.mssante.test" in installed.output
    assert "9 added, 0 removed" in installed.output
    assert refused.exit_code == 1 and "use --force to install it anyway" in refused.output
    assert "the trust list is unchanged" in refused.output
    assert forced.exit_code == 0 and "0 added, 6 removed" in forced.output


async def test_serve_downloads_the_list_periodically(tmp_path: Path, pki: Any, publisher: Publisher) -> None:
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/caducee.db",
        pki,
        trust={
            "url": publisher.url("/listeblanchemssante.xml"),
            "ca_file": str(pki.peer_ca),
            "max_removed": 100,
        },
    )
    try:

        async def installed() -> bool:
            return await names(env.rt) == sorted(NAMES)

        await wait_for(installed)
        assert samples(env.rt) == {"installed": 1}
    finally:
        await env.close()
