"""``caducee backup`` / ``caducee restore``: a consistent copy of a running server's data.

What a copy holds (``manifest.json`` lists every file with its size and SHA-256, the schema revision,
the engine and the time):

- the database: on SQLite through the online backup API (``sqlite3.Connection.backup``: one read
  transaction, so one consistent state however busy the server is), on PostgreSQL through
  ``pg_dump --format=custom`` run on a snapshot exported by a REPEATABLE READ transaction
  (``pg_export_snapshot``), the same snapshot from which the list of message files is read;
- the message files that snapshot references, and the large files (``[large_files] path``) its links
  name. Files are write-once and fsync'ed before the row that
  names them commits, so every file of the snapshot exists when it is taken; one deleted since (its
  last message expunged) makes the copy take a new snapshot and copy what it lacks, until a snapshot's
  files are all there;
- the configuration file, the S/MIME master key and every other file the configuration names (TLS
  certificate and key, PKI bundle, trust list): inside the data directory at their place; outside it
  under ``external/``, which restore does not put back on its own (it says where they were).

Restore checks every checksum before writing anything, and writes only into an empty (or new) data
directory and, on PostgreSQL, an empty database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from config.settings import Settings
from mailserver.store import identity

MANIFEST = "manifest.json"
FORMAT = 1
DATABASE_SQLITE = "database/caducee.db"
DATABASE_PG = "database/caducee.dump"
STORE = "store"
LARGE = "large_files"
# The files a snapshot references, each as "<STORE or LARGE>/<path under that root>".
FILES_SQL = (
    "SELECT 'store/' || path FROM blob WHERE path IS NOT NULL"
    " UNION ALL SELECT 'large_files/' || substr(id, 1, 2) || '/' || id FROM large_file"
    " WHERE state <> 'uploading'"
)
MAX_ROUNDS = 10  # snapshots taken while the server keeps expunging; each round copies only what is new


class BackupError(Exception):
    """A backup or restore that cannot be done, phrased as the one line the operator reads."""


@dataclass
class Manifest:
    created_at: str
    engine: str
    schema_revision: list[str]
    config: str  # the configuration file's name in the copy
    files: list[dict[str, Any]] = field(default_factory=list)
    external: list[dict[str, str]] = field(default_factory=list)  # copy path -> original absolute path
    placed: dict[str, str] = field(default_factory=dict)  # copy path -> path relative to the data dir
    settings: dict[str, str] = field(default_factory=dict)  # "tls.cert" -> its path relative to it

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "created_at": self.created_at,
            "engine": self.engine,
            "schema_revision": self.schema_revision,
            "config": self.config,
            "files": self.files,
            "external": self.external,
            "placed": self.placed,
            "settings": self.settings,
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_copy(src: Path, dst: Path) -> None:
    """Copy with the source's permissions (the master key and TLS key stay 0600), made durable."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        os.fchmod(fout.fileno(), os.stat(fin.fileno()).st_mode & 0o777)
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _libpq_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite+aiosqlite:///"))


