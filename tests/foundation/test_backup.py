"""``caducee backup`` while mail is coming in, ``caducee restore`` into a new data directory (and, on
PostgreSQL, a new database), then the restored server must hold every message it acknowledged (250)
before the backup started: read back over IMAP. Real processes, real smtplib clients, real pg_dump."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.message
import json
import os
import smtplib
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from config.settings import load as load_settings
from mailserver import accounts, backup
from mailserver.db.models import Blob, Message
from mailserver.runtime import Runtime
from tests.conftest import PG_ADMIN, pg_admin
from tests.instance import (
    LARGE,
    MARTIN,
    SECRETARIAT,
    Instance,
    Load,
    subjects_in_inbox,
)

CADUCEE = str(Path(sys.executable).with_name("caducee"))


@pytest.fixture
def empty_pg_url(pg_available: None) -> Iterator[str]:
    """A second new, empty PostgreSQL database (the one to restore into)."""
    name = f"caducee_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def caducee(
    *args: str, config: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    head = [CADUCEE] + (["--config", str(config)] if config else [])
    return subprocess.run([*head, *args], input=stdin, capture_output=True, text=True, timeout=300)


def backup_under_load(inst: Instance, backup_dir: Path) -> tuple[set[str], set[str]]:
    """Start the load, back up while it runs; (acknowledged before the backup, acknowledged in all)."""
    inst.start()
    try:
        with Load(inst) as load:
            load.wait_for(20)
            before = load.snapshot()
            result = caducee("backup", str(backup_dir), config=inst.config)
            during = len(load.acked) - len(before)
            load.wait_for(len(load.acked) + 5)  # the load went on after the backup too
        errors = [r for r in inst.records() if r.get("level") == "error"]
        assert not load.errors, (load.errors, [e.get("exception", "")[-1500:] for e in errors])
        assert result.returncode == 0, result.stdout + result.stderr
        assert during > 0, "no message was acknowledged while the backup ran: the test proves nothing"
        return before, load.snapshot()
    finally:
        assert inst.stop() == 0


def check_manifest(backup_dir: Path, engine: str) -> None:
    manifest = json.loads((backup_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["engine"] == engine
    assert manifest["schema_revision"] and manifest["created_at"]
    paths = {f["path"] for f in manifest["files"]}
    assert "caducee.toml" in paths and any(p.startswith("store/") for p in paths)
    assert {"files/tls/chain.pem", "files/tls/key.pem"} <= paths
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])


def restored_instance(inst: Instance, restored: Path) -> Instance:
    return Instance(inst.caducee, restored, inst.passwords)


def test_sqlite_backup_under_smtp_load_restores_every_acknowledged_message(tmp_path: Path) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    key = inst.directory / "smime.key"
    key.write_bytes(b"\x01" * 32)  # the master key, as smime import makes it
    key.chmod(0o600)
    backup_dir = tmp_path / "backup"
    before, _ = backup_under_load(inst, backup_dir)
    check_manifest(backup_dir, "sqlite")
    assert "files/smime.key" in {
        f["path"] for f in json.loads((backup_dir / "manifest.json").read_text())["files"]
    }

    # refused: a data directory that is not empty; a backup whose file was altered
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    refused = caducee("restore", str(backup_dir), "--data-dir", str(taken))
    assert refused.returncode == 1 and "must be a new or empty directory" in refused.stderr, refused.stderr
    restored = tmp_path / "restored"
    result = caducee("restore", str(backup_dir), "--data-dir", str(restored))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (restored / "smime.key").read_bytes() == b"\x01" * 32
    assert (restored / "smime.key").stat().st_mode & 0o777 == 0o600

    new = restored_instance(inst, restored)
    new.start()
    try:
        found = subjects_in_inbox(new)
    finally:
        assert new.stop() == 0
    missing = before - found
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
    assert caducee("store", "check", config=new.config).stdout.count("0 missing file(s)") == 1


def test_restore_refuses_a_backup_that_does_not_match_its_checksums(tmp_path: Path) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    backup_dir = tmp_path / "backup"
    assert caducee("backup", str(backup_dir), config=inst.config).returncode == 0
    again = caducee("backup", str(backup_dir), config=inst.config)
    assert again.returncode == 1 and "must be a new or empty directory" in again.stderr
    db = backup_dir / "database" / "caducee.db"
    db.write_bytes(db.read_bytes() + b"\0")
    result = caducee("restore", str(backup_dir), "--data-dir", str(tmp_path / "restored"))
    assert result.returncode == 1, result.stdout
    assert result.stderr == f"caducee: {backup_dir}: database/caducee.db does not match its checksum\n"
    assert not (tmp_path / "restored").exists()
    (backup_dir / "manifest.json").unlink()
    result = caducee("restore", str(backup_dir), "--data-dir", str(tmp_path / "restored"))
    assert result.returncode == 1 and "no manifest.json" in result.stderr


@pytest.mark.postgres
def test_postgresql_backup_under_smtp_load_restores_into_a_new_database(
    tmp_path: Path, pg_url: str, empty_pg_url: str
) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    inst.use_postgresql(pg_url)
    backup_dir = tmp_path / "backup"
    before, _ = backup_under_load(inst, backup_dir)
    check_manifest(backup_dir, "postgresql")

    refused = caducee(
        "restore", str(backup_dir), "--data-dir", str(tmp_path / "r0"), "--database-url", pg_url
    )
    assert refused.returncode == 1 and "the database is not empty" in refused.stderr, refused.stderr
    restored = tmp_path / "restored"
    result = caducee("restore", str(backup_dir), "--data-dir", str(restored), "--database-url", empty_pg_url)
    assert result.returncode == 0, result.stdout + result.stderr
    new = restored_instance(inst, restored)
    new.start()
    try:
        found = subjects_in_inbox(new)
    finally:
        assert new.stop() == 0
    missing = before - found
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"


async def test_a_file_expunged_during_the_copy_makes_a_new_snapshot(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the snapshot and the copy of its files, a message is expunged and its file removed (the
    store's real path): the backup takes a new snapshot, which no longer names that file, and the copy
    holds exactly the files its database references."""
    mb = await accounts.add_mailbox(runtime, "dr.martin@a.mssante.test", "PER", rpps="10000000009")
    for i in range(3):
        data = f"Subject: gros {i}\r\n\r\n".encode() + b"x" * LARGE
        await runtime.store.deliver(await runtime.store.prepare(data), [mb.id])
    inbox = await runtime.store.folder(mb.id, "INBOX")
    assert runtime.settings.source is not None
    runtime.settings.source.write_text("", encoding="utf-8")
    rounds: list[set[str]] = []
    copy = backup._copy_files

    def racing(roots: dict[str, Path], dest: Path, paths: set[str]) -> set[str]:
        rounds.append(set(paths))
        if len(rounds) == 1:  # the server expunges the first message right after the snapshot
            asyncio.run_coroutine_threadsafe(runtime.store.expunge(inbox.id, [1]), loop).result(30)
        return copy(roots, dest, paths)

    loop = asyncio.get_running_loop()
    async with runtime.db.write() as session:
        await session.execute(update(Message).where(Message.folder_id == inbox.id).values(flags="\\Deleted"))
    monkeypatch.setattr(backup, "_copy_files", racing)
    manifest = await backup.backup(runtime.settings, tmp_path / "copy")
    assert len(rounds) == 2 and len(rounds[0]) == 3 and rounds[1] == set()  # only the lacking ones
    stored = {f["path"] for f in manifest.files if f["path"].startswith("store/")}
    assert len(stored) == 2 and stored < rounds[0]
    async with runtime.db.read() as session:
        live = set((await session.execute(select(Blob.path).where(Blob.path.is_not(None)))).scalars())
    assert stored == {f"store/{path}" for path in live}
    if runtime.db.kind == "sqlite":  # and the copy's own database names exactly these files
        with contextlib.closing(sqlite3.connect(tmp_path / "copy" / "database" / "caducee.db")) as db:
            assert {r[0] for r in db.execute(backup.FILES_SQL)} == stored


