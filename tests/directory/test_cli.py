"""``caducee directory …`` and ``caducee patient …`` end to end, as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CADUCEE = str(Path(sys.executable).parent / "caducee")


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "caducee.toml"
    path.write_text(f'[database]\nurl = "{sqlite_url}"\n[storage]\npath = "store"\n', encoding="utf-8")
    return path


def caducee(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CADUCEE, "--config", str(config), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_directory_import_and_search(config: Path, sample: Path, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.txt"
    done = caducee(config, "directory", "import", str(sample), "--rejects", str(rejects), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {k: summary[k] for k in ("read", "added", "updated", "retired", "rejected")} == {
        "read": 3000,
        "added": 2999,
        "updated": 0,
        "retired": 0,
        "rejected": 1,
    }
    assert summary["rows_per_second"] > 0
    assert rejects.read_text(encoding="utf-8").splitlines()[1].startswith("2611|duplicate address")
    again = caducee(config, "directory", "import", str(sample))
    assert again.returncode == 0
    assert "added 0, updated 0, unchanged 2999, retired 0, rejected 1" in again.stdout
    assert "--rejects FILE" in again.stderr
    dry = caducee(config, "directory", "import", str(sample), "--dry-run")
    assert dry.stdout.startswith("dry run: ")
    found = caducee(config, "directory", "search", "Gaëlle O'Connor", "--json")
    assert found.returncode == 0
    assert json.loads(found.stdout)[0]["last_name"] == "O'CONNOR"
    text = caducee(config, "directory", "search", "cardiologie", "--city", "Lyon", "--type", "ORG")
    assert "cardiologie." in text.stdout and "LYON" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("directory", "import", "/nonexistent.txt"), "caducee: /nonexistent.txt: file not found\n"),
        (
            ("directory", "search"),
            "caducee: give search words, or at least one of --profession, --city, --type\n",
        ),
        (
            ("patient", "show", "262112B82955336"),
            "caducee: '262112B82955336': wrong control key 36, expected 35\n",
        ),
        (("patient", "show", "262112B82955335"), "caducee: no patient with INS 262112B82955335\n"),
    ],
)
def test_errors_are_one_line(config: Path, args: tuple[str, ...], message: str) -> None:
    done = caducee(config, *args)
    assert (done.returncode, done.stderr) == (1, message)


def test_patient_commands(config: Path, patients_csv: Path) -> None:
    done = caducee(config, "patient", "import", str(patients_csv))
    assert (done.returncode, done.stdout) == (0, "read 300, added 300, updated 0, unchanged 0, rejected 0\n")
    shown = caducee(config, "patient", "show", "262112B82955335", "--json")
    assert json.loads(shown.stdout)["display_name"] == "PETIT Pierre (patiente)"
    args = ["--last-name", "Dupont", "--first-name", "Marie", "--birth-date", "1980-05-12", "--sex", "F"]
    added = caducee(config, "patient", "add", "280057512345607", *args)
    assert added.returncode == 1 and added.stderr.startswith("caducee: '280057512345607': wrong control key")
    added = caducee(config, "patient", "add", "280057512345674", *args)
    assert (added.returncode, added.stdout) == (0, "patient 280057512345674 added: DUPONT Marie (patiente)\n")