def _inside(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` if it lies under it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return None


def _config_files(settings: Settings) -> list[tuple[str, Path]]:
    """(setting name, path) of every existing file the configuration names, besides database and store."""
    named = [
        ("tls.cert", settings.tls.cert),
        ("tls.key", settings.tls.key),
        ("tls.peer_ca", settings.tls.peer_ca),
        ("trust.list", settings.trust.list),
        ("smime.key_file", settings.smime.key_file),
        ("smime.ca", settings.smime.ca),
        *((f"smime.crl[{i}]", p) for i, p in enumerate(settings.smime.crl)),
        *((f"tls.crl[{i}]", p) for i, p in enumerate(settings.tls.crl)),
        *((f"auth.client_crl[{i}]", p) for i, p in enumerate(settings.auth.client_crl)),
    ]
    return [(key, Path(p)) for key, p in named if p and Path(p).is_file()]


def _prepare_target(target: Path, what: str) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target}: {what} must be a new or empty directory")
    target.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------- backup


def _fresh(out: Path) -> None:
    """No file at ``out`` (a previous round's copy), its directory made."""
    out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)


def _sqlite_snapshot(db: Path, out: Path) -> tuple[set[str], list[str]]:
    """Copy the live database into ``out`` (one consistent state) and read its file list and revision."""
    _fresh(out)
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)  # all pages in one step: the source's read transaction sees one state
        dst.execute("PRAGMA journal_mode=DELETE")
        if dst.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise BackupError(f"{db}: the copy of the database does not pass SQLite's quick_check")
        paths = {r[0] for r in dst.execute(FILES_SQL)}
        revision = sorted(r[0] for r in dst.execute("SELECT version_num FROM alembic_version"))
        dst.commit()
    finally:
        dst.close()
        src.close()
    return paths, revision


async def _pg_snapshot(url: str, out: Path) -> tuple[set[str], list[str]]:
    """``pg_dump`` of one exported snapshot, and the file list and revision read in that snapshot."""
    await asyncio.to_thread(_fresh, out)
    dsn = _libpq_dsn(url)
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            paths = {r[0] for r in await conn.fetch(FILES_SQL)}
            revision = sorted(r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version"))
            proc = await asyncio.create_subprocess_exec(
                "pg_dump",
                "--format=custom",
                f"--snapshot={snapshot}",
                f"--file={out}",
                f"--dbname={dsn}",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise BackupError(f"pg_dump failed: {err.decode(errors='replace').strip()}")
    finally:
        await conn.close()
    return paths, revision


async def backup(settings: Settings, target: Path) -> Manifest:
    """Copy the data of a (possibly running) server into ``target``, a new or empty directory."""
    if settings.source is None:
        raise BackupError("backup needs the configuration file (--config)")
    target = await asyncio.to_thread(target.resolve)
    try:
        await asyncio.to_thread(_prepare_target, target, "the backup directory")
    except OSError as exc:
        raise BackupError(f"{target}: {exc.strerror}") from None
    url = settings.database.url
    engine = "sqlite" if url.startswith("sqlite") else "postgresql"
    roots = {STORE: Path(settings.storage.path), LARGE: Path(settings.large_files.path)}
    database = DATABASE_SQLITE if engine == "sqlite" else DATABASE_PG
    copied: set[str] = set()
    for _round in range(MAX_ROUNDS):
        if engine == "sqlite":
            paths, revision = await asyncio.to_thread(_sqlite_snapshot, _sqlite_path(url), target / database)
        else:
            paths, revision = await _pg_snapshot(url, target / database)
        vanished = await asyncio.to_thread(_copy_files, roots, target, paths - copied)
        copied |= paths - vanished
        if not vanished:
            break
    else:
        raise BackupError(f"message files kept vanishing during {MAX_ROUNDS} snapshots: try again")
    await asyncio.to_thread(_drop_unreferenced, target, copied - paths)
    await asyncio.to_thread(_copy_marker, roots[STORE], target / STORE)
    manifest = Manifest(dt.datetime.now(dt.UTC).isoformat(), engine, revision, "caducee.toml")
    await asyncio.to_thread(_copy_config, settings, target, manifest, engine)
    await asyncio.to_thread(_write_manifest, target, manifest)
    return manifest


def _copy_files(roots: dict[str, Path], dest: Path, paths: set[str]) -> set[str]:
    """Copy each message or large file; return those that no longer exist (deleted after the snapshot)."""
    vanished = set()
    for rel in paths:
        kind, _, under = rel.partition("/")
        try:
            _fsync_copy(roots[kind] / under, dest / rel)
        except FileNotFoundError:
            vanished.add(rel)
    return vanished


def _copy_marker(root: Path, dest: Path) -> None:
    """The store's identity file: the restored database names this store, so ``serve`` must find it."""
    if (root / identity.MARKER).exists():
        _fsync_copy(root / identity.MARKER, dest / identity.MARKER)


def _drop_unreferenced(dest: Path, paths: set[str]) -> None:
    for rel in paths:
        (dest / rel).unlink(missing_ok=True)


def _copy_config(settings: Settings, target: Path, manifest: Manifest, engine: str) -> None:
    assert settings.source is not None
    data_dir = settings.source.parent
    _fsync_copy(settings.source, target / manifest.config)
    if engine == "sqlite":
        db_rel = _inside(_sqlite_path(settings.database.url), data_dir)
        manifest.placed[DATABASE_SQLITE] = db_rel or "caducee.db"
    manifest.placed[STORE] = _inside(Path(settings.storage.path), data_dir) or "store"
    manifest.placed[LARGE] = _inside(Path(settings.large_files.path), data_dir) or LARGE
    for key, path in _config_files(settings):
        rel = _inside(path, data_dir)
        if rel is not None:
            copy = f"files/{rel}"
            manifest.placed[copy] = rel
            if "[" not in key:
                manifest.settings[key] = rel
        else:
            copy = f"external/{key}/{path.name}"
            manifest.external.append({"copy": copy, "setting": key, "path": str(path)})
        _fsync_copy(path, target / copy)


def _write_manifest(target: Path, manifest: Manifest) -> None:
    """List every file with its checksum, then write the manifest last: a copy without one is incomplete."""
    for dirpath, _dirs, files in os.walk(target):
        for name in files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(target))
            manifest.files.append({"path": rel, "size": p.stat().st_size, "sha256": _sha256(p)})
    manifest.files.sort(key=lambda f: f["path"])
    tmp = target / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest.as_dict(), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target / MANIFEST)


# ---------------------------------------------------------------------------------------------- restore


def read_manifest(source: Path) -> dict[str, Any]:
    try:
        data = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{source}: no {MANIFEST} (not a backup, or an incomplete one)") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source}/{MANIFEST}: unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{source}/{MANIFEST}: not a backup manifest of format {FORMAT}")
    return data


def verify(source: Path, manifest: dict[str, Any]) -> None:
    """Every listed file is present with its size and SHA-256 (before anything is written)."""
    for entry in manifest["files"]:
        p = source / entry["path"]
        if not p.is_file():
            raise BackupError(f"{source}: {entry['path']} is missing")
        if p.stat().st_size != entry["size"] or _sha256(p) != entry["sha256"]:
            raise BackupError(f"{source}: {entry['path']} does not match its checksum")


def _set_key(text: str, section: str, key: str, value: str) -> str:
    """Set ``key = "value"`` in ``[section]`` of a TOML text, keeping the rest (and its comments)."""
    line = f"{key} = {json.dumps(value)}"
    header = re.search(rf"(?m)^\[{re.escape(section)}\][^\n]*\n", text)
    if header is None:
        return text.rstrip("\n") + f"\n\n[{section}]\n{line}\n"
    start = header.end()
    end_match = re.search(r"(?m)^\[", text[start:])
    end = start + end_match.start() if end_match else len(text)
    body, n = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", line, text[start:end], count=1)
    if not n:
        body = line + "\n" + body
    return text[:start] + body + text[end:]


async def _pg_restore(dump: Path, url: str) -> None:
    dsn = _libpq_dsn(url)
    try:
        conn = await asyncpg.connect(dsn, timeout=30)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BackupError(f"cannot reach the database {url}: {exc}") from None
    try:
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    if tables:
        raise BackupError(f"{url}: the database is not empty ({tables} tables): restore needs a new one")
    proc = await asyncio.create_subprocess_exec(
        "pg_restore",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        f"--dbname={dsn}",
        str(dump),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BackupError(f"pg_restore failed: {err.decode(errors='replace').strip()}")


async def restore(source: Path, target: Path, database_url: str | None = None) -> list[str]:
    """Restore the backup in ``source`` into the empty data directory ``target``; PostgreSQL needs
    ``database_url``, a new, empty database. Returns notes for the operator (external files)."""
    manifest = await asyncio.to_thread(read_manifest, source)
    await asyncio.to_thread(verify, source, manifest)
    engine = manifest["engine"]
    if engine == "postgresql" and not database_url:
        raise BackupError("a PostgreSQL backup: name a new, empty database with --database-url")
    if engine == "sqlite" and database_url:
        raise BackupError("a SQLite backup is restored as a file: no --database-url")
    if database_url and not database_url.startswith("postgresql+asyncpg://"):
        raise BackupError(f"--database-url: expected postgresql+asyncpg://…, got {database_url!r}")
    try:
        await asyncio.to_thread(_prepare_target, target, "the data directory to restore into")
    except OSError as exc:
        raise BackupError(f"{target}: {exc.strerror}") from None
    if engine == "postgresql":
        assert database_url is not None
        await _pg_restore(source / DATABASE_PG, database_url)
    return await asyncio.to_thread(_place_files, source, target, manifest, database_url)


def _place_files(source: Path, target: Path, manifest: dict[str, Any], database_url: str | None) -> list[str]:
    placed: dict[str, str] = manifest["placed"]
    store_rel = placed[STORE]
    for entry in manifest["files"]:
        rel = entry["path"]
        if rel in (MANIFEST, DATABASE_PG, manifest["config"]) or rel.startswith("external/"):
            continue
        kind, _, under = rel.partition("/")
        if kind in (STORE, LARGE) and kind in placed:
            dest = target / placed[kind] / under
        else:
            dest = target / placed[rel]
        _fsync_copy(source / rel, dest)
    (target / store_rel).mkdir(parents=True, exist_ok=True)
    text = (source / manifest["config"]).read_text(encoding="utf-8")
    text = _set_key(text, "storage", "path", store_rel)
    if LARGE in placed:
        text = _set_key(text, "large_files", "path", placed[LARGE])
    for key, rel in manifest.get("settings", {}).items():  # relative: an absolute path names the old place
        section, _, name = key.partition(".")
        text = _set_key(text, section, name, rel)
    if database_url:
        text = _set_key(text, "database", "url", database_url)
    else:
        text = _set_key(text, "database", "url", "sqlite+aiosqlite:///" + placed[DATABASE_SQLITE])
    config = target / "caducee.toml"
    config.write_text(text, encoding="utf-8")
    notes = [
        f"{e['setting']} was {e['path']}, outside the data directory: its copy is {source / e['copy']}"
        for e in manifest["external"]
    ]
    return notes