def test_restored_configuration_names_the_restored_files(tmp_path: Path) -> None:
    """A file the configuration names by an absolute path inside the data directory is restored in the
    new one, and the restored configuration names it there (not in the old directory)."""
    inst = Instance.init(CADUCEE, tmp_path / "data")
    key = inst.directory / "smime.key"
    key.write_bytes(b"\x02" * 32)
    key.chmod(0o600)
    with inst.config.open("a", encoding="utf-8") as f:
        f.write(f'\n[smime]\nkey_file = "{key}"\n')
    assert caducee("backup", str(tmp_path / "copy"), config=inst.config).returncode == 0
    restored = tmp_path / "restored"
    assert caducee("restore", str(tmp_path / "copy"), "--data-dir", str(restored)).returncode == 0
    settings = load_settings(restored / "caducee.toml")
    assert settings.smime.key_file == str(restored / "smime.key")
    assert settings.tls.cert == str(restored / "tls" / "chain.pem")
    assert settings.storage.path == str(restored / "store")
    assert settings.database.url == f"sqlite+aiosqlite:///{restored / 'caducee.db'}"


def test_revocation_lists_are_in_the_backup(tmp_path: Path) -> None:
    """The CRL files of ``[tls] crl`` and ``[auth] client_crl`` are configuration files a restore needs."""
    for name in ("peers.crl", "clients.crl"):
        (tmp_path / name).write_bytes(b"crl")
    config = tmp_path / "caducee.toml"
    config.write_text('[tls]\ncrl = ["peers.crl"]\n[auth]\nclient_crl = ["clients.crl"]\n')
    named = dict(backup._config_files(load_settings(config)))
    assert named["tls.crl[0]"] == tmp_path / "peers.crl"
    assert named["auth.client_crl[0]"] == tmp_path / "clients.crl"


