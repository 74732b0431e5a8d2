"""The store and the database carry one identity (issue 20 item 6): ``caducee init`` writes it on both
sides, ``caducee serve`` refuses in one line (exit 2, no traceback) a store that is not its
database's, and an instance made before the identity existed gets it at its first ``serve``."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from mailserver.store.identity import MARKER
from tests.instance import Instance

CADUCEE = str(Path(sys.executable).with_name("caducee"))


def db_identity(inst: Instance) -> str | None:
    with sqlite3.connect(inst.directory / "caducee.db") as conn:
        (value,) = conn.execute("SELECT store_id FROM storage_identity WHERE id = 1").fetchone()
    return value


def store_identity(store: Path) -> str | None:
    marker = store / MARKER
    return marker.read_text().strip() if marker.exists() else None


def use_store(inst: Instance, store: Path) -> None:
    text = inst.config.read_text(encoding="utf-8")
    inst.config.write_text(text.replace('path = "store"', f'path = "{store}"', 1), encoding="utf-8")


def refused(inst: Instance) -> str:
    """``serve`` must exit 2 at once with one line on stderr; returns that line."""
    r = subprocess.run(
        [CADUCEE, "--config", str(inst.config), "serve"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def test_init_writes_one_identity_and_serve_accepts_it(tmp_path: Path) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    identity = db_identity(inst)
    assert identity and store_identity(inst.directory / "store") == identity
    inst.start()
    assert inst.stop() == 0
    r = subprocess.run(
        [CADUCEE, "--config", str(inst.config), "store", "check", "--gc", "--age", "0s"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert store_identity(inst.directory / "store") == identity  # the marker is no orphan blob


def test_serve_refuses_the_store_of_another_instance(tmp_path: Path) -> None:
    a = Instance.init(CADUCEE, tmp_path / "a")
    b = Instance.init(CADUCEE, tmp_path / "b")
    use_store(a, b.directory / "store")
    line = refused(a)
    assert line.startswith("caducee: cannot start: the store ") and "is not this database's" in line
    assert str(store_identity(b.directory / "store")) in line and str(db_identity(a)) in line


def test_serve_refuses_a_store_without_identity(tmp_path: Path) -> None:
    """An empty directory where the store should be (a shared filesystem not mounted)."""
    inst = Instance.init(CADUCEE, tmp_path / "data")
    empty = tmp_path / "mnt" / "store"
    use_store(inst, empty)
    line = refused(inst)
    assert f"has no {MARKER} but this database belongs to store {db_identity(inst)}" in line
    assert store_identity(empty) is None


def test_serve_refuses_a_database_without_identity_for_a_marked_store(tmp_path: Path) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    marked = store_identity(inst.directory / "store")
    with sqlite3.connect(inst.directory / "caducee.db") as conn:
        conn.execute("UPDATE storage_identity SET store_id = NULL")
    line = refused(inst)
    assert f"belongs to another database (store identity {marked})" in line


def test_an_instance_from_before_gets_its_identity_at_first_serve(tmp_path: Path) -> None:
    """Database and store made before the identity existed: neither side has one (as after the
    migration's upgrade). The first ``serve`` writes both; the next accepts them."""
    inst = Instance.init(CADUCEE, tmp_path / "data")
    (inst.directory / "store" / MARKER).unlink()
    with sqlite3.connect(inst.directory / "caducee.db") as conn:
        conn.execute("UPDATE storage_identity SET store_id = NULL")
    inst.start()
    assert inst.stop() == 0
    identity = db_identity(inst)
    assert identity and store_identity(inst.directory / "store") == identity
    inst.start()
    assert inst.stop() == 0
    assert db_identity(inst) == identity
