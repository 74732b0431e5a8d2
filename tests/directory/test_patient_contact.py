"""A patient's own contact (personal e-mail, phone): validated, added, edited, imported, shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli as caducee_cli
from config.settings import load
from directory import patients
from directory.patients import PatientError, make_record, validate_phone
from mailserver.db import migrate
from mailserver.db.engine import Database

GOOD = "262112B82955335"  # PETIT Pierre, F, 1962-11-23
OTHER = "235037926101886"  # GIRARD Émilie, F, 1935-03-20


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("06 12 34 56 78", "+33612345678"),
        ("+33 6.12.34.56.78", "+33612345678"),
        ("0032 2 123 45 67", "+3221234567"),
    ],
)
def test_phone_is_kept_in_international_form(given: str, stored: str) -> None:
    assert validate_phone(given) == stored


@pytest.mark.parametrize(
    ("email", "phone", "message"),
    [
        ("pierre@", None, "invalid e-mail"),
        ("é@exämple.test", None, "invalid e-mail"),  # the relay need not offer SMTPUTF8
        (None, "12345", "invalid phone number"),
        (None, "06 12", "invalid phone"),
    ],
)
def test_bad_contact_is_refused(email: str | None, phone: str | None, message: str) -> None:
    with pytest.raises(PatientError, match=message):
        make_record(GOOD, "PETIT", "Pierre", "F", "1962-11-23", email=email, phone=phone)


def test_an_international_domain_is_kept_in_ascii() -> None:
    record = make_record(GOOD, "PETIT", "Pierre", "F", "1962-11-23", email="pierre@exämple.test")
    assert record.email == "pierre@xn--exmple-cua.test"


async def test_add_edit_and_clear_contact(db: Database) -> None:
    record = make_record(GOOD, "PETIT", "Pierre", "F", "1962-11-23", email=" Pierre@Perso.Example.test ")
    await patients.add_patient(db, record)
    async with db.read() as session:
        shown = await patients.get_patient(session, GOOD)
    assert shown is not None and shown.email == "pierre@perso.example.test" and shown.phone is None
    edited = await patients.edit_patient(db, GOOD, {"phone": "0612345678", "address": "Bastia"})
    assert (edited.email, edited.phone, edited.address) == (
        "pierre@perso.example.test",
        "+33612345678",
        "Bastia",
    )
    await patients.edit_patient(db, GOOD, {"email": ""})
    async with db.read() as session:
        shown = await patients.get_patient(session, GOOD)
    assert shown is not None and shown.email is None and shown.phone == "+33612345678"
    with pytest.raises(PatientError, match="does not match sex M"):
        await patients.edit_patient(db, GOOD, {"sex": "M"})
    with pytest.raises(PatientError, match="no patient with INS"):
        await patients.edit_patient(db, OTHER, {"email": "x@y.test"})


async def test_import_reads_contact_columns_and_a_file_without_them_keeps_them(
    db: Database, tmp_path: Path
) -> None:
    await import_contact_columns(db, tmp_path)


async def test_postgresql_import_of_contact_columns(pg_url: str, tmp_path: Path) -> None:
    db = Database(pg_url)
    try:
        await import_contact_columns(db, tmp_path)
    finally:
        await db.close()


async def import_contact_columns(db: Database, tmp_path: Path) -> None:
    """The upsert is per dialect, so this runs on both databases."""
    with_contact = tmp_path / "contact.csv"
    with_contact.write_text(
        "ins,nom,prenom,sexe,date_naissance,email,telephone\n"
        f"{GOOD},PETIT,Pierre,F,1962-11-23,pierre@perso.example.test,06 12 34 56 78\n"
        f"{OTHER},GIRARD,Émilie,F,1935-03-20,not-an-address,\n",
        encoding="utf-8",
    )
    summary = await patients.import_patients(db, with_contact)
    assert (summary.added, [line for line, _ in summary.errors]) == (1, [3])
    plain = tmp_path / "plain.csv"
    plain.write_text(
        f"ins,nom,prenom,sexe,date_naissance\n{GOOD},PETIT,Pierre,F,1962-11-23\n", encoding="utf-8"
    )
    summary = await patients.import_patients(db, plain)
    assert (summary.unchanged, summary.updated) == (1, 0)
    async with db.read() as session:
        shown = await patients.get_patient(session, GOOD)
    assert shown is not None and (shown.email, shown.phone) == ("pierre@perso.example.test", "+33612345678")
    cleared = tmp_path / "cleared.csv"
    cleared.write_text(
        f"ins,nom,prenom,sexe,date_naissance,telephone\n{GOOD},PETIT,Pierre,F,1962-11-23,\n", encoding="utf-8"
    )
    summary = await patients.import_patients(db, cleared)
    assert summary.updated == 1
    async with db.read() as session:
        shown = await patients.get_patient(session, GOOD)
    assert shown is not None and (shown.email, shown.phone) == ("pierre@perso.example.test", None)


def test_cli_add_edit_show(tmp_path: Path, logging_kept: None) -> None:
    config = tmp_path / "caducee.toml"
    config.write_text('[database]\nurl = "sqlite+aiosqlite:///caducee.db"\n', encoding="utf-8")
    migrate.upgrade(load(config).database.url)

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(caducee_cli.main, ["--config", str(config), "patient", *args])
        assert result.exit_code == code, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.output

    run(
        "add", GOOD, "--last-name", "PETIT", "--first-name", "Pierre", "--birth-date", "1962-11-23",
        "--sex", "F", "--email", "pierre@perso.example.test", "--phone", "06 12 34 56 78",
    )  # fmt: skip
    shown = json.loads(run("show", GOOD, "--json"))
    assert (shown["email"], shown["phone"]) == ("pierre@perso.example.test", "+33612345678")
    assert "changed: email" in run("edit", GOOD, "--email", "p.petit@perso.example.test")
    assert json.loads(run("show", GOOD, "--json"))["email"] == "p.petit@perso.example.test"
    assert "invalid phone number" in run("edit", GOOD, "--phone", "12", code=1)
    assert "nothing to change" in run("edit", GOOD, code=1)
    run("edit", GOOD, "--phone", "")
    assert "phone" in run("show", GOOD) and json.loads(run("show", GOOD, "--json"))["phone"] is None
