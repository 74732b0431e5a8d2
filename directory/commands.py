"""``caducee directory …`` and ``caducee patient …``: thin commands over the directory services."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

import click

from directory import patients
from directory.importer import DEFAULT_MAX_RETIRE, DirectoryImportError, ImportSummary, import_extraction
from directory.models import DIRECTORY_TYPES
from directory.search import search
from mailserver.cli_support import emit, fail, with_runtime
from mailserver.runtime import Runtime


@click.group()
def directory() -> None:
    """The national MSSanté directory: import and search."""


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal only: scripts and logs get the summary alone."""
    if not enabled:
        yield None
        return
    with click.progressbar(length=1, label="importing", show_percent=True, width=40) as bar:
        seen = 0

        def update(done: int, total: int) -> None:
            nonlocal seen
            bar.length = max(total, 1)
            bar.update(done - seen)
            seen = done

        yield update


def _open_rejects(stack: ExitStack, path: Path) -> IO[str]:
    try:
        return stack.enter_context(open(path, "w", encoding="utf-8"))
    except OSError as exc:
        fail(f"{path}: cannot write the rejects file: {exc.strerror}")


def _summary_line(s: ImportSummary) -> str:
    verb = "would add" if s.dry_run else "added"
    return (
        f"{'dry run: ' if s.dry_run else ''}read {s.read}, {verb} {s.added}, updated {s.updated}, "
        f"unchanged {s.unchanged}, retired {s.retired}, rejected {s.rejected} "
        f"({s.seconds:.1f} s, {s.rows_per_second:,.0f} rows/s)"
    )


@directory.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate and compare only; change nothing.")
@click.option("--rejects", type=click.Path(path_type=Path, dir_okay=False), help="Write refused rows here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--max-retire",
    type=click.FloatRange(0, 100),
    default=DEFAULT_MAX_RETIRE,
    show_default=True,
    help="Refuse a file that would retire more than this percent of the active mailboxes.",
)
@with_runtime
async def directory_import(
    rt: Runtime, file: Path, dry_run: bool, rejects: Path | None, as_json: bool, max_retire: float
) -> None:
    """Import the national extraction FILE (text or ZIP): adds, updates and retires mailboxes."""
    with ExitStack() as stack:
        handle = _open_rejects(stack, rejects) if rejects is not None else None
        try:
            with _progress(sys.stdout.isatty() and not as_json) as progress:
                summary = await import_extraction(
                    rt.db, file, dry_run=dry_run, rejects=handle, progress=progress, max_retire=max_retire
                )
        except DirectoryImportError as exc:
            fail(str(exc))
    if as_json:
        emit(summary.as_dict())
        return
    click.echo(_summary_line(summary))
    if summary.rejected and rejects is None:
        click.echo(f"{summary.rejected} row(s) refused: run again with --rejects FILE to list them", err=True)


@directory.command("search")
@click.argument("text", default="")
@click.option("--profession", help="Profession label (prefix, any accents/case).")
@click.option("--city", help="City name or postal code.")
@click.option(
    "--type", "type_", type=click.Choice(DIRECTORY_TYPES, case_sensitive=False), help="Mailbox type."
)
@click.option("--limit", type=click.IntRange(1, 1000), default=20)
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def directory_search(
    rt: Runtime,
    text: str,
    profession: str | None,
    city: str | None,
    type_: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Find mailboxes by name, profession, savoir-faire, structure, city or postal code."""
    if not (text.strip() or profession or city or type_):
        fail("give search words, or at least one of --profession, --city, --type")
    async with rt.db.read() as session:
        entries = await search(session, text, profession=profession, city=city, type=type_, limit=limit)
    if as_json:
        emit([e.as_dict() for e in entries])
        return
    if not entries:
        click.echo("no match")
    for e in entries:
        what = ", ".join(p for p in (e.profession, e.skill) if p) or e.type
        click.echo(f"{e.address:50} {e.display_name:35} {what:40} {e.organisation}, {e.postal_code} {e.city}")


@click.group()
def patient() -> None:
    """Patients: the person behind an INS@patient-domain address."""


@patient.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def patient_import(rt: Runtime, file: Path, as_json: bool) -> None:
    """Add or update patients from a CSV file.

    Columns: ins,nom,prenom,sexe,date_naissance[,adresse,email,telephone].
    """
    try:
        summary = await patients.import_patients(rt.db, file)
    except patients.PatientError as exc:
        fail(str(exc))
    if as_json:
        emit(summary.as_dict())
        return
    for line, reason in summary.errors:
        click.echo(f"{file}:{line}: {reason}", err=True)
    click.echo(
        f"read {summary.read}, added {summary.added}, updated {summary.updated}, "
        f"unchanged {summary.unchanged}, rejected {len(summary.errors)}"
    )


@patient.command("add")
@click.argument("ins")
@click.option("--last-name", required=True)
@click.option("--first-name", required=True)
@click.option("--birth-date", required=True, help="YYYY-MM-DD")
@click.option("--sex", required=True, type=click.Choice(["F", "M"], case_sensitive=False))
@click.option("--address", default="", help="Postal address.")
@click.option("--email", default=None, help="Personal e-mail address, for new-message alerts.")
@click.option("--phone", default=None, help="Phone number (0612345678 or +33612345678).")
@with_runtime
async def patient_add(
    rt: Runtime,
    ins: str,
    last_name: str,
    first_name: str,
    birth_date: str,
    sex: str,
    address: str,
    email: str | None,
    phone: str | None,
) -> None:
    """Register one patient, checked against their INS."""
    try:
        record = patients.make_record(ins, last_name, first_name, sex, birth_date, address, email, phone)
        await patients.add_patient(rt.db, record)
    except patients.PatientError as exc:
        fail(str(exc))
    click.echo(
        f"patient {record.ins} added: {patients.patient_display_name(last_name, first_name, record.sex)}"
    )


@patient.command("edit")
@click.argument("ins")
@click.option("--last-name")
@click.option("--first-name")
@click.option("--birth-date", help="YYYY-MM-DD")
@click.option("--sex", type=click.Choice(["F", "M"], case_sensitive=False))
@click.option("--address", help="Postal address.")
@click.option("--email", help='Personal e-mail address, for new-message alerts ("" removes it).')
@click.option("--phone", help='Phone number ("" removes it).')
@with_runtime
async def patient_edit(rt: Runtime, ins: str, **fields: str | None) -> None:
    """Change a registered patient; the record is checked against the INS again."""
    changes = {name: value for name, value in fields.items() if value is not None}
    if not changes:
        fail("nothing to change (give at least one option)")
    try:
        record = await patients.edit_patient(rt.db, ins, changes)
    except patients.PatientError as exc:
        fail(str(exc))
    click.echo(f"patient {record.ins} changed: {', '.join(sorted(changes))}")


@patient.command("show")
@click.argument("ins")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def patient_show(rt: Runtime, ins: str, as_json: bool) -> None:
    """Show a patient."""
    try:
        async with rt.db.read() as session:
            record = await patients.get_patient(session, ins)
    except patients.PatientError as exc:
        fail(str(exc))
    if record is None:
        fail(f"no patient with INS {ins.strip().upper()}")
    if as_json:
        emit(record.as_dict())
        return
    for key, value in record.as_dict().items():
        click.echo(f"{key:13} {'' if value is None else value}")
