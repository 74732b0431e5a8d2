"""Patients: their identity behind an ``INS@patient-domain`` address, so professionals see who writes.

A patient's record is checked against the INS itself (sex digit, birth year and month), because an INS
typed for the wrong person is the error that matters in practice. Mail from a patient address is shown to
professionals as ``"DUPONT Marie (patiente)" <INS@domain>`` (``display_address``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import email_validator
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from directory.ins import InvalidINS, validate_ins
from directory.models import Patient
from mailserver.db.engine import Database
from mailserver.db.models import utcnow

BATCH = 1000
CSV_COLUMNS = ("ins", "nom", "prenom", "sexe", "date_naissance")
CONTACT_COLUMNS = {"email": "email", "telephone": "phone"}
"""Optional CSV columns of the patient's own contact, and the record field each fills."""


class PatientError(ValueError):
    """A refused patient record, phrased for the operator."""


@dataclass(frozen=True)
class PatientRecord:
    ins: str
    last_name: str
    first_name: str
    sex: str
    birth_date: dt.date
    address: str = ""
    email: str | None = None
    phone: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ins": self.ins,
            "last_name": self.last_name,
            "first_name": self.first_name,
            "sex": self.sex,
            "birth_date": self.birth_date.isoformat(),
            "address": self.address,
            "email": self.email,
            "phone": self.phone,
            "display_name": patient_display_name(self.last_name, self.first_name, self.sex),
        }


@dataclass
class PatientImportSummary:
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": len(self.errors),
            "errors": [{"line": line, "reason": reason} for line, reason in self.errors],
        }


def patient_display_name(last_name: str, first_name: str, sex: str) -> str:
    """``DUPONT Marie (patiente)`` for a woman, ``(patient)`` otherwise: how professionals see them."""
    word = "patiente" if sex.upper() == "F" else "patient"
    return f"{last_name.strip().upper()} {first_name.strip()} ({word})"


def validate_contact_email(value: str | None) -> str | None:
    """The patient's personal address, normalised (syntax only); empty means none.

    It lies outside the trust space, so it is only ever used for alerts through the operator's relay,
    which need not offer SMTPUTF8: the local part must be ASCII, and an internationalised domain is
    kept in its ASCII (IDNA) form.
    """
    if value is None or not value.strip():
        return None
    try:
        info = email_validator.validate_email(
            value.strip(),
            check_deliverability=False,
            test_environment=True,
            globally_deliverable=False,
            allow_smtputf8=False,
        )
    except email_validator.EmailNotValidError as exc:
        raise PatientError(f"invalid e-mail {value.strip()!r}: {exc}") from None
    assert info.ascii_email is not None  # allow_smtputf8=False: refused otherwise
    return info.ascii_email.lower()


def validate_phone(value: str | None) -> str | None:
    """A phone number in international form (``+33612345678``); ``06 12 34 56 78`` is French.

    Spaces, dots, dashes and parentheses are ignored; empty means none.
    """
    if value is None or not value.strip():
        return None
    digits = re.sub(r"[\s.\-()]", "", value)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if re.fullmatch(r"0[1-9]\d{8}", digits):
        digits = "+33" + digits[1:]
    if not re.fullmatch(r"\+[1-9]\d{7,14}", digits):
        raise PatientError(f"invalid phone number {value.strip()!r} (expected 0612345678 or +33612345678)")
    return digits


def make_record(
    ins: str,
    last_name: str,
    first_name: str,
    sex: str,
    birth_date: str | dt.date,
    address: str = "",
    email: str | None = None,
    phone: str | None = None,
) -> PatientRecord:
    """Validate one patient; PatientError says exactly what is wrong."""
    try:
        canonical = validate_ins(ins)
    except InvalidINS as exc:
        raise PatientError(str(exc)) from None
    last, first = last_name.strip(), first_name.strip()
    if not last:
        raise PatientError("the last name is empty")
    if not first:
        raise PatientError("the first name is empty")
    sex = sex.strip().upper()
    if sex not in ("F", "M"):
        raise PatientError(f"sex must be F or M, got {sex!r}")
    if isinstance(birth_date, str):
        try:
            birth_date = dt.date.fromisoformat(birth_date.strip())
        except ValueError:
            raise PatientError(f"birth date must be YYYY-MM-DD, got {birth_date!r}") from None
    if birth_date > dt.date.today():
        raise PatientError(f"birth date {birth_date.isoformat()} is in the future")
    if canonical[0] in "12" and canonical[0] != ("1" if sex == "M" else "2"):
        raise PatientError(f"INS {canonical} starts with {canonical[0]}, which does not match sex {sex}")
    if canonical[1:3] != f"{birth_date.year % 100:02d}":
        raise PatientError(
            f"INS {canonical} gives birth year ..{canonical[1:3]}, the birth date {birth_date}"
        )
    if 1 <= int(canonical[3:5]) <= 12 and int(canonical[3:5]) != birth_date.month:
        raise PatientError(f"INS {canonical} gives birth month {canonical[3:5]}, the birth date {birth_date}")
    return PatientRecord(
        canonical,
        last,
        first,
        sex,
        birth_date,
        address.strip(),
        validate_contact_email(email),
        validate_phone(phone),
    )


def _view(p: Patient) -> PatientRecord:
    return PatientRecord(p.ins, p.last_name, p.first_name, p.sex, p.birth_date, p.address, p.email, p.phone)


