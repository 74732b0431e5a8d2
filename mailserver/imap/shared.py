"""The RFC 2342 shared namespace: ``[imap] shared_prefix`` + ``<ORG address>/`` + that ORG's folders.

Every command that names a folder resolves it here into a :class:`Target` (whose mailbox, which
folder, with what rights) and checks the rights it needs with :func:`need`, i.e. with the plain
functions of :mod:`mailserver.acl`. A shared mailbox the person lacks ``l`` on answers exactly as a
folder that does not exist (RFC 4314 §4), so they do not learn it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailserver import accounts, acl
from mailserver.imap.base import Fail
from mailserver.store.store import SEPARATOR, Viewer, normalize_folder

if TYPE_CHECKING:
    from mailserver.imap.session import Session

NO_SUCH = "no such mailbox"


@dataclass(frozen=True, slots=True)
class Target:
    """A folder as a command names it: ``folder`` in mailbox ``mailbox_id``, shown as ``prefix +
    folder``; ``shared`` holds the ORG's address for a shared folder, "" for one's own."""

    mailbox_id: int
    folder: str
    rights: str
    prefix: str = ""
    shared: str = ""

    @property
    def display(self) -> str:
        return self.prefix + normalize_folder(self.folder)


def prefix(s: Session) -> str:
    """The shared namespace prefix, ending with the hierarchy delimiter."""
    value = s.rt.settings.imap.shared_prefix
    return value if value.endswith(SEPARATOR) else value + SEPARATOR


async def visible(s: Session) -> list[accounts.Access]:
    """The shared mailboxes this person may see (``l``)."""
    assert s.mailbox_id is not None
    return [a for a in await accounts.memberships_of(s.rt, s.mailbox_id) if acl.LOOKUP in a.rights]


async def own_rights(s: Session) -> str:
    """Every right on one's own mailbox; on a shared one opened through a membership (a login with
    the ORG as authorization identity), that membership's rights."""
    assert s.mailbox_id is not None
    if not s.members:
        return acl.OWNER
    return await accounts.rights_through(s.rt, s.mailbox_id, s.members)


async def resolve(s: Session, name: str) -> Target:
    """Where ``name`` lives; a shared name without ``l`` (or no membership) is ``NO [NONEXISTENT]``."""
    assert s.mailbox_id is not None
    root = prefix(s)
    if not name.startswith(root):
        return Target(s.mailbox_id, name, await own_rights(s))
    org, sep, folder = name[len(root) :].partition(SEPARATOR)
    for access in await visible(s):
        if access.address.lower() == org.lower():
            if not sep or not folder.strip(SEPARATOR):
                raise Fail("NO", "the shared mailbox itself is not a folder, its folders are", "NONEXISTENT")
            home = root + access.address + SEPARATOR
            return Target(access.mailbox_id, folder, access.rights, home, access.address)
    raise Fail("NO", NO_SUCH, "NONEXISTENT")


def viewer(s: Session, mailbox_id: int) -> Viewer | None:
    """Whose ``[imap] private_flags`` apply in ``mailbox_id``'s folders: the member's own, in a shared
    mailbox opened in the shared namespace or through a membership (a token naming the ORG: the person
    behind it, by their first personal mailbox); None, the message's own, in one's own mailbox and for
    the ORG's own login (APP-style credentials keep the ORG's \\Seen)."""
    private = frozenset(s.rt.settings.imap.private_flags)
    if not private or s.mailbox_id is None:
        return None
    if mailbox_id != s.mailbox_id:
        return Viewer(s.mailbox_id, private)
    return Viewer(min(s.members), private) if s.members else None


def need(target: Target, rights: str, what: str) -> None:
    """Refuse ``what`` with ``NO [NOPERM]`` unless the target's rights hold every letter of ``rights``."""
    lacking = acl.missing(target.rights, rights)
    if lacking:
        raise Fail("NO", f"{what} needs the right(s) {lacking} on {target.display}", "NOPERM")
