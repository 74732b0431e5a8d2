"""RFC 4314 ACL commands: GETACL, SETACL, DELETEACL, LISTRIGHTS, MYRIGHTS (``RIGHTS=texk``).

The access control list of a folder is its mailbox's: the owner holds every right, and the members
of an ORG/CAB mailbox hold what their membership says (``mailbox member add``). SETACL and
DELETEACL need ``a`` and edit those memberships (audited with the session's user as actor); a
personal mailbox has no members, so its list cannot be changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver import accounts, acl
from mailserver.accounts import AccountError
from mailserver.db.models import ACL_RIGHTS, SHARED_TYPES
from mailserver.imap import shared
from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import DeleteAcl, GetAcl, ListRights, MyRights, SetAcl

if TYPE_CHECKING:
    from mailserver.imap.session import Session


def _owner(s: Session, target: shared.Target) -> str:
    return target.shared or s.address


async def _members(s: Session, target: shared.Target) -> list[accounts.Member]:
    owner = await accounts.get_mailbox(s.rt, _owner(s, target))
    return await accounts.list_members(s.rt, owner.address) if owner.type in SHARED_TYPES else []


async def _target(s: Session, mailbox: str, rights: str, what: str) -> shared.Target:
    """The folder's mailbox, its existence checked (NONEXISTENT as for any command), and ``rights``."""
    target = await shared.resolve(s, mailbox)
    await s.rt.store.folder(target.mailbox_id, target.folder)
    shared.need(target, rights, what)
    return target


@command("GETACL", State.AUTH_OR_SELECTED, ("ACL", "RIGHTS=texk"))
async def getacl(s: Session, tag: str, cmd: GetAcl) -> Done:
    target = await _target(s, cmd.mailbox, acl.ADMIN, "GETACL")
    entries = [(_owner(s, target), ACL_RIGHTS), *((m.member, m.rights) for m in await _members(s, target))]
    s.send(enc.acl(cmd.mailbox, entries, utf8=s.utf8))
    return Done("GETACL completed")


async def _set(s: Session, target: shared.Target, identifier: str, rights: str) -> None:
    """Give ``identifier`` exactly ``rights`` on the target's mailbox (none: end the membership)."""
    owner = _owner(s, target)
    if identifier.lower() == owner.lower():
        raise Fail("NO", "the owner's rights cannot be changed", "CANNOT")
    try:
        if rights:
            await accounts.add_member(s.rt, owner, identifier, rights, actor=s.address, remote=s.remote)
        elif identifier.lower() in {m.member.lower() for m in await _members(s, target)}:
            await accounts.remove_member(s.rt, owner, identifier, actor=s.address, remote=s.remote)
    except AccountError as exc:
        raise Fail("NO", str(exc), "CANNOT") from None


@command("SETACL", State.AUTH_OR_SELECTED)
async def setacl(s: Session, tag: str, cmd: SetAcl) -> Done:
    target = await _target(s, cmd.mailbox, acl.ADMIN, "SETACL")
    current = {m.member.lower(): m.rights for m in await _members(s, target)}.get(cmd.identifier.lower(), "")
    rights = acl.modify(current, cmd.rights)
    unknown = acl.missing(ACL_RIGHTS, rights)
    if unknown:
        raise Fail("BAD", f"unknown right(s) {unknown}: rights are letters of {ACL_RIGHTS}")
    await _set(s, target, cmd.identifier, rights)
    return Done("SETACL completed")


@command("DELETEACL", State.AUTH_OR_SELECTED)
async def deleteacl(s: Session, tag: str, cmd: DeleteAcl) -> Done:
    target = await _target(s, cmd.mailbox, acl.ADMIN, "DELETEACL")
    await _set(s, target, cmd.identifier, "")
    return Done("DELETEACL completed")


@command("LISTRIGHTS", State.AUTH_OR_SELECTED)
async def listrights(s: Session, tag: str, cmd: ListRights) -> Done:
    """RFC 4314 §3.4: nothing is granted without asking, and each right may be granted on its own;
    the owner always holds them all."""
    target = await _target(s, cmd.mailbox, acl.ADMIN, "LISTRIGHTS")
    if cmd.identifier.lower() == _owner(s, target).lower():
        s.send(enc.listrights(cmd.mailbox, cmd.identifier, ACL_RIGHTS, [], utf8=s.utf8))
    else:
        s.send(enc.listrights(cmd.mailbox, cmd.identifier, "", list(ACL_RIGHTS), utf8=s.utf8))
    return Done("LISTRIGHTS completed")


@command("MYRIGHTS", State.AUTH_OR_SELECTED)
async def myrights(s: Session, tag: str, cmd: MyRights) -> Done:
    target = await _target(s, cmd.mailbox, "", "MYRIGHTS")
    s.send(enc.myrights(cmd.mailbox, target.rights, utf8=s.utf8))
    return Done("MYRIGHTS completed")
