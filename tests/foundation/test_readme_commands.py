"""Every ``caducee`` command form the README shows, run against a fresh instance with real inputs.

The forms are read from the README's ``sh`` blocks (Run it, Administration, S/MIME), resolved against
the command tree (so a form naming a command or an option that does not exist fails), and the
scenario below must run each documented command with each option the README shows for it. Commands
run in this process through click's runner (a process per command costs seconds here) while
``caducee serve`` runs beside them, as an operator would do; mail comes in through submission. Every
command must exit as expected with no exception, and ``--json`` output must parse.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import re
import socket
import ssl
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import cli as caducee_cli
from mailserver.cli_support import CliState, with_runtime
from mailserver.runtime import Runtime
from tests.instance import MARTIN, PATIENT_DOMAIN, SECRETARIAT, Instance

CADUCEE = str(Path(sys.executable).with_name("caducee"))
ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "directory"
EXTRACTION = SHARED / "Extraction_Correspondance_MSSante_202611220400.txt"
INS = "262112B82955335"  # PETIT Pierre, in patients.csv too
PATIENT = f"{INS}@{PATIENT_DOMAIN}"
DUPONT = "dr.dupont@a.mssante.test"
DPI = "dpi@a.mssante.test"  # the README's patient-record system
REMOTE = "dr.leroy@chu-nord.mssante.test"  # a trust-list domain of the sample

Form = tuple[str, ...]


# ---------------------------------------------------------------------------------------------- the README


def resolve(words: list[str]) -> list[tuple[Form, set[str]]]:
    """The command path(s) ``words`` name (``add|list`` names two) and the options they show; fails
    on a path that is not a command or an option that command does not have."""
    paths: list[tuple[Form, click.Command]] = [((), caducee_cli.main)]
    i = 0
    while i < len(words) and all(isinstance(c, click.Group) for _, c in paths):
        names = words[i].split("|")
        groups = [c for _, c in paths if isinstance(c, click.Group)]
        if not all(n in g.commands for n in names for g in groups):
            break
        paths = [((*p, n), c.commands[n]) for p, c in paths if isinstance(c, click.Group) for n in names]
        i += 1
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(words[i:])))
    out = []
    for path, command in paths:
        assert path and not isinstance(command, click.Group), f"not a command: {' '.join(words)}"
        known = {o for p in command.params for o in p.opts if o.startswith("--")}
        assert shown <= known, f"caducee {' '.join(path)} has no option {sorted(shown - known)}"
        out.append((path, shown))
    return out


def documented() -> dict[Form, set[str]]:
    """Each command the README's ``sh`` blocks show, with the options shown for it anywhere."""
    forms: dict[Form, set[str]] = {}
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found = re.search(r"(?:^|[\s/])caducee\s+(.*)", re.sub(r"(^|\s+)#.*$", "", line))
            if found is None:
                continue
            group: Form = ()
            for alternative in re.sub(r"--config\s+\S+", "", found[1]).split(" | "):
                words = alternative.split()
                if words[0] not in caducee_cli.main.commands:  # "mailbox list | show ADDRESS"
                    words = [*group, *words]
                for path, shown in resolve(words):
                    forms.setdefault(path, set()).update(shown)
                    group = path[:-1]
    return forms


def test_the_readme_forms_are_read() -> None:
    """The parser finds what a reader sees (a guard against a parser that silently finds nothing)."""
    forms = documented()
    assert forms[("conversation", "list")] == {"--patient", "--mailbox", "--state", "--json"}
    assert forms[("smime", "import")] == {"--password-stdin", "--key"}
    assert {("mailbox", "app-password", "revoke"), ("smime", "recipients"), ("db", "current")} <= set(forms)
    assert forms[("mailbox", "add")] == {"--type", "--rpps", "--password-stdin"}
    assert len(forms) >= 40


def test_a_command_option_may_have_any_name(tmp_path: Path) -> None:
    """``with_runtime`` adds no parameter of its own that an option could collide with."""
    config = tmp_path / "caducee.toml"
    config.write_text('[database]\nurl = "sqlite+aiosqlite:///caducee.db"\n', encoding="utf-8")

    @click.command()
    @click.option("--state")
    @click.option("--settings")
    @click.option("--args")
    @with_runtime
    async def probe(rt: Runtime, state: str, settings: str, args: str) -> None:
        click.echo(f"{state} {settings} {args} {rt.settings.database.url.endswith('caducee.db')}")

    result = CliRunner().invoke(
        probe, ["--state", "open", "--settings", "s", "--args", "a"], obj=CliState(str(config))
    )
    assert result.exception is None and result.output == "open s a True\n", result.output


