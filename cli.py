"""``caducee``: the administration command line. Each command calls a service function and prints.

Errors are one line on stderr and a non-zero exit: 2 for configuration problems, 1 for refused
requests. ``--json`` output is stable: keys are never renamed, only added.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from sqlalchemy.exc import DBAPIError, OperationalError

import config
from directory.commands import directory, patient
from mailserver import accounts, logs
from mailserver.accounts import AccountError
from mailserver.cli_support import CliState, emit, fail, read_password, with_runtime
from mailserver.db.models import DEFAULT_MEMBER_RIGHTS
from mailserver.portal.commands import conversation, invite
from mailserver.queue.commands import queue_group
from mailserver.runtime import Runtime, open_runtime
from mailserver.store import identity
from mailserver.trust_commands import trust_group
from smime.commands import smime


def parse_limit(value: str | None, what: str = "SIZE") -> int | None:
    """A size limit from the command line (``2GiB``, ``0`` for none); absent or ``default`` means
    "inherit the domain's or the server's" (None)."""
    if value is None or value.strip().lower() == "default":
        return None
    try:
        return config.parse_size(value)
    except ValueError as exc:
        fail(f"{what}: {exc}")


@click.group()
@click.option(
    "--config", "config_path", metavar="FILE", help="Configuration file (default: $CADUCEE_CONFIG)."
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Caducée: secure health messaging for the MSSanté trust space."""
    os.umask(0o077)  # every file written (mail, database, backups, keys) is readable by this user only
    logs.configure("debug" if verbose else "warning")
    ctx.obj = CliState(config_path)


# ---------------------------------------------------------------------------------------------- init / db


DEMO_RPPS = "10000000009"


SQLITE_DEFAULT = "sqlite+aiosqlite:///caducee.db"


def _toml_config(data_dir: Path, hostname: str, database_url: str = SQLITE_DEFAULT) -> str:
    return f"""# Caducée configuration, written by `caducee init`. Every key is documented in README.md.
[server]
hostname = "{hostname}"

[database]
# sqlite+aiosqlite:///FILE is relative to this file; postgresql+asyncpg://… in production
url = {json.dumps(database_url)}

[storage]
path = "store"

[tls]
cert = "tls/chain.pem"
key = "tls/key.pem"
peer_ca = "tls/peer-ca.pem"

[smtp]
listen = ["127.0.0.1:2525"]

[submission]
listen = ["127.0.0.1:2587"]
tls_listen = ["127.0.0.1:2465"]

[imap]
listen = ["127.0.0.1:2143"]
tls_listen = ["127.0.0.1:2993"]

[portal]
listen = ["127.0.0.1:8080"]
secure_cookies = false                   # plain HTTP on loopback for a first run; true behind HTTPS
second_factor = "off"                    # first run only: "email_or_totp" once [relay] is configured

[ldap]
listen = ["127.0.0.1:3389"]              # address book for mail clients (STARTTLS, then bind)

[admin]
listen = ["127.0.0.1:9180"]              # /healthz, /readyz, /metrics for the operator (loopback only)

[patients]
portal_url = "http://127.0.0.1:8080/"    # what patients' alerts point to; the public HTTPS one in production

[limits]
message_size = "25MiB"

[queue]
lease = "60s"                            # with several nodes: a dead node's deliveries resume after this
"""


