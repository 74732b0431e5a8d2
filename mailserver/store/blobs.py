"""Write-once message files under ``storage.path``.

Invariants:
- A blob file is complete and fsync'ed, and its directory entry fsync'ed, before ``write`` returns,
  so a database row can only ever point to a file that survives a crash.
- Files are laid out as ``ab/abcdef…`` (256 directories); older stores may also hold ``ab/cd/…`` paths,
  which are read the same way (the row keeps the relative path).
- Files are named by a random identifier, never by content: a blob being deleted (refcount reached
  zero) can never be the one a concurrent delivery is about to reference.
- A crash between ``write`` and the commit of the row leaves an orphan file, never a dangling row;
  ``orphans()`` lists such files for ``caducee store gc``.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WrittenBlob:
    path: str | None  # None: the message is kept in its database row, not as a file
    size: int
    sha256: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unobserved(operation: str, seconds: float) -> None:
    """A store outside a runtime: its timings go nowhere."""


class BlobStore:
    """Files of the message store; blocking I/O, so callers run these methods in a thread."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # Told each file operation and its duration (the runtime points it at its metrics).
        self.observe: Callable[[str, float], None] = _unobserved

    def ensure(self) -> None:
        """Create the store's directories (idempotent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        _fsync_dir(self.root)

    def write(self, data: bytes) -> WrittenBlob:
        """Write ``data`` durably and return its relative path; the caller then commits the row.

        The file is created under its final name (exclusive create): a crash mid-write leaves an orphan
        that no row references, never a row pointing to a partial file, so no rename is needed. One
        level of 256 directories keeps directory creation (and its fsyncs) off the common path.
        """
        started = time.perf_counter()
        name = uuid.uuid4().hex
        rel = f"{name[:2]}/{name}"
        final = self.root / rel
        parent = final.parent
        if not parent.is_dir():
            parent.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        with open(final, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(parent)
        self.observe("write", time.perf_counter() - started)
        return WrittenBlob(rel, len(data), hashlib.sha256(data).hexdigest())

    def read(self, rel: str) -> bytes:
        started = time.perf_counter()
        data = (self.root / rel).read_bytes()
        self.observe("read", time.perf_counter() - started)
        return data

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def remove(self, rel: str) -> None:
        """Delete a blob whose last reference is committed away; a missing file is not an error."""
        try:
            os.unlink(self.root / rel)
        except FileNotFoundError:
            return

    def all_paths(self) -> Iterator[str]:
        """Every blob file's relative path (for garbage collection and checks): the files in the
        store's directories; those at its root are not blobs (the store's identity marker)."""
        for dirpath, _dirs, files in os.walk(self.root):
            d = Path(dirpath)
            if d == self.root:
                continue
            for f in files:
                yield str((d / f).relative_to(self.root))