# ---------------------------------------------------------------------------------------------- the runner


class Cli:
    """``caducee --config FILE ARGS`` in this process; records what ran for the coverage check."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.ran: dict[Form, set[str]] = {}

    def __call__(self, *args: str, stdin: str | None = None, code: int = 0) -> str:
        result = CliRunner().invoke(caducee_cli.main, ["--config", str(self.config), *args], input=stdin)
        where = f"caducee {' '.join(args)}:\n{result.output}"
        assert result.exception is None or isinstance(result.exception, SystemExit), where
        assert result.exit_code == code, where
        assert "Traceback" not in result.output, where
        if code:
            assert result.stderr.startswith("caducee: ") and result.stderr.count("\n") == 1, where
        elif "--json" in args:
            json.loads(result.stdout)
        for path, shown in resolve(list(args)):
            self.ran.setdefault(path, set()).update(shown)
        return result.stdout

    def json(self, *args: str, stdin: str | None = None) -> Any:
        return json.loads(self(*args, "--json", stdin=stdin))


@pytest.fixture
def logging_kept() -> Iterator[None]:
    """``caducee`` configures logging for its process: leave this test process's as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    logging.getLogger("mail.log").setLevel(logging.NOTSET)


@pytest.fixture
def publisher(pki: Any) -> Iterator[str]:
    """The trust list's publisher: HTTPS on loopback with a test-PKI certificate, serving the sample;
    its URL (``[trust] url``)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SHARED))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    identity = pki.tls["a.mssante.test"]
    ctx.load_cert_chain(str(identity.chain_path), str(identity.key_path))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/listeblanchemssante.xml"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but never listening: outbound delivery there is refused, mail stays queued."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- the scenario


@pytest.mark.slow
def test_every_documented_command_form_runs(
    tmp_path: Path, pki: Any, closed_port: int, publisher: str, logging_kept: None
) -> None:
    inst = Instance.init(
        CADUCEE,
        tmp_path / "demo",
        f"""