@main.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", required=True, help="The first hosted domain (professionals).")
@click.option("--patient-domain", help="A patient domain (mailboxes INS@domain).")
@click.option("--hostname", help="Server host name (default: mx.DOMAIN).")
@click.option(
    "--demo-mailboxes", is_flag=True, help="Also create two demo mailboxes and print their passwords."
)
@click.option(
    "--database-url",
    default=SQLITE_DEFAULT,
    help="postgresql+asyncpg://USER@HOST/DB for production (an empty database); default: SQLite here.",
)
def init(
    data_dir: Path,
    domain: str,
    patient_domain: str | None,
    hostname: str | None,
    demo_mailboxes: bool,
    database_url: str,
) -> None:
    """Create a data directory: configuration, database, store, first-run TLS certificates."""
    from mailserver.db import migrate
    from mailserver.tls import make_first_run_certificates

    data_dir = data_dir.resolve()
    cfg_path = data_dir / "caducee.toml"
    if cfg_path.exists():
        fail(f"{cfg_path} already exists: this data directory is initialised")
    try:
        domain = accounts.validate_domain(domain)
        patient_domain = accounts.validate_domain(patient_domain) if patient_domain else None
    except AccountError as exc:
        fail(str(exc))
    if not database_url.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
        fail(f"--database-url: expected sqlite+aiosqlite:///FILE or postgresql+asyncpg://…: {database_url!r}")
    hostname = hostname or f"mx.{domain}"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        chain, key, ca = make_first_run_certificates(data_dir / "tls", hostname, domain)
        cfg_path.write_text(_toml_config(data_dir, hostname, database_url), encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {data_dir}: {exc.strerror}")
    settings = config.load(cfg_path)
    try:
        migrate.upgrade(settings.database.url)
    except Exception as exc:  # unreachable server, unknown database, refused login: one line
        cfg_path.unlink()
        fail(f"cannot prepare the database {database_url}: {exc}")
    made: list[str] = [
        f"configuration  {cfg_path}",
        f"database       {settings.database.url}",
        f"store          {settings.storage.path}",
        f"certificate    {chain} (key {key}, CA {ca})",
    ]

    async def populate() -> None:
        async with open_runtime(settings) as rt:
            await asyncio.to_thread(rt.blobs.ensure)
            await identity.ensure(rt)
            await accounts.add_domain(rt, domain, patients=False)
            made.append(f"domain         {domain}")
            if patient_domain:
                await accounts.add_domain(rt, patient_domain, patients=True)
                made.append(f"patient domain {patient_domain}")
            if demo_mailboxes:
                for local, type_, extra in (
                    ("dr.martin", "PER", {"rpps": DEMO_RPPS, "display_name": "Dr Martin"}),
                    ("secretariat", "ORG", {"display_name": "Secrétariat"}),
                ):
                    password = secrets.token_urlsafe(12)
                    mb = await accounts.add_mailbox(
                        rt, f"{local}@{domain}", type_, password=password, **extra
                    )
                    made.append(f"mailbox        {mb.address} ({type_}) password: {password}")

    try:
        asyncio.run(populate())
    except AccountError as exc:
        fail(str(exc))
    click.echo("Initialised Caducée in " + str(data_dir))
    for line in made:
        click.echo("  " + line)
    click.echo(f"Run it with: caducee --config {cfg_path} serve")


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(state: CliState) -> None:
    """Apply every pending migration."""
    from mailserver.db import migrate

    settings = state.settings()
    try:
        migrate.upgrade(settings.database.url)
    except (OperationalError, DBAPIError, OSError) as exc:
        fail(f"cannot migrate {settings.database.url}: {exc}")
    click.echo("database schema is up to date: " + ", ".join(migrate.heads()))


@db.command("current")
@click.pass_obj
def db_current(state: CliState) -> None:
    """Show the schema revision of the database and of this code."""
    from mailserver.db import migrate

    settings = state.settings()
    try:
        current = asyncio.run(migrate.current(settings.database.url))
    except (OperationalError, DBAPIError, OSError) as exc:
        fail(f"cannot read {settings.database.url}: {exc}")
    click.echo(f"database: {', '.join(sorted(current)) or 'empty'}")
    click.echo(f"code:     {', '.join(sorted(migrate.heads()))}")


# ---------------------------------------------------------------------------------------------- serve


@main.command()
@click.pass_obj
def serve(state: CliState) -> None:
    """Run every configured listener until SIGTERM or SIGINT (in ``[server] workers`` processes)."""
    from mailserver import app, handshakes, workers

    settings = state.settings()
    if logging.getLogger().level > logging.DEBUG:  # -v keeps debug
        logs.set_level(settings.server.log_level)
    if settings.server.workers == 1:
        with _start_errors():
            asyncio.run(app.run(settings))
        return
    with _start_errors():
        handshakes.bind_shared(settings)  # once, before the checks: a second instance stops here
        asyncio.run(app.check_only(settings))

    def worker(index: int, ready: Callable[[], None]) -> None:
        with _start_errors():
            asyncio.run(app.run(settings, worker=index, ready=ready))

    sys.exit(workers.supervise(settings.server.workers, worker))


@contextlib.contextmanager
def _start_errors() -> Iterator[None]:
    """Why the server cannot start, as one line and an exit code (no traceback)."""
    from mailserver import app

    try:
        yield
    except app.SchemaOutOfDate as exc:
        fail(str(exc))
    except identity.StorageMismatch as exc:
        fail(f"cannot start: {exc}", 2)
    except OSError as exc:
        fail(f"cannot start: {exc}")


# ---------------------------------------------------------------------------------------------- domains


@main.group()
def domain() -> None:
    """Hosted domains."""


@domain.command("add")
@click.argument("name")
@click.option("--patients", is_flag=True, help="A patient domain: mailboxes are INS@domain.")
@with_runtime
async def domain_add(rt: Runtime, name: str, patients: bool) -> None:
    d = await accounts.add_domain(rt, name, patients)
    click.echo(f"domain {d.name} added{' (patients)' if d.patients else ''}")


@domain.command("list")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def domain_list(rt: Runtime, as_json: bool) -> None:
    domains = await accounts.list_domains(rt)
    if as_json:
        emit([{"name": d.name, "patients": d.patients, "quota_storage": d.quota_storage} for d in domains])
        return
    for d in domains:
        click.echo(f"{d.name}{'  (patients)' if d.patients else ''}")


@domain.command("quota")
@click.argument("name")
@click.argument("size")
@click.option("--messages", type=click.IntRange(0), help="Message count limit (0 = none).")
@with_runtime
async def domain_quota(rt: Runtime, name: str, size: str, messages: int | None) -> None:
    """Default storage limit for the domain's mailboxes (SIZE like 2GiB, 0 for none, "default" to unset)."""
    storage = parse_limit(size)
    await accounts.set_domain_quota(rt, name, storage, messages)
    click.echo(f"domain {name.lower()}: default quota {size}")


# ---------------------------------------------------------------------------------------------- mailboxes


@main.group()
def mailbox() -> None:
    """Mailboxes: creation, credentials, state."""


@mailbox.command("add")
@click.argument("address")
@click.option("--type", "type_", required=True, type=click.Choice(["PER", "ORG", "APP", "CAB", "PAT"], False))
@click.option("--rpps", help="RPPS identifier (11 digits) of a PER mailbox's professional.")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--quota", help="Storage limit, e.g. 2GiB (default: the domain's or the server's).")
@click.option("--accepts-patient-first", is_flag=True, help="ORG only: patients may write first (pharmacy).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_runtime
async def mailbox_add(
    rt: Runtime,
    address: str,
    type_: str,
    rpps: str | None,
    display_name: str,
    quota: str | None,
    accepts_patient_first: bool,
    password_stdin: bool,
) -> None:
    password = read_password(password_stdin)
    mb = await accounts.add_mailbox(
        rt,
        address,
        type_,
        rpps=rpps,
        display_name=display_name,
        password=password,
        quota_storage=parse_limit(quota, "--quota"),
        accepts_patient_first=accepts_patient_first,
    )
    click.echo(f"mailbox {mb.address} ({mb.type}) added")


@mailbox.command("list")
@click.option("--domain", "domain_name")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def mailbox_list(rt: Runtime, domain_name: str | None, as_json: bool) -> None:
    boxes = await accounts.list_mailboxes(rt, domain_name)
    if as_json:
        emit([m.as_dict() for m in boxes])
        return
    for m in boxes:
        state = "" if m.enabled else "  [disabled]"
        click.echo(f"{m.address:45} {m.type}  {m.used_messages:6} msgs {m.used_bytes:12} bytes{state}")


@mailbox.command("show")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def mailbox_show(rt: Runtime, address: str, as_json: bool) -> None:
    m = await accounts.get_mailbox(rt, address)
    if as_json:
        emit(m.as_dict())
        return
    for key, value in m.as_dict().items():
        click.echo(f"{key:22} {value}")


@mailbox.command("passwd")
@click.argument("address")
@click.option(
    "--password-stdin", is_flag=True, required=True, help="Read the new password from standard input."
)
@with_runtime
async def mailbox_passwd(rt: Runtime, address: str, password_stdin: bool) -> None:
    m = await accounts.set_password(rt, address, read_password(password_stdin) or "")
    click.echo(f"password of {m.address} changed")


@mailbox.command("disable")
@click.argument("address")
@with_runtime
async def mailbox_disable(rt: Runtime, address: str) -> None:
    m = await accounts.set_enabled(rt, address, False)
    click.echo(f"mailbox {m.address} disabled")


@mailbox.command("enable")
@click.argument("address")
@with_runtime
async def mailbox_enable(rt: Runtime, address: str) -> None:
    m = await accounts.set_enabled(rt, address, True)
    click.echo(f"mailbox {m.address} enabled")


@mailbox.command("delete")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_runtime
async def mailbox_delete(rt: Runtime, address: str, yes: bool) -> None:
    if not yes and not click.confirm(f"Delete {address} and all its mail?", default=False):
        fail("not deleted")
    await accounts.delete_mailbox(rt, address)
    click.echo(f"mailbox {address.lower()} deleted")


@mailbox.command("send-as", deprecated=True)
@click.argument("member")
@click.argument("org_address")
@with_runtime
async def mailbox_send_as(rt: Runtime, member: str, org_address: str) -> None:
    """Deprecated: ``mailbox member add ORG_ADDRESS MEMBER`` (the default rights), or ``p`` added to
    an existing member's rights."""
    m = await accounts.grant_send_as(rt, org_address, member)
    click.echo(f"{m.member} is a member of {m.org} with rights {m.rights}")


@mailbox.group("member")
def member() -> None:
    """People who open an ORG or CAB mailbox with their own identity, with RFC 4314 rights
    (l lookup, r read, s seen, w flags, i insert, p send as the mailbox, k create, x delete folder,
    t delete messages, e expunge, a administer)."""


@member.command("add")
@click.argument("org_address")
@click.argument("person_address")
@click.option(
    "--rights",
    help=f"RFC 4314 letters [default: {DEFAULT_MEMBER_RIGHTS} for a new member, kept for an existing one]",
)
@with_runtime
async def member_add(rt: Runtime, org_address: str, person_address: str, rights: str | None) -> None:
    m = await accounts.add_member(rt, org_address, person_address, rights)
    click.echo(f"{m.member} is a member of {m.org} with rights {m.rights}")


@member.command("remove")
@click.argument("org_address")
@click.argument("person_address")
@with_runtime
async def member_remove(rt: Runtime, org_address: str, person_address: str) -> None:
    await accounts.remove_member(rt, org_address, person_address)
    click.echo(f"{person_address.lower()} is no longer a member of {org_address.lower()}")


@member.command("list")
@click.argument("org_address", required=False)
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def member_list(rt: Runtime, org_address: str | None, as_json: bool) -> None:
    members = await accounts.list_members(rt, org_address)
    if as_json:
        emit([{"org": m.org, "member": m.member, "rights": m.rights} for m in members])
        return
    if not members:
        click.echo(f"no members of {org_address}" if org_address else "no memberships")
    for m in members:
        click.echo(f"{m.org:45} {m.member:45} {m.rights}")


@mailbox.command("auth")
@click.argument("address")
@click.option(
    "--allow",
    required=True,
    help="Comma list of the login methods accepted: oauth,cert,app-password,password.",
)
@with_runtime
async def mailbox_auth(rt: Runtime, address: str, allow: str) -> None:
    """Choose how ADDRESS may log in (every protocol: IMAP, submission, portal, LDAP)."""
    methods = [m.strip() for m in allow.split(",") if m.strip()]
    view = await accounts.set_auth_methods(rt, address, methods)
    click.echo(f"{view.address} accepts {', '.join(view.auth_methods or ['every method'])}")


@mailbox.group("cert")
def cert() -> None:
    """Client certificates of applicative mailboxes (SASL EXTERNAL)."""


@cert.command("add")
@click.argument("address")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--match",
    type=click.Choice(["issuer-serial", "subject"]),
    default="issuer-serial",
    show_default=True,
    help="issuer-serial: this certificate only; subject: any certificate of the PKI with its subject DN.",
)
@with_runtime
async def cert_add(rt: Runtime, address: str, file: Path, match: str) -> None:
    row = await accounts.add_certificate(rt, address, await asyncio.to_thread(file.read_bytes), match)
    click.echo(f"certificate {row.id} for {address.lower()}: {row.subject} (serial {row.serial}, {match})")


@cert.command("list")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def cert_list(rt: Runtime, address: str, as_json: bool) -> None:
    rows = [
        {
            "id": c.id,
            "subject": c.subject,
            "issuer": c.issuer,
            "serial": c.serial,
            "match": c.match,
            "sha256": c.sha256,
            "not_after": c.not_after.isoformat(),
        }
        for c in await accounts.list_certificates(rt, address)
    ]
    if as_json:
        emit(rows)
        return
    for r in rows:
        click.echo(f"{r['id']:5}  {r['subject']}  serial {r['serial']}  {r['match']}  until {r['not_after']}")


@cert.command("remove")
@click.argument("address")
@click.argument("cert_id", type=int)
@with_runtime
async def cert_remove(rt: Runtime, address: str, cert_id: int) -> None:
    await accounts.remove_certificate(rt, address, cert_id)
    click.echo(f"certificate {cert_id} removed")


@mailbox.command("inactive")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def mailbox_inactive(rt: Runtime, as_json: bool) -> None:
    """Mailboxes without any login for [mailboxes] inactive_after: notified or about to be, then disabled."""
    from mailserver import lifecycle

    found = await lifecycle.inactive(rt)
    if as_json:
        emit([m.as_dict() for m in found])
        return
    for m in found:
        last = m.last_login_at.date().isoformat() if m.last_login_at else "never"
        state = (
            f"notified {m.notice_at.date()}, disabled after {m.disable_after.date()}"
            if m.notice_at and m.disable_after
            else "to notify"
        )
        click.echo(f"{m.address:40} {m.type}  last login {last:10}  {state}")


@mailbox.group("app-password")
def app_password() -> None:
    """Per-device application passwords."""


@app_password.command("add")
@click.argument("address")
@click.option("--label", required=True, help="The device, e.g. 'Thunderbird bureau'.")
@with_runtime
async def app_password_add(rt: Runtime, address: str, label: str) -> None:
    app_id, secret = await accounts.add_app_password(rt, address, label)
    click.echo(f"application password {app_id} for {label!r}: {secret}")
    click.echo("It is shown only once.")


@app_password.command("list")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def app_password_list(rt: Runtime, address: str, as_json: bool) -> None:
    apps = await accounts.list_app_passwords(rt, address)
    rows = [
        {
            "id": a.id,
            "label": a.label,
            "created_at": a.created_at.isoformat(),
            "last_used_at": a.last_used_at.isoformat() if a.last_used_at else None,
        }
        for a in apps
    ]
    if as_json:
        emit(rows)
        return
    for r in rows:
        click.echo(
            f"{r['id']:5}  {r['label']:30} created {r['created_at']}  last used {r['last_used_at'] or '-'}"
        )


@app_password.command("revoke")
@click.argument("address")
@click.argument("app_id", type=int)
@with_runtime
async def app_password_revoke(rt: Runtime, address: str, app_id: int) -> None:
    await accounts.revoke_app_password(rt, address, app_id)
    click.echo(f"application password {app_id} revoked")


# ---------------------------------------------------------------------------------------------- quotas


@main.group()
def quota() -> None:
    """Mailbox quotas (storage and message count)."""


@quota.command("set")
@click.argument("address")
@click.argument("size")
@click.option("--messages", type=click.IntRange(0), help="Message count limit (0 = none).")
@with_runtime
async def quota_set(rt: Runtime, address: str, size: str, messages: int | None) -> None:
    """Set ADDRESS's storage limit (SIZE like 500MiB, 0 for none, "default" for the domain's)."""
    line = await accounts.set_mailbox_quota(rt, address, parse_limit(size), messages)
    click.echo(f"{line.address}: {line.used_bytes} of {line.storage or 'unlimited'} bytes ({line.percent} %)")


@quota.command("show")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def quota_show(rt: Runtime, address: str, as_json: bool) -> None:
    (line,) = await accounts.quota_lines(rt, address)
    if as_json:
        emit(line.as_dict())
        return
    click.echo(f"mailbox   {line.address}")
    click.echo(f"storage   {line.used_bytes} / {line.storage or 'unlimited'} bytes ({line.percent} %)")
    click.echo(f"messages  {line.used_messages} / {line.messages or 'unlimited'}")


@quota.command("report")
@click.option(
    "--over", type=click.FloatRange(0, 1000), default=0.0, help="Only mailboxes above this percent."
)
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def quota_report(rt: Runtime, over: float, as_json: bool) -> None:
    """Every mailbox's usage, most used first."""
    lines = [line for line in await accounts.quota_lines(rt) if line.percent >= over]
    if as_json:
        emit([line.as_dict() for line in lines])
        return
    for line in lines:
        click.echo(
            f"{line.percent:6.1f} %  {line.address:45} {line.used_bytes:>14} / {line.storage or '-':>14}"
        )


@quota.command("recalc")
@click.argument("address", required=False)
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def quota_recalc(rt: Runtime, address: str | None, as_json: bool) -> None:
    """Rebuild usage from the stored messages and report any drift."""
    results = await accounts.recount_usage(rt, address)
    drift = [(a, b, c) for a, b, c in results if b != c]
    if as_json:
        emit(
            [
                {
                    "address": a,
                    "before": {"bytes": b[0], "messages": b[1]},
                    "after": {"bytes": c[0], "messages": c[1]},
                    "drift": b != c,
                }
                for a, b, c in results
            ]
        )
        return
    for a, b, c in drift:
        click.echo(f"{a}: was {b[0]} bytes / {b[1]} messages, now {c[0]} bytes / {c[1]} messages")
    click.echo(f"{len(results)} mailbox(es) checked, {len(drift)} corrected")


# ---------------------------------------------------------------------------------------------- store


@main.group("store")
def store_group() -> None:
    """The message store (files under storage.path)."""


@store_group.command("check")
@click.option("--gc", "collect", is_flag=True, help="Also delete orphan files older than --age.")
@click.option("--age", default="1h", help="Only files older than this count as orphans (default 1h).")
@with_runtime
async def store_check(rt: Runtime, collect: bool, age: str) -> None:
    """Check that every message row has its file, and list (or collect) files no row references."""
    try:
        older_than = config.parse_duration(age)
    except ValueError as exc:
        fail(f"--age: {exc}")
    missing = await rt.store.missing_blobs()
    orphans = await rt.store.collect_orphans(older_than, dry_run=not collect)
    for path in missing:
        click.echo(f"MISSING  {path}")
    for path in orphans:
        click.echo(f"{'removed' if collect else 'orphan '}  {path}")
    click.echo(
        f"{len(missing)} missing file(s), {len(orphans)} orphan file(s){' removed' if collect else ''}"
    )
    if missing:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- audit


def _parse_since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        since = dt.datetime.fromisoformat(value)
    except ValueError:
        try:
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=config.parse_duration(value))
        except ValueError:
            fail(f"--since: expected an ISO date (2026-11-22T08:00) or a duration (2h, 7d), got {value!r}")
    return since if since.tzinfo else since.replace(tzinfo=dt.UTC)


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("list")
@click.option("--since", help="ISO date-time, or a duration back from now (30m, 2h, 7d).")
@click.option("--mailbox", "actor", help="Only events of this mailbox (or peer, or admin).")
@click.option("--action", help="Only this action (login, login-failure, send, receive, delete, admin, ...).")
@click.option("--limit", type=click.IntRange(1, 100000), default=1000)
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def audit_list(
    rt: Runtime, since: str | None, actor: str | None, action: str | None, limit: int, as_json: bool
) -> None:
    events = await rt.audit.events(_parse_since(since), actor, action, limit)
    if as_json:
        emit([e.as_dict() for e in events])
        return
    for e in events:
        click.echo(
            f"{e.at.isoformat(timespec='seconds')}  {e.actor:35} {e.remote:15} {e.action:14} "
            f"{e.request} -> {e.response}"
        )


