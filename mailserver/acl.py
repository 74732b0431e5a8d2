"""RFC 4314 rights as plain functions: which letters an operation needs, and whether rights grant it.

One place for the rule, used by every IMAP command on a shared (ORG/CAB) mailbox and by SETACL; the
owner of a mailbox holds every right (``ACL_RIGHTS``). Letters follow RFC 4314 §4 with the
``RIGHTS=texk`` split: ``t`` \\Deleted, ``e`` EXPUNGE, ``k`` create, ``x`` delete.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailserver.db.models import ACL_RIGHTS

LOOKUP = "l"  # without it the mailbox is not shown, and is answered as if it did not exist
READ = "r"  # SELECT, EXAMINE, STATUS, FETCH, SEARCH, COPY from
SEEN = "s"  # keep \Seen (STORE, APPEND, and the implicit \Seen of FETCH BODY[])
WRITE = "w"  # every other flag and keyword
INSERT = "i"  # APPEND, COPY/MOVE into
POST = "p"  # send as the mailbox (submission envelope and header From, the sending API)
CREATE = "k"  # CREATE, RENAME to
DELETE = "x"  # DELETE, RENAME from
DELETED = "t"  # \Deleted
EXPUNGE = "e"  # EXPUNGE, CLOSE's expunge, MOVE from (with t)
ADMIN = "a"  # GETACL, SETACL, DELETEACL, LISTRIGHTS
OWNER = ACL_RIGHTS
# RFC 4314 §2.1.1: the obsolete RFC 2086 rights, as a RIGHTS=texk server reads them in SETACL.
_OBSOLETE = {"c": CREATE, "d": DELETE + DELETED + EXPUNGE}


def missing(rights: str, needed: str) -> str:
    """The letters of ``needed`` that ``rights`` lack (empty: allowed)."""
    return "".join(r for r in needed if r not in rights)


def flag_rights(flags: Iterable[str]) -> str:
    """What changing these flags needs (RFC 4314 §4 STORE): s for \\Seen, t for \\Deleted, w else."""
    needed = set()
    for flag in flags:
        lowered = flag.lower()
        needed.add(SEEN if lowered == "\\seen" else DELETED if lowered == "\\deleted" else WRITE)
    return "".join(r for r in ACL_RIGHTS if r in needed)


def changes_anything(rights: str) -> bool:
    """RFC 4314 §4 SELECT: READ-WRITE only with ``i``, ``e`` or a flag right; READ-ONLY otherwise."""
    return any(r in rights for r in (INSERT, EXPUNGE, SEEN, WRITE, DELETED))


def allowed_flags(rights: str, flags: Iterable[str]) -> list[str]:
    """The flags an APPEND or COPY may keep: RFC 4314 §4 drops those the rights do not allow."""
    return [f for f in flags if not missing(rights, flag_rights([f]))]


def canonical(rights: str) -> str:
    """Rights in ``ACL_RIGHTS`` order, obsolete ``c``/``d`` read as RFC 4314 §2.1.1 says."""
    expanded = "".join(_OBSOLETE.get(r, r) for r in rights)
    return "".join(r for r in ACL_RIGHTS if r in expanded) + "".join(
        sorted({r for r in expanded if r not in ACL_RIGHTS})
    )


def modify(current: str, change: str) -> str:
    """SETACL ``+rights`` adds, ``-rights`` removes, plain ``rights`` replaces (RFC 4314 §3.1)."""
    if change.startswith("+"):
        return canonical(current + change[1:])
    if change.startswith("-"):
        removed = canonical(change[1:])
        return "".join(r for r in current if r not in removed)
    return canonical(change)