[delivery]
routes = {{ "chu-nord.mssante.test" = "127.0.0.1:{closed_port}" }}
[smime]
ca = "{pki.peer_ca}"
crl = ["{pki.crl_path}", "{pki.root_crl_path}"]
[trust]
url = "{publisher}"
ca_file = "{pki.peer_ca}"
""",
    )
    inst.start()
    run = Cli(inst.config)
    try:
        scenario(run, inst, pki, tmp_path)
    finally:
        code = inst.stop()
    assert code == 0, "".join(inst.lines)
    missing = {
        " ".join(path): sorted(shown - run.ran.get(path, set()))
        for path, shown in documented().items()
        if path not in run.ran or shown - run.ran[path]
    }
    assert not missing, f"README forms the scenario does not run (command: options): {missing}"


def scenario(run: Cli, inst: Instance, pki: Any, tmp_path: Path) -> None:
    assert "up to date" in run("db", "upgrade")
    database, code = (line.split(":", 1)[1].strip() for line in run("db", "current").splitlines())
    assert database == code

    run("domain", "add", "b.example.test")
    run("domain", "add", "c.example.test", "--patients")
    run("domain", "quota", "a.mssante.test", "2GiB")
    run("domain", "quota", "a.mssante.test", "2GiB", "--messages", "100000")

    run(
        "mailbox",
        "add",
        DUPONT,
        "--type",
        "PER",
        "--rpps",
        "10000000017",
        "--password-stdin",
        stdin="mot de passe sûr\n",
    )
    assert DUPONT in run("mailbox", "list")
    assert DUPONT in [m["address"] for m in run.json("mailbox", "list")]
    assert "PER" in run("mailbox", "show", DUPONT)
    assert run.json("mailbox", "show", DUPONT)["rpps"] == "10000000017"
    assert "changed" in run("mailbox", "passwd", DUPONT, "--password-stdin", stdin="un autre mot de passe\n")
    assert "shown only once" in run("mailbox", "app-password", "add", DUPONT, "--label", "Thunderbird bureau")
    (app,) = run.json("mailbox", "app-password", "list", DUPONT)
    assert "Thunderbird bureau" in run("mailbox", "app-password", "list", DUPONT)
    run("mailbox", "app-password", "revoke", DUPONT, str(app["id"]))
    run("mailbox", "disable", DUPONT)
    assert run.json("mailbox", "show", DUPONT)["enabled"] is False
    run("mailbox", "enable", DUPONT)
    run("mailbox", "send-as", MARTIN, SECRETARIAT)
    assert "rights lrsp" in run("mailbox", "member", "add", SECRETARIAT, DUPONT, "--rights", "lrsp")
    assert {"org": SECRETARIAT, "member": DUPONT, "rights": "lrsp"} in run.json(
        "mailbox", "member", "list", SECRETARIAT
    )
    assert DUPONT in run("mailbox", "member", "list")
    run("mailbox", "member", "remove", SECRETARIAT, DUPONT)
    assert "accepts app-password, oauth" in run("mailbox", "auth", DUPONT, "--allow", "oauth,app-password")
    assert run.json("mailbox", "show", DUPONT)["auth_methods"] == ["app-password", "oauth"]
    # The instance's own certificate (local CA = its peer_ca, EKU clientAuth) stands in for a DPI's.
    run("mailbox", "add", DPI, "--type", "APP")
    software = str(inst.directory / "tls" / "chain.pem")
    assert "subject" in run("mailbox", "cert", "add", DPI, software, "--match", "subject")
    (registered,) = run.json("mailbox", "cert", "list", DPI)
    assert registered["match"] == "subject" and "subject" in run("mailbox", "cert", "list", DPI)
    run("mailbox", "cert", "remove", DPI, str(registered["id"]))
    run("mailbox", "cert", "add", DPI, software)
    run("mailbox", "auth", DPI, "--allow", "cert")
    assert run.json("mailbox", "inactive") == [] and run("mailbox", "inactive") == ""

    run("trust", "import", str(SHARED / "listeblanchemssante.xml"))
    run("trust", "add", "z.mssante.test", "--dn", "CN=mx.z.mssante.test,O=Operateur Z,C=FR")
    assert "z.mssante.test" in run("trust", "list")
    assert "chu-nord.mssante.test" in [t["name"] for t in run.json("trust", "list")]
    run("trust", "remove", "z.mssante.test")
    assert "0 added, 0 removed, 0 changed, 9 unchanged" in run("trust", "refresh")
    assert "9 unchanged" in run("trust", "refresh", "--force")

    # The README's patient of "Run it", then the sample file (which has her too).
    run("mailbox", "add", PATIENT, "--type", "PAT")
    run(
        "patient",
        "add",
        INS,
        "--last-name",
        "PETIT",
        "--first-name",
        "Pierre",
        "--birth-date",
        "1962-11-23",
        "--sex",
        "F",
        "--address",
        "1 rue de la Paix, Bastia",
        "--email",
        "pierre.petit@perso.example.test",
        "--phone",
        "06 12 34 56 78",
    )
    assert "PETIT" in run("patient", "show", INS)
    run(
        "patient", "edit", INS, "--last-name", "PETIT", "--first-name", "Pierre",
        "--birth-date", "1962-11-23",
        "--sex", "F", "--address", "2 rue de la Paix, Bastia", "--email", "p.petit@perso.example.test",
        "--phone", "+33 6 12 34 56 78",
    )  # fmt: skip
    assert run.json("patient", "show", INS)["email"] == "p.petit@perso.example.test"
    run("patient", "import", str(SHARED / "patients.csv"))
    assert "activation code for" in run("patient", "invite", INS)
    run("patient", "invite", INS, "--send", code=1)  # this instance has no [relay]: refused, nothing sent

    inst.submit(MARTIN, [REMOTE], "vers un autre opérateur")
    inst.submit(MARTIN, [PATIENT], "Vos résultats")
    inst.submit(MARTIN, [SECRETARIAT], "note interne")

    (entry,) = run.json("queue", "list")
    assert entry["sender"] == MARTIN and entry["recipients"][0]["address"] == REMOTE
    assert REMOTE in run("queue", "list")
    run("queue", "retry")
    run("queue", "retry", str(entry["id"]))
    run("queue", "delete", str(entry["id"]))
    assert run.json("queue", "list") == []

    assert INS in run("conversation", "list")
    (conv,) = run.json("conversation", "list", "--patient", INS, "--mailbox", MARTIN, "--state", "open")
    run("conversation", "close", conv["id"])
    assert [c["id"] for c in run.json("conversation", "list", "--state", "closed")] == [conv["id"]]

    summary = run.json("directory", "import", str(EXTRACTION), "--dry-run")
    assert summary["dry_run"] is True and summary["read"] == 3000
    rejects = tmp_path / "rejects.txt"
    run("directory", "import", str(EXTRACTION), "--rejects", str(rejects))
    assert rejects.exists()
    archive = tmp_path / "Extraction_Correspondance_MSSante.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(EXTRACTION, EXTRACTION.name)
    assert run.json("directory", "import", str(archive))["unchanged"] > 0
    found = run.json(
        "directory", "search", "bernard", "--profession", "Médecin", "--city", "Marseille", "--type", "PER"
    )
    assert "noel.bernard@ght-atlantique.mssante.test" in [e["address"] for e in found]
    run("directory", "search", "dupont cardio")

    password = pki.p12_password.decode() + "\n"
    run("smime", "import", MARTIN, str(pki.p12_path), "--password-stdin", stdin=password)
    secretariat = pki.smime[SECRETARIAT]
    run("smime", "import", SECRETARIAT, str(secretariat.chain_path), "--key", str(secretariat.key_path))
    run("smime", "import-operator", str(pki.p12_path), "--password-stdin", stdin=password)
    run("smime", "import-recipient", str(pki.smime["dr.durand@b.mssante.test"].cert_path))
    assert MARTIN in run("smime", "show", MARTIN)
    assert run.json("smime", "show", "--operator")["owner"]
    assert "dr.durand@b.mssante.test" in json.dumps(run.json("smime", "recipients"))
    run("smime", "recipients")
    run("smime", "remove", SECRETARIAT)

    run("quota", "set", SECRETARIAT, "1KiB", "--messages", "10")
    assert SECRETARIAT in run("quota", "show", SECRETARIAT)
    usage = run.json("quota", "show", SECRETARIAT)
    assert usage["storage_limit"] == 1024 and usage["percent"] == round(100 * usage["used_bytes"] / 1024, 1)
    run("quota", "report")
    over = [q["address"] for q in run.json("quota", "report", "--over", str(int(usage["percent"])))]
    assert SECRETARIAT in over
    assert SECRETARIAT not in [q["address"] for q in run.json("quota", "report", "--over", "100")]
    run("quota", "recalc")
    assert not any(r["drift"] for r in run.json("quota", "recalc", SECRETARIAT))

    logins = run.json("audit", "list", "--since", "2h", "--mailbox", MARTIN, "--action", "login")
    assert logins and all(e["actor"] == MARTIN for e in logins)
    run("audit", "list")
    assert "_submissions._tcp.a.mssante.test." in run("dns", "records", "a.mssante.test")
    month = run.json("report", "usage", "--month", "2026-12")["month"]
    assert month == "2026-12" and "total" in run("report", "usage", "--month", month)
    exported = json.loads(
        run("audit", "export", "--since", "2026-01-01", "--until", "2100-01-01", "--format", "json")
    )
    assert any(e["action"] == "login" for e in exported)
    assert run("audit", "export", "--since", "2h", "--format", "csv").startswith("id,at,actor")

    assert "0 missing file(s)" in run("store", "check")
    run("store", "check", "--gc")

    backup = tmp_path / "backup"
    assert "backup of sqlite" in run("backup", str(backup))
    run(
        "restore",
        str(backup),
        "--data-dir",
        str(tmp_path / "r1"),
        "--database-url",
        "postgresql+asyncpg://x/y",
        code=1,
    )
    assert "restored into" in run("restore", str(backup), "--data-dir", str(tmp_path / "restored"))

    run("mailbox", "delete", DUPONT, stdin="y\n")
    run("mailbox", "show", DUPONT, code=1)
