"""Import of the national "Extraction correspondance MSSanté" file (or the ZIP it is published in).

How it stays correct on a file of several hundred thousand rows:

- **Streaming.** The file is read line by line (``|``-separated with quoting off, so a line is a record:
  ``str.split`` does what the csv module would, faster); only one batch of rows is in memory.
- **Validation per row.** A bad row goes to the rejects file with its line number and reason and the
  import goes on; only an unreadable file or header is fatal.
- **Atomicity: staging, then one transaction.** Phase 1 writes every valid row into ``dir_import_row``
  in batches (one transaction each), classified against the live tables by a 128-bit row hash as
  ``new``, ``changed`` or ``same``; the live values are computed and staged for the first two only.
  Phase 2 applies them with set-based SQL (``INSERT … SELECT … ON CONFLICT``), retires the live
  mailboxes absent from the staging area and empties it, all in one
  transaction, retires the live mailboxes absent from the staging area and empties it, all in one
  transaction. A crash in phase 1 leaves the live tables untouched (the next import clears the stale
  staging rows); a crash in phase 2 rolls back. Readers see the old state or the new one, never a mix.
- **Idempotence.** Unchanged rows are staged as ``same`` and never rewritten: re-importing a file writes
  nothing to the live tables. Retired mailboxes are kept (status ``retired``) so that mail to them gets a
  precise refusal; one that reappears is reactivated.

Imports are meant to run one at a time (the daily job); a second concurrent import would share the
staging table.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import email_validator
from sqlalchemy import Table, delete, exists, false, func, literal, null, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from directory import bulk
from directory import search as search_index
from directory.models import (
    ACTIVE,
    DIRECTORY_TYPES,
    MAILBOX_KEYS,
    RETIRED,
    DirectoryMailbox,
    Professional,
    Structure,
    import_row,
)
from directory.rpps import InvalidRPPS, validate_rpps
from directory.text import fold
from mailserver.db.engine import Database
from mailserver.db.models import Domain, UTCDateTime, utcnow

S = import_row

BATCH = 5000
SQLITE_CACHE_KIB = 64 * 1024

# Canonical field name → header label in the published file (matched accent- and case-insensitively).
COLUMNS: dict[str, str] = {
    "type": "Type de BAL",
    "address": "Adresse BAL",
    "pp_id_type": "Type Identifiant PP",
    "pp_id": "Identifiant PP",
    "pp_national_id": "Identification nationale PP",
    "structure_id_type": "Type identifiant structure",
    "structure_id": "Identification Structure",
    "service": "Service de rattachement",
    "civility": "Civilité d'exercice",
    "last_name": "Nom d'exercice",
    "first_name": "Prénom d'exercice",
    "category_code": "Catégorie profession",
    "category_label": "Libellé de catégorie profession",
    "profession_code": "Code Profession",
    "profession_label": "Libellé Profession",
    "skill_code": "Code savoir-faire",
    "skill_label": "Libellé savoir-faire",
    "dematerialisation": "Dématérialisation",
    "legal_name": "Raison Sociale structure BAL",
    "trade_name": "Enseigne commerciale structure BAL",
    "address_l2": "L2COMPLEMENTLOCALISATION structure BAL",
    "address_l3": "L3COMPLEMENTDISTRIBUTION structure BAL",
    "street_number": "L4NUMEROVOIE structure BAL",
    "street_number_suffix": "L4COMPLEMENTNUMEROVOIE structure BAL",
    "street_type": "NL4TYPEVOIE structure BAL",
    "street_name": "L4LIBELLEVOIE structure BAL",
    "locality": "L5LIEUDITMENTION structure BAL",
    "address_l6": "L6LIGNEACHEMINEMENT structure BAL",
    "postal_code": "Code postal structure BAL",
    "department": "Département structure BAL",
    "country": "Pays structure BAL",
}
FIELDS = tuple(COLUMNS)
_all_fields = itemgetter(*FIELDS)
_PROFESSIONAL_FIELDS = (
    "civility",
    "last_name",
    "first_name",
    "category_code",
    "category_label",
    "profession_code",
    "profession_label",
    "skill_code",
    "skill_label",
)
_STRUCTURE_FIELDS = (
    "legal_name",
    "trade_name",
    "address_l2",
    "address_l3",
    "street_number",
    "street_number_suffix",
    "street_type",
    "street_name",
    "locality",
    "address_l6",
    "postal_code",
    "department",
    "country",
)


class DirectoryImportError(Exception):
    """A fatal problem with the file as a whole (unreadable, no usable header); nothing was changed."""


class RowError(ValueError):
    """Why one row is rejected, phrased for the rejects file."""


@dataclass
class ImportSummary:
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    retired: int = 0
    rejected: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def rows_per_second(self) -> float:
        return self.read / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second),
        }


# ---------------------------------------------------------------------------------------------- reading


@contextmanager
def open_extraction(path: Path) -> Iterator[tuple[IO[bytes], int]]:
    """The extraction as a binary stream and its size, from the text file or from the ZIP holding it."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.infolist() if not m.is_dir()]
                texts = [m for m in members if m.filename.lower().endswith((".txt", ".csv"))] or members
                if not texts:
                    raise DirectoryImportError(f"{path}: the ZIP archive holds no file")
                member = max(texts, key=lambda m: m.file_size)
                with zf.open(member) as stream:
                    yield stream, member.file_size
        else:
            with open(path, "rb") as stream:
                yield stream, path.stat().st_size
    except FileNotFoundError:
        raise DirectoryImportError(f"{path}: file not found") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise DirectoryImportError(f"{path}: cannot read: {exc}") from None


