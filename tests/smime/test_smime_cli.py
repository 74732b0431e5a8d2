"""``caducee smime`` end to end: a real process per command, as an operator runs it (SQLite)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

import config
from mailserver import accounts
from mailserver.db import migrate
from mailserver.runtime import open_runtime
from tests.pki import TestPKI

CADUCEE = str(Path(sys.executable).with_name("caducee"))
MARTIN = "dr.martin@a.mssante.test"


class Cli:
    def __init__(self, config_path: Path) -> None:
        self.config = config_path

    def __call__(
        self, *args: str, stdin: str | None = None, code: int = 0
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [CADUCEE, "--config", str(self.config), "smime", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == code, r.stderr
        if code:
            assert r.stderr.startswith("caducee: ") and r.stderr.count("\n") == 1, r.stderr
        return r


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Cli:
    data = tmp_path_factory.mktemp("smime-cli")
    path = data / "caducee.toml"
    path.write_text(
        f"""[server]
hostname = "mx.a.mssante.test"
[database]
url = "sqlite+aiosqlite:///caducee.db"
[storage]
path = "store"
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8192
[smime]
ca = "{pki.peer_ca}"
crl = ["{pki.crl_path}", "{pki.root_crl_path}"]
key_file = "smime.key"
""",
        encoding="utf-8",
    )
    settings = config.load(path)
    migrate.upgrade(settings.database.url)

    async def populate() -> None:
        async with open_runtime(settings) as rt:
            await asyncio.to_thread(rt.blobs.ensure)
            await accounts.add_domain(rt, "a.mssante.test", patients=False)
            await accounts.add_mailbox(rt, MARTIN, "PER", rpps="10000000009")

    asyncio.run(populate())
    return Cli(path)


def test_import_with_password_show_and_remove(cli: Cli, pki: TestPKI) -> None:
    r = cli("import", MARTIN, str(pki.p12_path), "--password-stdin", stdin=pki.p12_password.decode() + "\n")
    assert f"S/MIME identity of {MARTIN} imported" in r.stdout
    assert (cli.config.parent / "smime.key").stat().st_mode & 0o777 == 0o600
    shown = json.loads(cli("show", MARTIN, "--json").stdout)
    assert shown["owner"] == MARTIN and shown["emails"] == [MARTIN]
    assert shown["chain"] == [pki.intermediate.subject]
    assert "sha256" in cli("show", MARTIN).stdout
    recipients = json.loads(cli("recipients", "--json").stdout)
    assert [(r["owner"], r["source"]) for r in recipients] == [(MARTIN, "mailbox")]
    assert "removed" in cli("remove", MARTIN).stdout
    assert "no S/MIME identity" in cli("show", MARTIN, code=1).stderr


def test_import_without_password_and_pem_pair(cli: Cli, pki: TestPKI) -> None:
    cli("import", MARTIN, str(pki.p12_nopass_path))
    martin = pki.smime[MARTIN]
    cli("import", MARTIN, str(martin.chain_path), "--key", str(martin.key_path))
    assert json.loads(cli("show", MARTIN, "--json").stdout)["subject"] == martin.subject
    cli("remove", MARTIN)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["import", MARTIN, "P12", "--password-stdin"], "wrong-password\n", "wrong PKCS#12 password"),
        (["import", MARTIN, "P12"], None, "requires a password"),
        (["import", MARTIN, "/nonexistent.p12"], None, "cannot read /nonexistent.p12"),
        (["import", MARTIN, "CERT"], None, "--key"),
        (["import", "nobody@a.mssante.test", "P12"], None, "no mailbox nobody@a.mssante.test"),
        (["import", MARTIN, "UNTRUSTED", "--key", "UNTRUSTED_KEY"], None, "untrusted"),
        (["show"], None, "either ADDRESS or --operator"),
        (["remove", MARTIN, "--operator"], None, "either ADDRESS or --operator"),
        (["import-recipient", "UNTRUSTED"], None, "untrusted"),
        (["import-recipient", "P12"], None, "not a certificate"),
    ],
)
def test_errors_are_one_line(
    cli: Cli, pki: TestPKI, args: list[str], stdin: str | None, message: str
) -> None:
    files = {
        "P12": str(pki.p12_path),
        "CERT": str(pki.smime[MARTIN].cert_path),
        "UNTRUSTED": str(pki.smime_untrusted.chain_path),
        "UNTRUSTED_KEY": str(pki.smime_untrusted.key_path),
    }
    r = cli(*[files.get(a, a) for a in args], stdin=stdin, code=1)
    assert message in r.stderr


def test_operator_and_recipients(cli: Cli, pki: TestPKI) -> None:
    org = pki.smime["secretariat@a.mssante.test"]
    cli("import-operator", str(org.chain_path), "--key", str(org.key_path))
    assert json.loads(cli("show", "--operator", "--json").stdout)["owner"] == "operator"
    r = cli("import-recipient", str(pki.smime["dr.durand@b.mssante.test"].cert_path))
    assert r.stdout.startswith("dr.durand@b.mssante.test")
    assert "dr.durand@b.mssante.test" in cli("recipients").stdout
    cli("remove", "--operator")
    cli("show", "--operator", code=1)


def test_unusable_anchors_are_a_configuration_error(cli: Cli, tmp_path: Path) -> None:
    broken = tmp_path / "caducee.toml"
    broken.write_text(
        cli.config.read_text().replace('ca = "', f'ca = "{tmp_path}/missing-'), encoding="utf-8"
    )
    r = subprocess.run(
        [CADUCEE, "--config", str(broken), "smime", "recipients"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("caducee: cannot load trust anchors")
