"""Directory benchmark: import, re-import and search on a synthetic national extraction.

    .venv/bin/python bench/directory.py [--rows 300000] [--database-url URL] [--keep DIR]

The file is generated deterministically (same seed, same bytes) in the real format: 31 ``|``-separated
columns, PER rows with Luhn-valid RPPS identifiers, ORG rows tied to FINESS structures. Targets from the
issue: 300,000 rows imported in under 60 s on SQLite, re-imported in under 30 s, searches under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from directory.importer import COLUMNS, import_extraction
from directory.search import search
from mailserver.db import migrate
from mailserver.db.engine import Database

LAST = [
    "MARTIN",
    "BERNARD",
    "THOMAS",
    "PETIT",
    "ROBERT",
    "RICHARD",
    "DURAND",
    "DUBOIS",
    "MOREAU",
    "LAURENT",
    "SIMON",
    "MICHEL",
    "LEFÈVRE",
    "LEROY",
    "ROUX",
    "DAVID",
    "BERTRAND",
    "MOREL",
    "FOURNIER",
    "GIRARD",
    "BONNET",
    "DUPONT",
    "LAMBERT",
    "FONTAINE",
    "ROUSSEAU",
    "VINCENT",
    "MULLER",
    "LEFEBVRE",
    "FAURE",
    "ANDRÉ",
    "MERCIER",
    "BLANC",
    "GUÉRIN",
    "BOYER",
    "GARNIER",
    "CHEVALIER",
    "FRANÇOIS",
    "LEGRAND",
    "GAUTHIER",
    "GARCIA",
    "PERRIN",
    "ROBIN",
    "CLÉMENT",
    "MORIN",
    "NICOLAS",
    "HENRY",
    "ROUSSEL",
    "MATHIEU",
    "GAUTIER",
    "MASSON",
    "MARCHAND",
    "DUVAL",
    "DENIS",
    "DUMONT",
    "MARIE",
    "LEMAIRE",
    "NOËL",
    "MEYER",
    "DUFOUR",
    "MEUNIER",
    "BRUN",
    "BLANCHARD",
    "GIRAUD",
    "JOLY",
    "RIVIÈRE",
    "LUCAS",
    "BRUNET",
    "GAILLARD",
    "BARBIER",
    "ARNAUD",
    "MARTINEZ",
    "GÉRARD",
    "ROCHE",
    "RENARD",
    "SCHMITT",
    "ROY",
    "LEROUX",
    "COLIN",
    "VIDAL",
    "CARON",
    "PICARD",
    "ROGER",
    "FABRE",
    "AUBERT",
    "LEMOINE",
    "RENAUD",
    "DUMAS",
    "LACROIX",
    "OLIVIER",
    "PHILIPPE",
    "BOURGEOIS",
    "PIERRE",
    "BENOÎT",
    "REY",
    "LECLERC",
    "PAYET",
    "ROLLAND",
    "LE GALL",
    "O'CONNOR",
    "BEN SALAH",
    "N'DIAYE",
    "DA SILVA",
]
FIRST = [
    "Marie",
    "Jean",
    "Pierre",
    "Michel",
    "André",
    "Philippe",
    "Nathalie",
    "Isabelle",
    "Sylvie",
    "Catherine",
    "Françoise",
    "Hélène",
    "Léa",
    "Zoé",
    "Noël",
    "Gaëlle",
    "Chloé",
    "Jérôme",
    "Stéphane",
    "Frédéric",
    "Cécile",
    "Anaïs",
    "Maëlle",
    "Élodie",
    "Émilie",
    "Aurélie",
    "Yann",
    "Loïc",
    "Jean-Luc",
    "Marie-Hélène",
    "François",
    "Camille",
    "Lucas",
    "Hugo",
    "Inès",
    "Océane",
    "Benoît",
    "Thérèse",
    "Agnès",
    "Valérie",
]
PROFESSIONS = (
    ("10", "Médecin"),
    ("21", "Pharmacien"),
    ("40", "Chirurgien-Dentiste"),
    ("50", "Sage-Femme"),
    ("60", "Infirmier"),
    ("70", "Masseur-Kinésithérapeute"),
    ("80", "Pédicure-Podologue"),
)
SKILLS = (
    ("SM04", "Cardiologie et maladies vasculaires"),
    ("SM24", "Gynécologie-obstétrique"),
    ("SM53", "Radio-diagnostic"),
    ("SM54", "Médecine générale"),
    ("SM26", "Qualifié en médecine générale"),
    ("SM42", "Pédiatrie"),
    ("SM15", "Dermatologie et vénéréologie"),
)
CITIES = (
    ("75013", "PARIS", "75"),
    ("69003", "LYON", "69"),
    ("13005", "MARSEILLE", "13"),
    ("31059", "TOULOUSE CEDEX 9", "31"),
    ("33000", "BORDEAUX", "33"),
    ("44000", "NANTES", "44"),
    ("67000", "STRASBOURG", "67"),
    ("59000", "LILLE", "59"),
    ("20000", "AJACCIO", "2A"),
    ("97400", "SAINT-DENIS", "974"),
    ("79300", "BRESSUIRE", "79"),
    ("35000", "RENNES", "35"),
    ("06000", "NICE", "06"),
    ("34000", "MONTPELLIER", "34"),
    ("63000", "CLERMONT-FERRAND", "63"),
)
SERVICES = (
    "Cardiologie",
    "Urgences",
    "Secrétariat médical",
    "Anesthésie",
    "Pharmacie",
    "Radiologie",
    "Accueil",
)
STRUCTURE_KINDS = ("CENTRE HOSPITALIER", "CABINET", "CLINIQUE", "PHARMACIE", "LABORATOIRE")
DOMAINS = (
    "medecin.mssante.test",
    "infirmier.mssante.test",
    "pharmacien.mssante.test",
    "chu-nord.mssante.test",
)
STREETS = ("DE LA RÉPUBLIQUE", "VICTOR HUGO", "JEAN JAURÈS", "DES ÉCOLIERS", "DE NANTES")


def luhn_key(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def _slug(text: str) -> str:
    import unicodedata

    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return "".join(c if c.isalnum() else "-" for c in plain).strip("-")


def generate(path: Path, rows: int, seed: int = 20261122) -> None:
    """Write a deterministic extraction of ``rows`` rows (about 12 % ORG) to ``path``."""
    rnd = random.Random(seed)
    n_structures = max(10, rows // 20)
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("|".join(COLUMNS.values()) + "\n")
        for i in range(rows):
            s = rnd.randrange(n_structures)
            finess = f"{(s % 95) + 1:02d}{s:07d}"
            postal, city, dept = CITIES[s % len(CITIES)]
            org = f"{STRUCTURE_KINDS[s % len(STRUCTURE_KINDS)]} {LAST[s % len(LAST)]}"
            street = [
                "",
                "",
                str(rnd.randrange(1, 200)),
                rnd.choice(("", "BIS")),
                "R",
                rnd.choice(STREETS),
                "",
            ]
            place = [f"{postal} {city}", postal, dept, "FRANCE"]
            structure = ["1", "1" + finess]
            if rnd.random() < 0.12:
                service = rnd.choice(SERVICES)
                address = f"{_slug(service)}.{i}@{rnd.choice(DOMAINS)}"
                fields = [
                    "ORG",
                    address,
                    "",
                    "",
                    "",
                    *structure,
                    service,
                    *[""] * 10,
                    org,
                    "",
                    *street,
                    *place,
                ]
            else:
                last, first = rnd.choice(LAST), rnd.choice(FIRST)
                body = f"10{i:08d}"
                rpps = body + luhn_key(body)
                code, label = rnd.choice(PROFESSIONS)
                skill = rnd.choice(SKILLS) if code == "10" else ("", "")
                address = f"{_slug(first)}.{_slug(last)}.{i}@{rnd.choice(DOMAINS)}"
                fields = [
                    "PER",
                    address,
                    "8",
                    rpps,
                    "8" + rpps,
                    *structure,
                    "",
                    rnd.choice(("DR", "MME", "M", "PR")),
                    last,
                    first,
                    "C",
                    "Civil",
                    code,
                    label,
                    *skill,
                    rnd.choice(("O", "N", "")),
                    org,
                    "",
                    *street,
                    *place,
                ]
            out.write("|".join(fields) + "\n")


QUERIES = (
    "martin",
    "dupont",
    "le gall",
    "o'connor",
    "lefevre",
    "gaelle",
    "cardiologie",
    "pediatrie lyon",
    "infirmier nantes",
    "75013",
    "chirurgien dentiste",
    "radiologie marseille",
    "rousseau",
    "helene",
    "kine",
    "pharmacie",
    "dermatologie",
    "noel",
    "clinique",
    "benoit",
)


async def run(rows: int, url: str | None, workdir: Path) -> None:
    extraction = workdir / "Extraction_Correspondance_MSSante_bench.txt"
    t0 = time.monotonic()
    generate(extraction, rows)
    print(
        f"generated {rows:,} rows ({extraction.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s"
    )
    url = url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    await migrate.upgrade_async(url)
    db = Database(url)
    try:
        first = await import_extraction(db, extraction)
        print(f"import:    {first.seconds:6.1f} s  {first.rows_per_second:8,.0f} rows/s  {first.as_dict()}")
        print(f"peak RSS after import: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        again = await import_extraction(db, extraction)
        print(f"re-import: {again.seconds:6.1f} s  {again.rows_per_second:8,.0f} rows/s  {again.as_dict()}")
        timings = []
        async with db.read() as session:
            for q in QUERIES * 5:
                t = time.perf_counter()
                await search(session, q, limit=20)
                timings.append((time.perf_counter() - t) * 1000)
        timings.sort()
        p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
        print(
            f"search:    {len(timings)} queries  p50 {statistics.median(timings):.1f} ms  p99 {p99:.1f} ms"
            f"  max {timings[-1]:.1f} ms"
        )
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--database-url", help="default: a SQLite file in the work directory")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args.rows, args.database_url, args.keep))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(args.rows, args.database_url, Path(tmp)))


if __name__ == "__main__":
    main()