def parse_header(raw: bytes) -> tuple[list[int], int]:
    """Position of each canonical field and the number of columns, read from the header line (any order)."""
    try:
        labels = raw.decode("utf-8-sig").rstrip("\r\n").split("|")
    except UnicodeDecodeError:
        raise DirectoryImportError("the header line is not UTF-8") from None
    wanted = {fold(label): name for name, label in COLUMNS.items()}
    found: dict[str, int] = {}
    for i, label in enumerate(labels):
        name = wanted.get(fold(label))
        if name is not None:
            if name in found:
                raise DirectoryImportError(f"column {label!r} appears twice in the header")
            found[name] = i
    missing = [COLUMNS[n] for n in FIELDS if n not in found]
    if missing:
        raise DirectoryImportError(
            f"not an MSSanté extraction header: missing column(s) {', '.join(map(repr, missing))}"
        )
    return [found[n] for n in FIELDS], len(labels)


# A plain ASCII dot-atom local part: what email-validator accepts without further checks.
_PLAIN_LOCAL = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{}~-]+)*", re.IGNORECASE)


@functools.lru_cache(maxsize=16384)
def _valid_domain(domain: str) -> str | None:
    """The normalised domain if email-validator accepts it, else None (cached: domains repeat a lot)."""
    try:
        info = email_validator.validate_email(
            f"a@{domain}", check_deliverability=False, test_environment=True
        )
    except email_validator.EmailNotValidError:
        return None
    return info.domain.lower()


def _check_address(value: str) -> str:
    """Validate with email-validator; the domain verdict is cached and plain local parts are checked here."""
    local, _, domain = value.rpartition("@")
    if local and len(local) <= 64 and len(value) <= 254 and _PLAIN_LOCAL.fullmatch(local):
        normalised = _valid_domain(domain)
        if normalised is not None:
            return f"{local.lower()}@{normalised}"
    try:
        info = email_validator.validate_email(value, check_deliverability=False, test_environment=True)
    except email_validator.EmailNotValidError as exc:
        raise RowError(f"invalid address {value!r}: {exc}") from None
    return info.normalized.lower()


