"""Patients: INS checks, CSV import, add/show, and the display name professionals see."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from directory import patients
from directory.ins import InvalidINS, validate_ins
from directory.patients import PatientError, make_record, patient_display_name
from mailserver.db.engine import Database

GOOD = "262112B82955335"  # PETIT Pierre, F, 1962-11-23, born in 2B


@pytest.mark.parametrize(
    ("ins", "message"),
    [
        ("26211", "an INS has 15 characters"),
        ("26211XB82955335", "is not an INS"),
        ("562112B82955335", "the first digit"),
        ("262132B82955335", "birth month 13"),
        ("262112B82955336", "wrong control key 36, expected 35"),
    ],
)
def test_each_way_an_ins_is_wrong(ins: str, message: str) -> None:
    with pytest.raises(InvalidINS, match=message):
        validate_ins(ins)


def test_valid_ins_is_canonical() -> None:
    assert validate_ins(" 262112b82955335 ") == GOOD


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((GOOD, "PETIT", "Pierre", "M", "1962-11-23"), "does not match sex M"),
        ((GOOD, "PETIT", "Pierre", "F", "1963-11-23"), "birth year ..62"),
        ((GOOD, "PETIT", "Pierre", "F", "1962-10-23"), "birth month 11"),
        ((GOOD, "PETIT", "Pierre", "F", "23/11/1962"), "YYYY-MM-DD"),
        ((GOOD, "", "Pierre", "F", "1962-11-23"), "last name is empty"),
        ((GOOD, "PETIT", "Pierre", "X", "1962-11-23"), "sex must be F or M"),
    ],
)
def test_record_checked_against_ins(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(PatientError, match=message):
        make_record(*args)


def test_display_name() -> None:
    assert patient_display_name("Dupont", "Marie", "F") == "DUPONT Marie (patiente)"
    assert patient_display_name("MARTIN", "Paul", "M") == "MARTIN Paul (patient)"


async def test_csv_import_and_display(db: Database, patients_csv: Path) -> None:
    shared = patients_csv
    summary = await patients.import_patients(db, shared)
    assert (summary.read, summary.added, summary.errors) == (300, 300, [])
    again = await patients.import_patients(db, shared)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 300)
    async with db.read() as session:
        record = await patients.get_patient(session, GOOD.lower())
        assert record is not None and record.birth_date == dt.date(1962, 11, 23)
        assert (
            await patients.display_name_for(session, f"{GOOD}@patient.mssante.test")
            == "PETIT Pierre (patiente)"
        )
        assert await patients.display_address(session, f"{GOOD}@patient.mssante.test") == (
            f'"PETIT Pierre (patiente)" <{GOOD}@patient.mssante.test>'
        )
        emilie = await patients.display_address(session, "235037926101886@patient.mssante.test")
        assert (
            emilie is not None
            and emilie.startswith("=?utf-8?")
            and emilie.endswith("<235037926101886@patient.mssante.test>")
        )
        assert await patients.display_address(session, "dr.martin@medecin.mssante.test") is None
        assert await patients.display_address(session, "199017512345629@patient.mssante.test") is None


async def test_csv_errors_have_line_numbers(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        "ins,nom,prenom,sexe,date_naissance\n"
        f"{GOOD},PETIT,Pierre,F,1962-11-23\n"
        "262112B82955336,X,Y,F,1962-11-23\n"
        "\n"
        f"{GOOD[:-2]}00,X,Y,F,1962-11-23\n"
        f"{GOOD},PETIT,Pierre,M,1962-11-23\n",
        encoding="utf-8",
    )
    summary = await patients.import_patients(db, path)
    assert summary.added == 1
    assert [line for line, _ in summary.errors] == [3, 5, 6]
    bad = tmp_path / "bad.csv"
    bad.write_text("ins;nom\n", encoding="utf-8")
    with pytest.raises(PatientError, match="missing column"):
        await patients.import_patients(db, bad)


async def test_add_and_show(db: Database) -> None:
    record = make_record(GOOD, "petit", "Pierre", "f", dt.date(1962, 11, 23), "1 rue de la Paix, Bastia")
    await patients.add_patient(db, record)
    with pytest.raises(PatientError, match="already registered"):
        await patients.add_patient(db, record)
    async with db.read() as session:
        shown = await patients.get_patient(session, GOOD)
        assert shown is not None and shown.as_dict()["display_name"] == "PETIT Pierre (patiente)"
        with pytest.raises(PatientError, match="wrong control key"):
            await patients.get_patient(session, "262112B82955336")
