"""kill -9 of ``caducee serve`` while submission and IMAP APPEND clients write without pause: once
started again, the server holds every message it acknowledged (250 after DATA, OK after APPEND), and
the store has no row without its file.

A SIGKILL does not lose the page cache, so this checks the order of things (acknowledged only once
committed), not the fsync itself; the group commit that makes writers share a COMMIT is what it
exercises most. On SQLite (``caducee init``'s default) and PostgreSQL. Real processes, the standard
library's smtplib and imaplib.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.instance import MARTIN, SECRETARIAT, Instance, Load, subjects_in_inbox

CADUCEE = str(Path(sys.executable).with_name("caducee"))


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_kill_9_under_load_loses_no_acknowledged_message(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    if engine == "postgresql":
        inst.use_postgresql(request.getfixturevalue("pg_url"))
    inst.start()
    with Load(inst, senders=3, appenders=3) as load:
        load.wait_for(60)
        assert not load.errors, load.errors
        assert inst.proc is not None
        inst.proc.kill()  # SIGKILL: no shutdown, no flush, clients cut mid-command
        acked = load.snapshot()
        inst.exit_code()
    assert {s.split("-")[0] for s in acked} == {"charge", "ajout"}, acked

    inst.start()
    try:
        # a local recipient's copy commits with the message, before its 250: no queue to wait for
        for prefix, owner in (("ajout-", MARTIN), ("charge-", SECRETARIAT)):
            missing = {s for s in acked if s.startswith(prefix)} - subjects_in_inbox(inst, owner)
            assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
    finally:
        assert inst.stop() == 0
    check = inst.run("store", "check")
    assert check.returncode == 0 and "0 missing file(s)" in check.stdout, check.stdout + check.stderr
