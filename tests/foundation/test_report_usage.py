"""``caducee report usage`` (issue 19): counts of a month's real traffic through submission and IMAP,
per mailbox type, from the audit trail; other months are empty; a bad month is a one-line error."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.instance import MARTIN, PATIENT_DOMAIN, SECRETARIAT, Instance

CADUCEE = str(Path(sys.executable).with_name("caducee"))
INS = "262112B82955335"
PATIENT = f"{INS}@{PATIENT_DOMAIN}"


def caducee(inst: Instance, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CADUCEE, "--config", str(inst.config), *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_usage_report_counts_a_month_of_real_traffic(tmp_path: Path) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    assert caducee(inst, "mailbox", "add", PATIENT, "--type", "PAT").returncode == 0
    patient = ["--last-name", "PETIT", "--first-name", "Pierre", "--birth-date", "1962-11-23", "--sex", "F"]
    assert caducee(inst, "patient", "add", INS, *patient).returncode == 0
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    inst.start()
    try:
        inst.submit(MARTIN, [SECRETARIAT], "un")
        inst.submit(MARTIN, [SECRETARIAT], "deux")
        inst.submit(MARTIN, [PATIENT], "Vos résultats")
        inst.submit(SECRETARIAT, [MARTIN], "réponse")
        inst.imap(SECRETARIAT).logout()
        report = json.loads(caducee(inst, "report", "usage", "--month", month, "--json").stdout)
        text = caducee(inst, "report", "usage", "--month", month).stdout
    finally:
        assert inst.stop() == 0
    if dt.datetime.now(dt.UTC).strftime("%Y-%m") != month:
        pytest.fail("the month changed during the test: run it again")
    types = report["types"]
    assert report["month"] == month
    assert types["PER"] == {"mailboxes": 1, "active": 1, "sent": 3, "sent_to_patients": 1, "received": 1}
    assert types["ORG"] == {"mailboxes": 1, "active": 1, "sent": 1, "sent_to_patients": 0, "received": 2}
    assert types["PAT"] == {"mailboxes": 1, "active": 0, "sent": 0, "sent_to_patients": 0, "received": 1}
    assert types["APP"] == types["CAB"] == dict.fromkeys(types["APP"], 0)
    assert report["total"]["sent"] == 4 and report["total"]["received"] == 4
    assert text.splitlines()[-1].split() == ["total", "3", "2", "4", "1", "4"]

    earlier = json.loads(caducee(inst, "report", "usage", "--month", "2020-01", "--json").stdout)
    assert earlier["total"] == dict.fromkeys(earlier["total"], 0)
    bad = caducee(inst, "report", "usage", "--month", "2026-13")
    assert bad.returncode == 1
    assert bad.stderr == "caducee: --month: expected a month like 2026-11, got '2026-13'\n"