async def add_patient(db: Database, record: PatientRecord) -> PatientRecord:
    """Register a new patient; an INS already known is refused (use import to update)."""
    async with db.write() as session:
        if await session.get(Patient, record.ins) is not None:
            raise PatientError(f"patient {record.ins} is already registered")
        session.add(
            Patient(
                ins=record.ins,
                last_name=record.last_name,
                first_name=record.first_name,
                sex=record.sex,
                birth_date=record.birth_date,
                address=record.address,
                email=record.email,
                phone=record.phone,
            )
        )
    return record


EDITABLE = ("last_name", "first_name", "sex", "birth_date", "address", "email", "phone")


async def edit_patient(db: Database, ins: str, changes: dict[str, Any]) -> PatientRecord:
    """Change some fields of a registered patient (an empty e-mail or phone removes it).

    The whole record is validated again, so a new sex or birth date must still match the INS.
    """
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise PatientError(f"cannot edit {', '.join(sorted(unknown))}")
    try:
        canonical = validate_ins(ins)
    except InvalidINS as exc:
        raise PatientError(str(exc)) from None
    async with db.write() as session:
        row = await session.get(Patient, canonical)
        if row is None:
            raise PatientError(f"no patient with INS {canonical}")
        current = _view(row).__dict__ | changes
        record = make_record(**current)
        for name in EDITABLE:
            setattr(row, name, getattr(record, name))
        row.updated_at = utcnow()
    return record


async def get_patient(session: AsyncSession, ins: str) -> PatientRecord | None:
    try:
        canonical = validate_ins(ins)
    except InvalidINS as exc:
        raise PatientError(str(exc)) from None
    found = await session.get(Patient, canonical)
    return _view(found) if found else None


def _read_csv(path: Path, summary: PatientImportSummary) -> Iterator[tuple[PatientRecord, tuple[str, ...]]]:
    """Each valid row, with the contact fields the file has (a file without them keeps the known ones)."""
    if not path.is_file():
        raise PatientError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise PatientError(
                f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(CSV_COLUMNS)})"
            )
        reader.fieldnames = header
        contact = [c for c in CONTACT_COLUMNS if c in header]
        try:
            for row in reader:
                if not any((v or "").strip() for v in row.values()):
                    continue
                summary.read += 1
                try:
                    record = make_record(
                        row["ins"] or "",
                        row["nom"] or "",
                        row["prenom"] or "",
                        row["sexe"] or "",
                        row["date_naissance"] or "",
                        row.get("adresse") or "",
                        **{CONTACT_COLUMNS[c]: row.get(c) or "" for c in contact},
                    )
                    yield record, tuple(CONTACT_COLUMNS[c] for c in contact)
                except PatientError as exc:
                    summary.errors.append((reader.line_num, str(exc)))
        except UnicodeDecodeError:
            raise PatientError(f"{path}: not UTF-8 (line {reader.line_num + 1})") from None


async def _write_batch(
    db: Database, batch: list[PatientRecord], summary: PatientImportSummary, given: tuple[str, ...]
) -> None:
    unique = {r.ins: r for r in batch}
    async with db.write() as session:
        existing = {
            p.ins: p
            for p in (await session.execute(select(Patient).where(Patient.ins.in_(list(unique))))).scalars()
        }
        now = utcnow()
        rows = []
        for r in unique.values():
            old = existing.get(r.ins)
            if old is not None:
                kept = {f: getattr(old, f) for f in CONTACT_COLUMNS.values() if f not in given}
                r = dataclasses.replace(r, **kept)
            if old is None:
                summary.added += 1
            elif _view(old) == r:
                summary.unchanged += 1
                continue
            else:
                summary.updated += 1
            rows.append({**r.__dict__, "created_at": now, "updated_at": now})
        if rows:
            stmt = (sqlite.insert if db.kind == "sqlite" else postgresql.insert)(Patient.__table__)
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[Patient.__table__.c.ins],
                    set_={c: stmt.excluded[c] for c in (*EDITABLE, "updated_at")},
                ),
                rows,
            )


async def import_patients(db: Database, path: Path) -> PatientImportSummary:
    """Add or update the patients of a CSV file.

    Columns ``ins,nom,prenom,sexe,date_naissance[,adresse,email,telephone]``.

    Bad rows are reported with their line number and skipped; the others are written in batches.
    """
    summary = PatientImportSummary()
    batch: list[PatientRecord] = []
    given: tuple[str, ...] = ()
    for record, given in _read_csv(path, summary):
        batch.append(record)
        if len(batch) >= BATCH:
            await _write_batch(db, batch, summary, given)
            batch = []
    if batch:
        await _write_batch(db, batch, summary, given)
    return summary


async def display_name_for(session: AsyncSession, address: str) -> str | None:
    """``DUPONT Marie (patiente)`` when ``address`` is ``INS@…`` of a registered patient, else None."""
    local = address.strip().rpartition("@")[0]
    try:
        ins = validate_ins(local)
    except InvalidINS:
        return None
    patient = await session.get(Patient, ins)
    if patient is None:
        return None
    return patient_display_name(patient.last_name, patient.first_name, patient.sex)


async def display_address(session: AsyncSession, address: str) -> str | None:
    """The ``From`` value professionals should see for mail from a patient address, or None if unknown.

    ``"DUPONT Marie (patiente)" <INS@domain>``, RFC 2047-encoded when the name is not ASCII.
    """
    name = await display_name_for(session, address)
    if name is None:
        return None
    return email.utils.formataddr((name, address.strip()))
