"""Directory search: accents and case, ranking, liste rouge and retired entries, filters, both engines."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from directory.importer import import_extraction
from directory.models import DirectoryMailbox
from directory.search import search
from directory.text import fold, words
from mailserver.db.engine import Database


def test_fold() -> None:
    assert fold("Gaëlle O'CONNOR") == "gaelle o connor"
    assert fold("  Cœur-Léon  ") == "coeur leon"
    assert words("Jean-Luc  jean LUC") == ["jean", "luc"]


async def test_accents_and_case(db: Database, sample: Path) -> None:
    await import_extraction(db, sample)
    async with db.read() as session:
        plain = [e.address for e in await search(session, "lefevre francois")]
        accented = [e.address for e in await search(session, "LEFÈVRE François")]
        assert plain == accented
        assert "francois.lefevre@ch-bressuire.mssante.test" in plain
        assert [e.last_name for e in await search(session, "gaelle o'connor", limit=4)] == ["O'CONNOR"] * 4


async def test_exact_surname_first(db: Database, sample: Path) -> None:
    await import_extraction(db, sample)
    async with db.read() as session:
        found = await search(session, "martin", limit=50)
    names = [e.last_name for e in found]
    exact = [n for n in names if n == "MARTIN"]
    assert exact and names[: len(exact)] == exact
    assert any(e.organisation == "CABINET MARTIN" and e.last_name != "MARTIN" for e in found)


async def test_fields_searched_and_filters(db: Database, sample: Path) -> None:
    await import_extraction(db, sample)
    async with db.read() as session:
        by_skill = await search(session, "gynecologie bordeaux")
        assert by_skill and all(
            e.skill == "Gynécologie-obstétrique" and e.city == "BORDEAUX" for e in by_skill
        )
        by_postcode = await search(session, "75013", limit=5)
        assert by_postcode and all(e.postal_code == "75013" for e in by_postcode)
        orgs = await search(session, "", city="toulouse", type="org", limit=5)
        assert orgs and all(e.type == "ORG" and e.city.startswith("TOULOUSE") for e in orgs)
        nurses = await search(session, "marie", profession="infirmier", limit=100)
        assert nurses and all(e.profession == "Infirmier" for e in nurses)
        assert await search(session, "zzzyxw") == []
        assert await search(session, "") == []


async def test_liste_rouge_and_retired_are_never_returned(db: Database, sample: Path) -> None:
    await import_extraction(db, sample)
    target = "gaelle.o-connor@medecin.mssante.test"
    retired = "gaelle.o-connor24@chu-nord.mssante.test"
    async with db.write() as session:
        await session.execute(
            update(DirectoryMailbox).where(DirectoryMailbox.address == target).values(liste_rouge=True)
        )
        await session.execute(
            update(DirectoryMailbox).where(DirectoryMailbox.address == retired).values(status="retired")
        )
    async with db.read() as session:
        found = {e.address for e in await search(session, "o'connor", limit=200)}
        assert found and target not in found and retired not in found
        assert target not in {e.address for e in await search(session, "o connor gynecologie bordeaux")}


async def test_postgresql_search(pg_url: str, sample: Path) -> None:
    db = Database(pg_url)
    try:
        await import_extraction(db, sample)
        async with db.read() as session:
            accented = [e.address for e in await search(session, "LEFÈVRE François")]
            assert "francois.lefevre@ch-bressuire.mssante.test" in accented
            names = [e.last_name for e in await search(session, "martin", limit=50)]
            assert names[0] == "MARTIN"
            orgs = await search(session, "", city="toulouse", type="ORG", limit=5)
            assert orgs and all(e.type == "ORG" for e in orgs)
    finally:
        await db.close()
