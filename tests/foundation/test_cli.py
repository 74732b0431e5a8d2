"""The admin CLI end to end, as an operator runs it: a real ``caducee`` process per command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.instance import MARTIN, Instance
from tests.ports import free_port

CADUCEE = str(Path(sys.executable).with_name("caducee"))


class Cli:
    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(
        self, *args: str, stdin: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [CADUCEE, "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in r.stderr, r.stderr
        if ok:
            assert r.returncode == 0, r.stderr
        else:
            assert r.returncode != 0 and r.stderr.startswith("caducee: ") and r.stderr.count("\n") == 1, (
                r.stderr
            )
        return r

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    data = tmp_path_factory.mktemp("data")
    r = subprocess.run(
        [
            CADUCEE,
            "init",
            "--data-dir",
            str(data),
            "--domain",
            "a.mssante.test",
            "--patient-domain",
            "patient.a.mssante.test",
            "--demo-mailboxes",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "dr.martin@a.mssante.test (PER) password:" in r.stdout
    for name in ("caducee.toml", "caducee.db", "store", "tls/chain.pem", "tls/key.pem", "tls/peer-ca.pem"):
        assert (data / name).exists(), name
    assert oct((data / "tls/key.pem").stat().st_mode & 0o777) == "0o600"
    return Cli(data / "caducee.toml")


def test_init_refuses_an_initialised_directory(cli: Cli) -> None:
    r = subprocess.run(
        [CADUCEE, "init", "--data-dir", str(cli.config.parent), "--domain", "a.mssante.test"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "already exists" in r.stderr


def test_init_rejects_a_bad_domain(tmp_path: Path) -> None:
    r = subprocess.run(
        [CADUCEE, "init", "--data-dir", str(tmp_path / "d"), "--domain", "not a domain"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.startswith("caducee: invalid address")
    assert not (tmp_path / "d").exists()


def test_domains(cli: Cli) -> None:
    assert cli.json("domain", "list") == [
        {"name": "a.mssante.test", "patients": False, "quota_storage": None},
        {"name": "patient.a.mssante.test", "patients": True, "quota_storage": None},
    ]
    cli("domain", "add", "B.Example.test")
    cli("domain", "add", "b.example.test", ok=False)
    assert "b.example.test" in cli("domain", "list").stdout


def test_mailbox_lifecycle(cli: Cli) -> None:
    cli(
        "mailbox",
        "add",
        "cardio@a.mssante.test",
        "--type",
        "ORG",
        "--quota",
        "2GiB",
        "--name",
        "Cardiologie",
        "--password-stdin",
        stdin="un mot de passe\n",
    )
    shown = cli.json("mailbox", "show", "Cardio@A.mssante.test")
    assert isinstance(shown, dict)
    assert shown["address"] == "cardio@a.mssante.test" and shown["type"] == "ORG"
    assert (
        shown["quota_storage"] == 2 * 1024**3
        and shown["enabled"] is True
        and shown["display_name"] == "Cardiologie"
    )
    listed = cli.json("mailbox", "list")
    assert isinstance(listed, list) and "cardio@a.mssante.test" in [m["address"] for m in listed]

    cli("mailbox", "passwd", "cardio@a.mssante.test", "--password-stdin", stdin="nouveau mot de passe\n")
    cli("mailbox", "disable", "cardio@a.mssante.test")
    assert cli.json("mailbox", "show", "cardio@a.mssante.test")["enabled"] is False  # type: ignore[index]
    cli("mailbox", "enable", "cardio@a.mssante.test")

    added = cli("mailbox", "app-password", "add", "cardio@a.mssante.test", "--label", "Thunderbird").stdout
    assert "shown only once" in added
    apps = cli.json("mailbox", "app-password", "list", "cardio@a.mssante.test")
    assert isinstance(apps, list) and [a["label"] for a in apps] == ["Thunderbird"]
    cli("mailbox", "app-password", "revoke", "cardio@a.mssante.test", str(apps[0]["id"]))
    assert cli.json("mailbox", "app-password", "list", "cardio@a.mssante.test") == []
    cli("mailbox", "app-password", "revoke", "cardio@a.mssante.test", str(apps[0]["id"]), ok=False)

    cli("mailbox", "delete", "cardio@a.mssante.test", "--yes")
    cli("mailbox", "show", "cardio@a.mssante.test", ok=False)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["mailbox", "add", "x@a.mssante.test", "--type", "PER"], None, "needs --rpps"),
        (["mailbox", "add", "x@a.mssante.test", "--type", "PER", "--rpps", "10000000008"], None, "Luhn"),
        (["mailbox", "add", "x@nowhere.test", "--type", "ORG"], None, "not hosted here"),
        (["mailbox", "add", "not-an-address", "--type", "ORG"], None, "invalid address"),
        (["mailbox", "add", "dr.martin@a.mssante.test", "--type", "ORG"], None, "already exists"),
        (["mailbox", "add", "x@a.mssante.test", "--type", "PAT"], None, "belong in a patient domain"),
        (["mailbox", "add", "123@patient.a.mssante.test", "--type", "PAT"], None, "15 characters"),
        (["mailbox", "add", "262112B82955336@patient.a.mssante.test", "--type", "PAT"], None, "control key"),
        (["mailbox", "add", "x@a.mssante.test", "--type", "ORG", "--quota", "lots"], None, "--quota"),
        (
            ["mailbox", "add", "x@a.mssante.test", "--type", "ORG", "--password-stdin"],
            "short\n",
            "8 characters",
        ),
        (["mailbox", "passwd", "nobody@a.mssante.test", "--password-stdin"], "long enough\n", "no mailbox"),
        (["mailbox", "disable", "nobody@a.mssante.test"], None, "no mailbox"),
        (["audit", "list", "--since", "yesterday-ish"], None, "--since"),
    ],
)
def test_bad_input_is_a_clean_error(cli: Cli, args: list[str], stdin: str | None, message: str) -> None:
    r = cli(*args, stdin=stdin, ok=False)
    assert message in r.stderr


def test_patient_mailbox_is_stored_by_ins(cli: Cli) -> None:
    cli("mailbox", "add", "262112B82955335@patient.a.mssante.test", "--type", "PAT")
    assert cli.json("mailbox", "show", "262112b82955335@patient.a.mssante.test")["type"] == "PAT"  # type: ignore[index]


def test_audit_trail_records_admin_changes(cli: Cli) -> None:
    cli("mailbox", "add", "audited@a.mssante.test", "--type", "APP")
    events = cli.json("audit", "list", "--since", "1h", "--action", "admin")
    assert isinstance(events, list)
    assert any(e["request"] == "mailbox add audited@a.mssante.test type=APP" for e in events)
    assert set(events[0]) == {"id", "at", "actor", "remote", "action", "request", "response"}


def test_db_commands(cli: Cli) -> None:
    assert "up to date" in cli("db", "upgrade").stdout
    out = cli("db", "current").stdout.splitlines()
    assert out[0].split(":", 1)[1].strip() == out[1].split(":", 1)[1].strip()


def test_serve_starts_and_stops_cleanly_on_sigterm(cli: Cli) -> None:
    proc = subprocess.Popen(
        [CADUCEE, "--config", str(cli.config), "serve"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if '"event":"ready"' in line:
            break
    else:
        proc.kill()
        pytest.fail("server never said it was ready: " + "".join(lines))
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, rest
    assert '"event":"stopped"' in rest


def test_quota_commands(cli: Cli) -> None:
    cli("mailbox", "add", "quota@a.mssante.test", "--type", "ORG")
    out = cli("quota", "set", "quota@a.mssante.test", "10MiB", "--messages", "50").stdout
    assert "quota@a.mssante.test" in out
    shown = cli.json("quota", "show", "quota@a.mssante.test")
    assert shown == {
        "address": "quota@a.mssante.test",
        "used_bytes": 0,
        "storage_limit": 10 * 1024**2,
        "used_messages": 0,
        "message_limit": 50,
        "percent": 0.0,
    }
    report = cli.json("quota", "report")
    assert isinstance(report, list) and {r["address"] for r in report} >= {"quota@a.mssante.test"}
    assert cli.json("quota", "report", "--over", "50") == []
    recalc = cli.json("quota", "recalc")
    assert isinstance(recalc, list) and not any(r["drift"] for r in recalc)
    cli("domain", "quota", "a.mssante.test", "2GiB")
    cli("quota", "set", "quota@a.mssante.test", "default")
    assert cli.json("quota", "show", "quota@a.mssante.test")["storage_limit"] == 2 * 1024**3  # type: ignore[index]
    assert "SIZE" in cli("quota", "set", "quota@a.mssante.test", "huge", ok=False).stderr
    cli("quota", "show", "nobody@a.mssante.test", ok=False)


def test_serve_refuses_to_start_with_an_unreadable_crl_file(cli: Cli, tmp_path: Path) -> None:
    """A mistyped ``[tls] crl`` would refuse every peer: serve says so at once instead of serving."""
    text = cli.config.read_text()
    assert "\n[tls]\n" in text
    config = cli.config.parent / "crl-typo.toml"  # beside it: its relative paths stay the same
    config.write_text(text.replace("\n[tls]\n", f'\n[tls]\ncrl = ["{tmp_path}/none.crl"]\n', 1))
    r = subprocess.run(
        [CADUCEE, "--config", str(config), "serve"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("caducee: cannot start: [tls] peer_ca or a CRL file is unreadable"), r.stderr
    assert "none.crl" in last and '"event":"ready"' not in r.stderr


@pytest.mark.postgres
def test_init_on_postgresql_serves_at_once(tmp_path: Path, pg_url: str) -> None:
    """``init --database-url`` prepares the production engine itself: schema, store identity, domains
    and demo mailboxes all in PostgreSQL, so ``serve`` starts and the demo mailbox logs in over IMAP."""
    inst = Instance.init(CADUCEE, tmp_path / "data", "", "--database-url", pg_url)
    assert f'url = "{pg_url}"' in inst.config.read_text(encoding="utf-8")
    assert not (inst.directory / "caducee.db").exists()
    inst.start()
    try:
        client = inst.imap(MARTIN)
        assert client.select("INBOX")[0] == "OK"
        client.logout()
    finally:
        assert inst.stop() == 0


def test_init_with_an_unreachable_database_says_so(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    r = subprocess.run(
        [
            CADUCEE,
            "init",
            "--data-dir",
            str(tmp_path / "d"),
            "--domain",
            "a.mssante.test",
            "--database-url",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.startswith(f"caducee: cannot prepare the database {url}"), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "d" / "caducee.toml").exists()
