"""Import of the national extraction: counts, rejects, idempotence, next-day files, formats, atomicity."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from directory import importer, search
from directory.importer import DirectoryImportError, ImportSummary, import_extraction, read_rejects
from directory.models import DirectoryMailbox, Professional, Structure, import_row
from directory.recipients import directory_status
from mailserver.db.engine import Database

DUPLICATE_LINE = 2611  # the sample repeats aurelie.boyer55@infirmier.mssante.test (first on line 2136)


def write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


async def run(db: Database, path: Path, **kwargs: object) -> tuple[ImportSummary, list[tuple[int, str]]]:
    out = io.StringIO()
    summary = await import_extraction(db, path, rejects=out, **kwargs)  # type: ignore[arg-type]
    return summary, read_rejects(out.getvalue())


async def count(db: Database, *where: object) -> int:
    async with db.read() as session:
        return (
            await session.execute(select(func.count()).select_from(DirectoryMailbox).where(*where))
        ).scalar_one()


async def snapshot(db: Database) -> list[tuple[object, ...]]:
    async with db.read() as session:
        rows = await session.execute(
            select(
                DirectoryMailbox.address,
                DirectoryMailbox.status,
                DirectoryMailbox.row_hash,
                DirectoryMailbox.updated_at,
                DirectoryMailbox.search_text,
            ).order_by(DirectoryMailbox.address)
        )
        return [tuple(r) for r in rows]


def replace_field(line: str, index: int, value: str) -> str:
    fields = line.split("|")
    fields[index] = value
    return "|".join(fields)


async def test_sample_file(db: Database, sample: Path) -> None:
    summary, rejects = await run(db, sample)
    assert (summary.read, summary.added, summary.updated, summary.retired) == (3000, 2999, 0, 0)
    assert rejects == [(DUPLICATE_LINE, rejects[0][1])]
    assert "duplicate address aurelie.boyer55@infirmier.mssante.test (first on line 2136)" in rejects[0][1]
    assert await count(db) == 2999
    async with db.read() as session:
        per = (
            await session.execute(
                select(DirectoryMailbox, Professional, Structure)
                .join(Professional, Professional.id == DirectoryMailbox.professional_id)
                .join(Structure, Structure.id == DirectoryMailbox.structure_id)
                .where(DirectoryMailbox.address == "gaelle.o-connor@medecin.mssante.test")
            )
        ).one()
        assert per.DirectoryMailbox.type == "PER"
        assert per.DirectoryMailbox.display_name == "Gaëlle O'CONNOR"
        assert per.Professional.rpps == "10983867564"
        assert per.Professional.skill_label == "Gynécologie-obstétrique"
        assert (per.Structure.identifier, per.Structure.city) == ("1330890682", "BORDEAUX")
        assert (await session.execute(select(func.count()).select_from(import_row))).scalar_one() == 0
    assert summary.as_dict()["rows_per_second"] > 0


async def test_bad_rows_are_rejected_with_line_numbers(
    db: Database, sample_lines: list[str], tmp_path: Path
) -> None:
    lines = list(sample_lines[:21])
    good = lines[1]
    lines[3] = good.rsplit("|", 1)[0]  # 30 columns
    lines[5] = replace_field(replace_field(good, 3, "10690743919"), 4, "810690743919")  # wrong Luhn key
    lines[7] = replace_field(good, 1, "not an address")
    lines[9] = replace_field(replace_field(good, 0, "XYZ"), 1, "other@ght-atlantique.mssante.test")
    lines[11] = replace_field(replace_field(good, 4, "810690743917"), 1, "x1@ght-atlantique.mssante.test")
    lines[13] = replace_field(lines[2], 6, "")  # an ORG row without its structure
    summary, rejects = await run(db, write(tmp_path / "bad.txt", lines))
    reasons = dict(rejects)
    assert sorted(reasons) == [4, 6, 8, 10, 12, 14]
    assert "expected 31 columns, found 30" in reasons[4]
    assert "wrong Luhn check digit" in reasons[6]
    assert "invalid address 'not an address'" in reasons[8]
    assert "unknown mailbox type 'XYZ'" in reasons[10]
    assert "is not the type digit 8 followed by" in reasons[12]
    assert "needs a structure identifier" in reasons[14]
    assert (summary.read, summary.rejected, summary.added) == (20, 6, 14)
    assert await count(db) == 14


async def test_reimport_changes_nothing(db: Database, sample: Path) -> None:
    await run(db, sample)
    before = await snapshot(db)
    summary, _ = await run(db, sample)
    assert (summary.added, summary.updated, summary.retired, summary.unchanged) == (0, 0, 0, 2999)
    assert await snapshot(db) == before


async def test_next_day_file_adds_updates_and_retires(
    db: Database, sample_lines: list[str], tmp_path: Path
) -> None:
    await run(db, write(tmp_path / "day1.txt", sample_lines))
    day2 = list(sample_lines)
    day2[1] = replace_field(day2[1], 9, "BERNARD-DUVAL")  # noel.bernard: name changed
    removed = [day2[2].split("|")[1], day2[3].split("|")[1]]
    del day2[2:4]
    day2.append(replace_field(sample_lines[5], 1, "nouvelle.adresse@medecin.mssante.test"))
    summary, _ = await run(db, write(tmp_path / "day2.txt", day2))
    assert (summary.added, summary.updated, summary.retired) == (1, 1, 2)
    assert await count(db, DirectoryMailbox.status == "retired") == 2
    async with db.read() as session:
        assert [await directory_status(session, a) for a in removed] == ["retired", "retired"]
        assert await directory_status(session, "nouvelle.adresse@medecin.mssante.test") == "active"
        assert await directory_status(session, "Noel.Bernard@ght-atlantique.mssante.test") == "active"
        assert await directory_status(session, "nobody@medecin.mssante.test") is None
        found = await search.search(session, "bernard duval")
        assert [e.address for e in found] == ["noel.bernard@ght-atlantique.mssante.test"]
        assert await search.search(session, "bernard duval lyon") == []
    # The retired mailboxes come back when they reappear.
    summary, _ = await run(db, write(tmp_path / "day3.txt", sample_lines))
    assert (summary.added, summary.updated, summary.retired) == (0, 3, 1)
    assert await count(db, DirectoryMailbox.status == "retired") == 1


async def test_header_order_is_read_from_the_header(
    db: Database, sample: Path, sample_lines: list[str], tmp_path: Path
) -> None:
    order = list(reversed(range(31)))
    shuffled = ["|".join(line.split("|")[i] for i in order) for line in sample_lines]
    summary, rejects = await run(db, write(tmp_path / "reordered.txt", shuffled))
    assert (summary.added, len(rejects)) == (2999, 1)
    summary, _ = await run(db, sample)
    assert (summary.added, summary.updated, summary.unchanged) == (0, 0, 2999)


async def test_crlf_and_blank_lines(db: Database, sample_lines: list[str], tmp_path: Path) -> None:
    lines = [sample_lines[0], "", *sample_lines[1:11], "   ", "", *sample_lines[11:21]]
    lines[5] = replace_field(lines[5], 0, "BAD")
    summary, rejects = await run(db, write(tmp_path / "crlf.txt", lines, newline="\r\n"))
    assert (summary.read, summary.added, summary.rejected) == (20, 19, 1)
    assert rejects[0][0] == 6
    async with db.read() as session:
        addresses = (await session.execute(select(DirectoryMailbox.address))).scalars().all()
    assert all("\r" not in a for a in addresses)


async def test_zip_input(db: Database, sample: Path, tmp_path: Path) -> None:
    archive = tmp_path / "Extraction_Correspondance_MSSante.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(sample, sample.name)
    summary, _ = await run(db, archive)
    assert (summary.read, summary.added, summary.rejected) == (3000, 2999, 1)


async def test_dry_run_writes_nothing(
    db: Database, sample: Path, sample_lines: list[str], tmp_path: Path
) -> None:
    summary, rejects = await run(db, sample, dry_run=True)
    assert (summary.dry_run, summary.added, len(rejects)) == (True, 2999, 1)
    assert await count(db) == 0
    await run(db, sample)
    before = await snapshot(db)
    summary, _ = await run(db, write(tmp_path / "short.txt", sample_lines[:-10]), dry_run=True)
    assert (summary.retired, summary.unchanged) == (10, 2989)
    assert await snapshot(db) == before
    async with db.read() as session:
        assert (await session.execute(select(func.count()).select_from(import_row))).scalar_one() == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("Type de BAL|Adresse BAL\nPER|a@b.test\n", "missing column(s) 'Type Identifiant PP'"),
        (b"\xff\xfe|bad\n", "the header line is not UTF-8"),
    ],
)
async def test_unusable_file_is_fatal(
    db: Database, tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = tmp_path / "bad.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DirectoryImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await import_extraction(db, path)
    with pytest.raises(DirectoryImportError, match="file not found"):
        await import_extraction(db, tmp_path / "missing.txt")


async def test_failure_while_applying_leaves_the_old_state(
    db: Database, sample: Path, sample_lines: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run(db, sample)
    before = await snapshot(db)

    async def crash(session: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(search, "index_staged", crash)
    day2 = [
        replace_field(line, 9, "CHANGED") if i % 2 else line for i, line in enumerate(sample_lines[:2000])
    ]
    with pytest.raises(RuntimeError, match="power cut"):
        await run(db, write(tmp_path / "day2.txt", day2), max_retire=100)
    assert await snapshot(db) == before
    monkeypatch.undo()
    summary, _ = await run(db, sample)
    assert (summary.added, summary.updated, summary.retired) == (0, 0, 0)


async def test_failure_while_staging_leaves_the_old_state(
    db: Database, sample: Path, sample_lines: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run(db, sample)
    before = await snapshot(db)
    real = importer._stage_batch
    calls = 0

    async def stage_then_crash(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("killed")
        await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(importer, "_stage_batch", stage_then_crash)
    monkeypatch.setattr(importer, "BATCH", 1000)
    with pytest.raises(RuntimeError, match="killed"):
        await run(db, write(tmp_path / "short.txt", sample_lines[:100] + sample_lines[-2100:]))
    assert await snapshot(db) == before


@pytest.fixture
def size(sample: Path) -> int:
    return sample.stat().st_size


async def test_progress_is_reported(db: Database, sample: Path, size: int) -> None:
    seen: list[tuple[int, int]] = []
    await import_extraction(db, sample, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] == size


async def test_postgresql_import(pg_url: str, sample: Path, sample_lines: list[str], tmp_path: Path) -> None:
    db = Database(pg_url)
    try:
        summary, rejects = await run(db, sample)
        assert (summary.read, summary.added, len(rejects)) == (3000, 2999, 1)
        before = await snapshot(db)
        summary, _ = await run(db, sample)
        assert (summary.added, summary.updated, summary.unchanged) == (0, 0, 2999)
        assert await snapshot(db) == before
        day2 = [replace_field(sample_lines[1], 9, "BERNARD-DUVAL"), *sample_lines[4:]]
        summary, _ = await run(db, write(tmp_path / "day2.txt", [sample_lines[0], *day2]))
        assert (summary.added, summary.updated, summary.retired) == (0, 1, 2)
        async with db.read() as session:
            found = await search.search(session, "Bernard-Duval")
            assert [e.address for e in found] == ["noel.bernard@ght-atlantique.mssante.test"]
            assert await directory_status(session, sample_lines[2].split("|")[1]) == "retired"
    finally:
        await db.close()


async def test_stale_staging_rows_of_a_killed_import_are_ignored(db: Database, sample: Path) -> None:
    async with db.write() as session:
        await session.execute(
            import_row.insert(),
            [{"line": 999999, "address": "ghost@medecin.mssante.test", "change": "new", "type": "PER"}],
        )
    summary, _ = await run(db, sample)
    assert summary.added == 2999
    assert await count(db, DirectoryMailbox.address == "ghost@medecin.mssante.test") == 0


async def test_truncated_file_is_refused_before_anything_changes(
    db: Database, sample: Path, sample_lines: list[str], tmp_path: Path
) -> None:
    """A next-day file holding a tenth of the directory would retire 90 %: refused unless asked."""
    await run(db, sample)
    before = await snapshot(db)
    truncated = write(tmp_path / "truncated.txt", sample_lines[: len(sample_lines) // 10])
    with pytest.raises(DirectoryImportError, match="looks truncated"):
        await run(db, truncated)
    assert await snapshot(db) == before
    summary, _ = await run(db, truncated, max_retire=100)
    assert summary.retired > 2000
