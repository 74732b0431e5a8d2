"""``caducee trust``: the trust list (liste blanche) of the MSSanté space."""

from __future__ import annotations

import click

from mailserver import trust, trust_download
from mailserver.cli_support import emit, fail, with_runtime
from mailserver.runtime import Runtime


@click.group("trust")
def trust_group() -> None:
    """The trust list: peer operators' domains and certificate subjects."""


@trust_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@with_runtime
async def trust_import(rt: Runtime, file: str) -> None:
    """Replace the stored list with FILE (the published XML); a malformed file changes nothing."""
    try:
        report = await trust.import_file(rt.db, file)
    except trust.TrustListError as exc:
        fail(f"{file}: {exc}; the trust list is unchanged")
    await rt.audit.record(
        "admin",
        "admin",
        "",
        f"trust import {file}",
        f"added {len(report.added)} removed {len(report.removed)} changed {len(report.changed)}",
    )
    for label, names in (("added", report.added), ("removed", report.removed), ("changed", report.changed)):
        for name in names:
            click.echo(f"{label:8} {name}")
    click.echo(
        f"trust list imported: {len(report.added)} added, {len(report.removed)} removed, "
        f"{len(report.changed)} changed, {report.unchanged} unchanged"
    )


@trust_group.command("refresh")
@click.option("--force", is_flag=True, help="Install even a list removing more than [trust] max_removed.")
@with_runtime
async def trust_refresh(rt: Runtime, force: bool) -> None:
    """Download the list from [trust] url (HTTPS, verified against [trust] ca_file) and install it;
    a failed download, a malformed list or one removing too many domains changes nothing."""
    if not rt.settings.trust.url:
        fail("[trust] url is not set: nothing to download")
    try:
        result = await trust_download.refresh(rt, "admin", force=force)
    except trust.TrustListError as exc:
        hint = " (use --force to install it anyway)" if isinstance(exc, trust.TooManyRemoved) else ""
        fail(f"{exc}; the trust list is unchanged{hint}")
    report = result.report
    for label, names in (("added", report.added), ("removed", report.removed), ("changed", report.changed)):
        for name in names:
            click.echo(f"{label:8} {name}")
    click.echo(f"trust list refreshed from {rt.settings.trust.url}: {result.summary()}")


@trust_group.command("add")
@click.argument("domain")
@click.option("--dn", required=True, help="Subject DN of the operator's certificate (RFC 4514).")
@click.option("--description", default="")
@with_runtime
async def trust_add(rt: Runtime, domain: str, dn: str, description: str) -> None:
    try:
        entry = await trust.add(rt.db, domain, dn, description)
    except trust.TrustListError as exc:
        fail(str(exc))
    await rt.audit.record("admin", "admin", "", f"trust add {entry.name} dn={entry.dn}", "ok")
    click.echo(f"{entry.name} trusted with certificate subject {entry.dn}")


@trust_group.command("remove")
@click.argument("domain")
@with_runtime
async def trust_remove(rt: Runtime, domain: str) -> None:
    try:
        await trust.remove(rt.db, domain)
    except trust.TrustListError as exc:
        fail(str(exc))
    await rt.audit.record("admin", "admin", "", f"trust remove {domain.lower()}", "ok")
    click.echo(f"{domain.lower()} removed from the trust list")


@trust_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def trust_list(rt: Runtime, as_json: bool) -> None:
    rows = await trust.entries(rt.db)
    if as_json:
        emit([e.as_dict() for e in rows])
        return
    for e in rows:
        click.echo(f"{e.name:40} {e.dn}")
