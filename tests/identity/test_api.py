"""GET /api/directory with a Pro Santé Connect bearer token (RFC 6750), beside Basic and sessions."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from directory.importer import import_extraction
from mailserver.portal import web
from tests.identity.conftest import DURAND_ID, MARTIN, MARTIN_ID, Env

SAMPLE = (
    Path(__file__).resolve().parents[3]
    / "shared/data/directory/Extraction_Correspondance_MSSante_202611220400.txt"
)


async def test_directory_accepts_the_providers_bearer_tokens(env: Env, tmp_path: Path) -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    extraction = tmp_path / "extraction.txt"
    extraction.write_text("\n".join([lines[0], *(x for x in lines[1:] if "|LEGRAND|Marie|" in x)]) + "\n")
    await import_extraction(env.rt.db, extraction)
    env.rt.settings.portal.listen = ["127.0.0.1:0"]
    env.rt.settings.portal.secure_cookies = False
    [listener] = await web.start(env.rt)
    env.listeners.append(listener)
    url = f"http://{listener.address}/api/directory"
    p = env.provider
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {p.token(MARTIN_ID)}"}
        async with http.get(url, params={"q": "legrand"}, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert "marie.legrand@infirmier.mssante.test" in [e["address"] for e in await r.json()]
        login = (await env.audit("login"))[-1]
        assert (login.actor, login.request) == (
            MARTIN,
            f"directory-api login (bearer token Bearer, person {MARTIN_ID})",
        )
        for bad in (p.token(MARTIN_ID, aud="other"), p.unsigned(MARTIN_ID), p.token("810000000025")):
            async with http.get(
                url, params={"q": "legrand"}, headers={"Authorization": f"Bearer {bad}"}
            ) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="Caducee", error="invalid_token"'
        async with http.get(
            url, params={"q": "legrand"}, headers={"Authorization": f"Bearer {p.token(DURAND_ID)}"}
        ) as r:
            assert r.status == 200
        async with http.get(f"http://{listener.address}/api/openapi.json") as r:
            doc = await r.json()
        assert {"proSanteConnect": []} in doc["paths"]["/api/directory"]["get"]["security"]


async def test_sending_api_accepts_the_providers_bearer_tokens(env: Env) -> None:
    """POST /api/v1/messages as the professional the token names (the validator /api/directory uses)."""
    env.rt.settings.portal.listen = ["127.0.0.1:0"]
    env.rt.settings.portal.secure_cookies = False
    [listener] = await web.start(env.rt)
    env.listeners.append(listener)
    url = f"http://{listener.address}/api/v1/messages"
    body = {"from": MARTIN, "to": [MARTIN], "subject": "Note", "text": "à moi-même"}
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {env.provider.token(MARTIN_ID)}"}
        async with http.post(url, json=body, headers=headers) as r:
            assert r.status == 202, await r.text()
            assert [x["state"] for x in (await r.json())["recipients"]] == ["delivered"]
        bad = {"Authorization": f"Bearer {env.provider.token(MARTIN_ID, aud='other')}"}
        async with http.post(url, json=body, headers=bad) as r:
            assert r.status == 401 and r.content_type == "application/problem+json"
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="Caducee", error="invalid_token"'
    assert (await env.audit("login"))[-1].request.startswith("api login (bearer token")
