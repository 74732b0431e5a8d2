"""Which message store belongs to which database: one identifier on both sides, checked by ``serve``.

Several nodes share one database and one storage path. A node configured with another path (a typo,
a shared filesystem not mounted) would store message files the other nodes cannot read, and fail to
read theirs. ``caducee init`` writes one random identifier into the database (``storage_identity``)
and into the store (the file ``caducee-store-id`` at its root); ``caducee serve`` refuses to start,
with one line saying which side is which, when they differ or only one side has it.

An instance made before this existed has it on neither side: its first ``serve`` writes both. That
happens under the database row's lock (``FOR UPDATE`` on PostgreSQL, the write lock on SQLite), so
nodes starting together all agree on the first one's identifier. The file is durable (written,
fsync'ed, linked into place, directory fsync'ed) before the row commits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mailserver.db.models import Base, UTCDateTime, utcnow

if TYPE_CHECKING:
    from mailserver.runtime import Runtime

MARKER = "caducee-store-id"


class StorageIdentity(Base):
    """The single row (id 1) naming the store this database belongs to; NULL before adoption."""

    __tablename__ = "storage_identity"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    store_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class StorageMismatch(Exception):
    """The store and the database were not made together: already the one line the operator reads."""


def read_marker(root: Path) -> str | None:
    """The store's identifier, or None when the store has none (an empty or foreign directory)."""
    try:
        text = (root / MARKER).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageMismatch(f"cannot read the store's identity {root / MARKER}: {exc}") from None
    return text or None


def write_marker(root: Path, identifier: str) -> None:
    """Write the identifier durably; never replaces an existing marker (``link`` fails if one exists)."""
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f".{MARKER}.{uuid.uuid4().hex}"
    try:
        with open(temp, "x", encoding="ascii") as f:
            f.write(identifier + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(temp, root / MARKER)
    finally:
        temp.unlink(missing_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def ensure(rt: Runtime) -> str:
    """Check that the store and the database belong together, first writing the identity on both
    sides when neither has one; returns the identifier or raises StorageMismatch."""
    root = rt.blobs.root
    async with rt.db.write() as session:
        row = await session.get(StorageIdentity, 1, with_for_update=True)
        if row is None:  # the row the migration made was removed: start again from nothing
            row = StorageIdentity(id=1, store_id=None)
            session.add(row)
        on_disk = await asyncio.to_thread(read_marker, root)
        if row.store_id is None and on_disk is None:
            identifier = uuid.uuid4().hex
            await asyncio.to_thread(write_marker, root, identifier)
            row.store_id, row.created_at = identifier, utcnow()
            return identifier
        if row.store_id is None:
            raise StorageMismatch(
                f"the store {root} belongs to another database (store identity {on_disk}) and this "
                f"database has none: check [database] url, or [storage] path"
            )
        if on_disk is None:
            raise StorageMismatch(
                f"the store {root} has no {MARKER} but this database belongs to store {row.store_id}: "
                "check [storage] path (a shared filesystem not mounted?)"
            )
        if on_disk != row.store_id:
            raise StorageMismatch(
                f"the store {root} (identity {on_disk}) is not this database's (store {row.store_id}): "
                "every node must use the database and the storage path they were initialised with"
            )
        return on_disk
