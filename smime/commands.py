"""``caducee smime``: signing identities of mailboxes and of the operator, recipients' certificates."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailserver.cli_support import emit, fail, with_runtime
from mailserver.runtime import Runtime
from smime.keys import MasterKeyError
from smime.pki import PKIError
from smime.service import CertificateView, SMIMEError, SMIMEService, service_for


async def _service(rt: Runtime) -> SMIMEService:
    """The service, or exit 2: unusable anchors, CRLs or master key are configuration problems."""
    try:
        return await service_for(rt)
    except (PKIError, MasterKeyError) as exc:
        fail(str(exc), code=2)
    except OSError as exc:
        fail(f"cannot create the S/MIME master key {rt.settings.smime.key_file}: {exc.strerror}", code=2)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")


def _password(from_stdin: bool) -> bytes | None:
    """First line of standard input (never a command-line argument, which other users can see)."""
    if not from_stdin:
        return None
    return sys.stdin.buffer.readline().rstrip(b"\r\n") or None


def _owner(address: str | None, operator: bool) -> str | None:
    if (address is None) == (not operator):
        fail("give either ADDRESS or --operator")
    return address


def _print(view: CertificateView) -> None:
    click.echo(f"owner        {view.owner}")
    click.echo(f"subject      {view.subject}")
    click.echo(f"issuer       {view.issuer}")
    click.echo(f"serial       {view.serial}")
    click.echo(f"sha256       {view.fingerprint}")
    click.echo(f"addresses    {', '.join(view.emails)}")
    click.echo(f"valid        {view.not_before.isoformat()} to {view.not_after.isoformat()}")
    for ca in view.chain:
        click.echo(f"chain        {ca}")
    if view.expired:
        click.echo("EXPIRED: this certificate is no longer used")


@click.group("smime")
def smime() -> None:
    """S/MIME: signing identities and recipients' certificates."""


async def _import(rt: Runtime, address: str | None, file: str, key: str | None, password_stdin: bool) -> None:
    data = _read(file)
    key_pem = _read(key) if key else None
    password = _password(password_stdin)
    svc = await _service(rt)
    try:
        view = await svc.import_identity(address, data, key_pem=key_pem, password=password)
    except SMIMEError as exc:
        fail(f"{file}: {exc}")
    click.echo(f"S/MIME identity of {view.owner} imported: {view.subject} (sha256 {view.fingerprint})")


@smime.command("import")
@click.argument("address")
@click.argument("file")
@click.option("--key", metavar="FILE", help="PEM private key, when FILE is a PEM certificate.")
@click.option("--password-stdin", is_flag=True, help="Read the PKCS#12 (or key) password from stdin.")
@with_runtime
async def smime_import(rt: Runtime, address: str, file: str, key: str | None, password_stdin: bool) -> None:
    """Set the signing identity of mailbox ADDRESS from FILE (PKCS#12, or PEM with --key)."""
    await _import(rt, address, file, key, password_stdin)


@smime.command("import-operator")
@click.argument("file")
@click.option("--key", metavar="FILE", help="PEM private key, when FILE is a PEM certificate.")
@click.option("--password-stdin", is_flag=True, help="Read the PKCS#12 (or key) password from stdin.")
@with_runtime
async def smime_import_operator(rt: Runtime, file: str, key: str | None, password_stdin: bool) -> None:
    """Set the operator's identity, which signs for mailboxes without one when sign = "always"."""
    await _import(rt, None, file, key, password_stdin)


@smime.command("show")
@click.argument("address", required=False)
@click.option("--operator", is_flag=True, help="The operator's identity instead of a mailbox's.")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def smime_show(rt: Runtime, address: str | None, operator: bool, as_json: bool) -> None:
    """Show the signing identity of mailbox ADDRESS (or --operator); never the private key."""
    owner = _owner(address, operator)
    svc = await _service(rt)
    try:
        view = await svc.identity(owner)
    except SMIMEError as exc:
        fail(str(exc))
    if as_json:
        emit(view.as_dict())
    else:
        _print(view)


@smime.command("remove")
@click.argument("address", required=False)
@click.option("--operator", is_flag=True, help="Remove the operator's identity.")
@with_runtime
async def smime_remove(rt: Runtime, address: str | None, operator: bool) -> None:
    """Delete the signing identity (certificate and sealed key) of mailbox ADDRESS (or --operator)."""
    owner = _owner(address, operator)
    svc = await _service(rt)
    try:
        await svc.remove_identity(owner)
    except SMIMEError as exc:
        fail(str(exc))
    click.echo(f"S/MIME identity of {owner or 'the operator'} removed")


@smime.command("import-recipient")
@click.argument("file")
@with_runtime
async def smime_import_recipient(rt: Runtime, file: str) -> None:
    """Add a correspondent's certificate (PEM or DER) for encryption; addresses come from its SAN."""
    data = _read(file)
    svc = await _service(rt)
    try:
        views = await svc.import_recipient(data)
    except SMIMEError as exc:
        fail(f"{file}: {exc}")
    for view in views:
        click.echo(f"{view.owner:40} {view.fingerprint} ({view.source})")


@smime.command("recipients")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def smime_recipients(rt: Runtime, as_json: bool) -> None:
    """Certificates known for encryption: imported, learned from verified signatures, hosted mailboxes'."""
    svc = await _service(rt)
    views = await svc.recipients()
    if as_json:
        emit([v.as_dict() for v in views])
        return
    for v in views:
        state = " EXPIRED" if v.expired else ""
        click.echo(f"{v.owner:40} {v.source:8} {v.not_after.date().isoformat()} {v.fingerprint[:16]}{state}")
