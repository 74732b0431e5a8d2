"""GET /api/directory: the national directory for address books, to authenticated users only."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp

from directory.importer import import_extraction
from tests.portal.conftest import Portal
from tests.portal.helpers import DOCTOR

SAMPLE = (
    Path(__file__).resolve().parents[3]
    / "shared/data/directory/Extraction_Correspondance_MSSante_202611220400.txt"
)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_directory_search_needs_credentials_and_finds_people(portal: Portal, tmp_path: Path) -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    extraction = tmp_path / "extraction.txt"
    extraction.write_text(
        "\n".join([lines[0], *(line for line in lines[1:] if "|LEGRAND|Marie|" in line)]) + "\n"
    )
    summary = await import_extraction(portal.rt.db, extraction)
    assert summary.added >= 1

    async with aiohttp.ClientSession() as http:
        url = f"{portal.url}/api/directory"
        async with http.get(url, params={"q": "legrand"}) as r:
            assert r.status == 401
        async with http.get(url, params={"q": "legrand"}, headers=basic(DOCTOR, "wrong password")) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        async with http.get(url, params={"q": "Légrand"}, headers=basic(DOCTOR, "x" * 12)) as r:
            assert r.status == 200
            found = await r.json()
        assert "marie.legrand@infirmier.mssante.test" in [e["address"] for e in found]
        entry = next(e for e in found if e["address"] == "marie.legrand@infirmier.mssante.test")
        assert entry["last_name"] == "LEGRAND" and entry["profession"] == "Infirmier"
        async with http.get(url, headers=basic(DOCTOR, "x" * 12)) as r:
            assert r.status == 400
        async with http.get(url, params={"q": "x", "limit": "many"}, headers=basic(DOCTOR, "x" * 12)) as r:
            assert r.status == 400