@main.group()
def report() -> None:
    """Usage indicators (as reported to the ANS)."""


@report.command("usage")
@click.option("--month", required=True, help="YYYY-MM (UTC).")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def report_usage(rt: Runtime, month: str, as_json: bool) -> None:
    """Messages sent (to patients among them) and received, mailboxes and active mailboxes, per type."""
    from mailserver import reports

    try:
        result = await reports.usage(rt, month)
    except ValueError as exc:
        fail(f"--month: {exc}")
    if as_json:
        emit(result.as_dict())
        return
    click.echo(f"usage for {month}")
    click.echo(f"{'type':6} {'mailboxes':>10} {'active':>8} {'sent':>8} {'to patients':>12} {'received':>9}")
    for type_, row in [*result.types.items(), ("total", result.total)]:
        click.echo(
            f"{type_:6} {row['mailboxes']:>10} {row['active']:>8} {row['sent']:>8} "
            f"{row['sent_to_patients']:>12} {row['received']:>9}"
        )


@main.group()
def dns() -> None:
    """DNS records for clients and peers."""


@dns.command("records")
@click.argument("domain")
@with_runtime
async def dns_records(rt: Runtime, domain: str) -> None:
    """The SRV (RFC 6186, implicit TLS first per RFC 8314), MX and autoconfig records of a hosted domain."""
    from mailserver import clientconfig

    try:
        name = accounts.validate_domain(domain)
    except AccountError as exc:
        fail(str(exc))
    hosted = {d.name: d for d in await accounts.list_domains(rt)}
    if name not in hosted:
        fail(f"{name} is not a domain hosted here (caducee domain add)")
    for line in clientconfig.dns_records(rt.settings, name):
        click.echo(line)