def _check_professional(row: dict[str, str]) -> None:
    kind, ident, national = row["pp_id_type"], row["pp_id"], row["pp_national_id"]
    if not (kind or ident or national):
        if row["type"] == "PER":
            raise RowError("a PER mailbox needs a professional identifier (RPPS or ADELI)")
        return
    if kind == "8":
        try:
            validate_rpps(ident)
        except InvalidRPPS as exc:
            raise RowError(f"Identifiant PP: {exc}") from None
    elif kind == "0":
        if len(ident) != 9 or not ident.isascii() or not ident.isalnum():
            raise RowError(f"Identifiant PP: an ADELI number has 9 characters, got {ident!r}")
    else:
        raise RowError(f"Type Identifiant PP: expected 8 (RPPS) or 0 (ADELI), got {kind!r}")
    if national != kind + ident:
        raise RowError(
            f"Identification nationale PP {national!r} is not the type digit {kind} followed by {ident!r}"
        )


def _check_structure(row: dict[str, str]) -> None:
    kind, ident = row["structure_id_type"], row["structure_id"]
    if not ident:
        if row["type"] != "PER":
            raise RowError(f"an {row['type']} mailbox needs a structure identifier")
        return
    if (
        not kind
        or not ident.startswith(kind)
        or not ident.isascii()
        or not ident.isalnum()
        or len(ident) > 20
    ):
        raise RowError(f"Identification Structure {ident!r} is not type {kind!r} followed by an identifier")
    if kind == "1" and (len(ident) != 10 or not (ident[1:3].isdigit() or ident[1:3] in ("2A", "2B"))):
        raise RowError(f"Identification Structure {ident!r}: expected 1 followed by a 9-character FINESS")


def validate_row(fields: list[str], positions: list[int], columns: int) -> dict[str, str]:
    """The row's canonical fields, or RowError with the reason it is refused."""
    if len(fields) != columns:
        raise RowError(f"expected {columns} columns, found {len(fields)}")
    row = dict(zip(FIELDS, map(str.strip, itemgetter(*positions)(fields)), strict=True))
    if row["type"] not in DIRECTORY_TYPES:
        raise RowError(f"unknown mailbox type {row['type']!r} (expected {', '.join(DIRECTORY_TYPES)})")
    row["address"] = _check_address(row["address"])
    _check_professional(row)
    _check_structure(row)
    return row


def _digest(values: Any) -> bytes:
    return hashlib.blake2b("\x1f".join(values).encode(), digest_size=16).digest()


def _city(l6: str, postal_code: str) -> str:
    city = l6[len(postal_code) :].strip() if postal_code and l6.startswith(postal_code) else l6
    return city


def _city_key(city: str) -> str:
    return fold(city).split(" cedex")[0]


# ---------------------------------------------------------------------------------------------- staging