def test_large_files_are_in_the_backup_and_download_after_restore(tmp_path: Path) -> None:
    """A file sent by link lives under ``[large_files] path``, not in the store: the backup copies it
    (listed with its checksum), the restore puts it where the restored configuration says, and the
    link still downloads the same bytes from the restored server."""
    inst = Instance.init(CADUCEE, tmp_path / "data", '\n[large_files]\nthreshold = "1MiB"\n')
    video = os.urandom(2 * 1024 * 1024)
    inst.start()
    try:
        msg = email.message.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = MARTIN, SECRETARIAT, "Vidéo"
        msg.set_content("Ci-joint.\n")
        msg.add_attachment(video, maintype="video", subtype="mp4", filename="video.mp4")
        with smtplib.SMTP_SSL("127.0.0.1", inst.ports["submissions"], context=inst.tls(), timeout=30) as s:
            s.login(MARTIN, inst.passwords[MARTIN])
            s.send_message(msg)
        result = caducee("backup", str(tmp_path / "copy"), config=inst.config)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        assert inst.stop() == 0
    for place in (tmp_path / "copy", inst.directory):  # health mail and hashes: the operator's alone
        exposed = [p for p in (place, *place.rglob("*")) if p.stat().st_mode & 0o077]
        assert not exposed, [(str(p), oct(p.stat().st_mode)) for p in exposed]
    manifest = json.loads((tmp_path / "copy" / "manifest.json").read_text(encoding="utf-8"))
    [kept] = [f for f in manifest["files"] if f["path"].startswith("large_files/")]
    assert kept["size"] == len(video)
    restored = tmp_path / "restored"
    result = caducee("restore", str(tmp_path / "copy"), "--data-dir", str(restored))
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_settings(restored / "caducee.toml").large_files.path == str(restored / "large_files")
    new = restored_instance(inst, restored)
    new.start()
    try:
        file_id = kept["path"].rsplit("/", 1)[1]
        url = f"http://127.0.0.1:{new.ports['portal']}/fichiers/{file_id}/telecharger"
        token = base64.b64encode(f"{SECRETARIAT}:{inst.passwords[SECRETARIAT]}".encode()).decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.read() == video
    finally:
        assert new.stop() == 0