EXPORT_FIELDS = ("id", "at", "actor", "remote", "action", "request", "response")


@audit.command("export")
@click.option("--since", required=True, help="ISO date (2026-01-01) or date-time, or a duration back (7d).")
@click.option("--until", help="ISO date or date-time (excluded); default: now.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True)
@with_runtime
async def audit_export(rt: Runtime, since: str, until: str | None, fmt: str) -> None:
    """Every event of a period, streamed to standard output (CSV with a header line, or a JSON array)."""
    import csv

    start, end = _parse_since(since), _parse_since(until)
    out = sys.stdout
    writer = csv.DictWriter(out, EXPORT_FIELDS, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    else:
        out.write("[")
    first = True
    async for e in rt.audit.stream(start, end):
        if writer is not None:
            writer.writerow(e.as_dict())
        else:
            out.write(
                ("\n" if first else ",\n") + json.dumps(e.as_dict(), ensure_ascii=False, sort_keys=True)
            )
        first = False
    if writer is None:
        out.write("\n]\n" if not first else "]\n")
    out.flush()


# ---------------------------------------------------------------------------------------------- backup


@main.command("backup")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@with_runtime
async def backup_cmd(rt: Runtime, directory: Path) -> None:
    """Copy the database, message files, S/MIME master key and configuration, server running or not."""
    from mailserver import backup

    try:
        manifest = await backup.backup(rt.settings, directory)
    except backup.BackupError as exc:
        await rt.audit.record("admin", "backup", request=str(directory), response=f"refused: {exc}")
        fail(str(exc))
    await rt.audit.record("admin", "backup", request=str(directory), response=f"{len(manifest.files)} files")
    click.echo(
        f"backup of {manifest.engine} at revision {', '.join(manifest.schema_revision)} in {directory}: "
        f"{len(manifest.files)} files"
    )


@main.command("restore")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="New or empty."
)
@click.option("--database-url", help="PostgreSQL backups: a new, empty database (postgresql+asyncpg://…).")
def restore_cmd(directory: Path, data_dir: Path, database_url: str | None) -> None:
    """Restore a backup into an empty data directory (checksums verified first)."""
    from mailserver import backup

    try:
        notes = asyncio.run(backup.restore(directory.resolve(), data_dir.resolve(), database_url))
    except backup.BackupError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot restore into {data_dir}: {exc}")
    for note in notes:
        click.echo("note: " + note)
    click.echo(f"restored into {data_dir}: run caducee --config {data_dir / 'caducee.toml'} serve")


# Command groups owned by the other packages (their modules import only mailserver.cli_support).
patient.add_command(invite)
for group in (trust_group, queue_group, smime, directory, patient, conversation):
    main.add_command(group)

if __name__ == "__main__":
    main()