class _Reader:
    """Iterates the file's valid rows in batches, writing rejects as it goes."""

    def __init__(self, stream: IO[bytes], rejects: IO[str] | None, summary: ImportSummary) -> None:
        self.stream = stream
        self.rejects = rejects
        self.summary = summary
        self.consumed = 0
        header = b""
        for raw in stream:
            self.consumed += len(raw)
            if raw.strip():
                header = raw
                break
        if not header:
            raise DirectoryImportError("the file is empty")
        self.positions, self.columns = parse_header(header)

    def reject(self, line: int, reason: str, raw: str) -> None:
        self.summary.rejected += 1
        if self.rejects is not None:
            self.rejects.write(f"{line}|{reason}|{raw}\n")

    def batches(self) -> Iterator[list[tuple[int, dict[str, str], str]]]:
        batch: list[tuple[int, dict[str, str], str]] = []
        line = 1
        for raw in self.stream:
            line += 1
            self.consumed += len(raw)
            try:
                decoded = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                self.summary.read += 1
                self.reject(line, "not UTF-8", raw.decode("utf-8", "replace").rstrip("\r\n"))
                continue
            if not decoded.strip():
                continue
            self.summary.read += 1
            try:
                batch.append((line, validate_row(decoded.split("|"), self.positions, self.columns), decoded))
            except RowError as exc:
                self.reject(line, str(exc), decoded)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def _staged(line: int, row: dict[str, str], hosted: bool, change: str, digest: bytes) -> dict[str, Any]:
    """The staging record of a new or changed row: live values computed here, applied by SQL later."""
    org = row["trade_name"] or row["legal_name"]
    city = _city(row["address_l6"], row["postal_code"])
    if row["type"] == "PER":
        display = f"{row['first_name']} {row['last_name']}".strip()
        name_key = fold(row["last_name"])
    else:
        display = " – ".join(p for p in (row["service"], org) if p)
        name_key = fold(row["service"] or org)
    searched = (
        row["last_name"],
        row["first_name"],
        row["profession_label"],
        row["skill_label"],
        row["service"],
        row["legal_name"],
        row["trade_name"],
        city,
        row["postal_code"],
    )
    structure = [row[f] for f in _STRUCTURE_FIELDS]
    professional = [row[f] for f in _PROFESSIONAL_FIELDS]
    has_structure, has_professional = bool(row["structure_id"]), bool(row["pp_national_id"])
    return {
        "line": line,
        "address": row["address"],
        "change": change,
        "hosted": hosted,
        "type": row["type"],
        "service": row["service"],
        "dematerialisation": row["dematerialisation"][:1],
        "display_name": display or row["address"],
        "name_key": name_key,
        "first_key": fold(row["first_name"]),
        "cn_key": fold(display),
        "profession_key": fold(row["profession_label"]),
        "org_key": fold(org),
        "service_key": fold(row["service"]),
        "city_key": _city_key(city),
        "search_text": " " + " ".join(w for w in map(fold, searched) if w) + " ",
        "s_identifier": row["structure_id"],
        "s_id_type": row["structure_id_type"],
        **dict(zip(_STRUCTURE_FIELDS, structure, strict=True)),
        "city": city,
        "p_identifier": row["pp_national_id"],
        "p_id_type": row["pp_id_type"],
        "rpps": row["pp_id"] if row["pp_id_type"] == "8" else "",
        **dict(zip(_PROFESSIONAL_FIELDS, professional, strict=True)),
        "row_hash": digest,
        "s_hash": _digest([row["structure_id_type"], *structure]) if has_structure else None,
        "p_hash": _digest([row["pp_id_type"], *professional]) if has_professional else None,
    }


async def _stage_batch(
    session: AsyncSession,
    batch: list[tuple[int, dict[str, str], str]],
    hosted_domains: set[str],
    reader: _Reader,
    summary: ImportSummary,
) -> None:
    """Classify a batch against the live tables, drop duplicates, write it to the staging area."""
    seen: dict[str, int] = {}
    unique: list[tuple[int, dict[str, str], str]] = []
    for line, row, raw in batch:
        first = seen.get(row["address"])
        if first is not None:
            reader.reject(line, f"duplicate address {row['address']} (first on line {first})", raw)
            continue
        seen[row["address"]] = line
        unique.append((line, row, raw))
    addresses = list(seen)
    earlier = dict(
        (await session.execute(select(S.c.address, S.c.line).where(S.c.address.in_(addresses)))).all()
    )
    live = {
        a: (h, s)
        for a, h, s in (
            await session.execute(
                select(DirectoryMailbox.address, DirectoryMailbox.row_hash, DirectoryMailbox.status).where(
                    DirectoryMailbox.address.in_(addresses)
                )
            )
        )
    }
    same: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for line, row, raw in unique:
        address = row["address"]
        if address in earlier:
            reader.reject(line, f"duplicate address {address} (first on line {earlier[address]})", raw)
            continue
        hosted = address.rpartition("@")[2] in hosted_domains
        digest = _digest([*_all_fields(row), "1" if hosted else "0"])
        current = live.get(address)
        if current is None:
            summary.added += 1
            changed.append(_staged(line, row, hosted, "new", digest))
        elif bytes(current[0]) != digest or current[1] != ACTIVE:
            summary.updated += 1
            changed.append(_staged(line, row, hosted, "changed", digest))
        else:
            summary.unchanged += 1
            same.append({"line": line, "address": address, "change": "same"})
    await bulk.insert_rows(session, S, same)
    await bulk.insert_rows(session, S, changed)


# ---------------------------------------------------------------------------------------------- applying


def _upsert_from_staging(db: Database, table: Table, columns: list[str], source: Any, key: str) -> Any:
    stmt = (sqlite.insert if db.kind == "sqlite" else postgresql.insert)(table).from_select(columns, source)
    return stmt.on_conflict_do_update(
        index_elements=[table.c[key]],
        set_={c: stmt.excluded[c] for c in columns if c != key},
        where=table.c.row_hash != stmt.excluded.row_hash,
    )


def _latest(identifier: Any) -> Any:
    """The last changed row naming each structure/professional: it wins if the file disagrees with itself."""
    return (
        select(func.max(S.c.line))
        .where(S.c.change != "same", identifier != "")
        .group_by(identifier)
        .scalar_subquery()
    )


async def _large_cache(session: AsyncSession) -> None:
    """A 64 MiB SQLite page cache for the import (the default 2 MiB makes index inserts thrash).

    Fixed, not proportional to the file: with the bounded batches and caches, memory stays flat
    (measured by bench/directory.py: 139 MiB peak at 30,000 rows, 183 MiB at 300,000).
    """
    if session.bind.dialect.name == "sqlite":
        await session.execute(text(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}"))


async def _apply(db: Database, summary: ImportSummary) -> None:
    """Phase 2, one transaction of set-based SQL: apply staged changes, retire the absent, clear staging."""
    now = literal(utcnow(), UTCDateTime())
    changed = S.c.change != "same"
    async with db.write() as session:
        await _large_cache(session)
        structure_cols = ["identifier", "id_type", *_STRUCTURE_FIELDS, "city", "row_hash", "updated_at"]
        await session.execute(
            _upsert_from_staging(
                db,
                Structure.__table__,
                structure_cols,
                select(
                    S.c.s_identifier,
                    S.c.s_id_type,
                    *(S.c[f] for f in _STRUCTURE_FIELDS),
                    S.c.city,
                    S.c.s_hash,
                    now,
                ).where(S.c.line.in_(_latest(S.c.s_identifier))),
                "identifier",
            )
        )
        professional_cols = ["identifier", "id_type", "rpps", *_PROFESSIONAL_FIELDS, "row_hash", "updated_at"]
        await session.execute(
            _upsert_from_staging(
                db,
                Professional.__table__,
                professional_cols,
                select(
                    S.c.p_identifier,
                    S.c.p_id_type,
                    S.c.rpps,
                    *(S.c[f] for f in _PROFESSIONAL_FIELDS),
                    S.c.p_hash,
                    now,
                ).where(S.c.line.in_(_latest(S.c.p_identifier))),
                "identifier",
            )
        )
        await search_index.unindex_staged(session)
        mailbox_cols = ["address", "type", "service", "dematerialisation", "hosted", *MAILBOX_KEYS]
        source = (
            select(
                *(S.c[c] for c in mailbox_cols),
                literal(ACTIVE),
                false(),
                Structure.id,
                Professional.id,
                S.c.row_hash,
                now,
                null(),
            )
            .select_from(
                S.outerjoin(Structure, Structure.identifier == S.c.s_identifier).outerjoin(
                    Professional, Professional.identifier == S.c.p_identifier
                )
            )
            .where(changed)
        )
        columns = [*mailbox_cols, "status", "liste_rouge", "structure_id", "professional_id"]
        columns += ["row_hash", "updated_at", "retired_at"]
        stmt = (sqlite.insert if db.kind == "sqlite" else postgresql.insert)(DirectoryMailbox.__table__)
        stmt = stmt.from_select(columns, source)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[DirectoryMailbox.__table__.c.address],
                set_={c: stmt.excluded[c] for c in columns if c not in ("address", "liste_rouge")},
            )
        )
        await search_index.index_staged(session)
        result = await session.execute(
            update(DirectoryMailbox)
            .where(
                DirectoryMailbox.status == ACTIVE, ~exists().where(S.c.address == DirectoryMailbox.address)
            )
            .values(status=RETIRED, retired_at=utcnow(), updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        summary.retired = result.rowcount
        await session.execute(delete(S))
    if db.kind == "postgresql" and summary.added + summary.updated + summary.retired:
        async with db.write() as session:
            await session.execute(text("ANALYZE dir_mailbox, dir_professional, dir_structure"))


DEFAULT_MAX_RETIRE = 20.0
RETIRE_ALWAYS_ALLOWED = 100


async def _check_retirements(db: Database, retiring: int, max_retire: float) -> None:
    """Refuse an import that would retire an implausible share of the directory (a truncated file)."""
    if retiring <= RETIRE_ALWAYS_ALLOWED:
        return
    async with db.read() as session:
        active = (
            await session.execute(
                select(func.count()).select_from(DirectoryMailbox).where(DirectoryMailbox.status == ACTIVE)
            )
        ).scalar_one()
    if active and retiring * 100 > max_retire * active:
        raise DirectoryImportError(
            f"this file would retire {retiring} of {active} active mailboxes "
            f"({retiring * 100 / active:.0f} %, more than {max_retire:g} %): it looks truncated; "
            f"nothing was changed (use --max-retire 100 to accept it)"
        )


async def _count_retiring(db: Database) -> int:
    async with db.read() as session:
        return (
            await session.execute(
                select(func.count())
                .select_from(DirectoryMailbox)
                .where(
                    DirectoryMailbox.status == ACTIVE,
                    ~exists().where(S.c.address == DirectoryMailbox.address),
                )
            )
        ).scalar_one()


async def _clear_staging(db: Database) -> None:
    async with db.write() as session:
        await session.execute(delete(S))


async def import_extraction(
    db: Database,
    path: Path,
    *,
    dry_run: bool = False,
    rejects: IO[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_retire: float = DEFAULT_MAX_RETIRE,
) -> ImportSummary:
    """Import the extraction at ``path`` (text or ZIP); ``progress(done_bytes, total_bytes)`` per batch.

    A file that would retire more than ``max_retire`` percent of the active mailboxes (and more than
    ``RETIRE_ALWAYS_ALLOWED`` of them) is refused before anything changes: it is far more likely
    truncated than a real day's departures.

    With ``dry_run`` the file is validated and compared, the summary says what would change, and the live
    tables are left alone.
    """
    started = time.monotonic()
    summary = ImportSummary(dry_run=dry_run)
    if rejects is not None:
        rejects.write("line|reason|row\n")
    async with db.read() as session:
        hosted_domains = set((await session.execute(select(Domain.name))).scalars())
    await _clear_staging(db)
    try:
        with open_extraction(path) as (stream, size):
            reader = _Reader(stream, rejects, summary)
            for batch in reader.batches():
                async with db.write() as session:
                    await _large_cache(session)
                    await _stage_batch(session, batch, hosted_domains, reader, summary)
                if progress is not None:
                    progress(reader.consumed, size)
        retiring = await _count_retiring(db)
        if dry_run:
            summary.retired = retiring
        else:
            await _check_retirements(db, retiring, max_retire)
            await _apply(db, summary)
    finally:
        await _clear_staging(db)
    summary.seconds = time.monotonic() - started
    return summary


def read_rejects(content: str) -> list[tuple[int, str]]:
    """(line, reason) pairs of a rejects file, whose lines are ``line|reason|row`` after a header."""
    out = []
    for record in content.splitlines()[1:]:
        line, reason, _raw = record.split("|", 2)
        out.append((int(line), reason))
    return out
