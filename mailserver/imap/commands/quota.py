"""QUOTA (RFC 9208): one quota root, ``""``, covering the whole mailbox.

STORAGE is reported in KiB (RFC 9208 §5.1, rounded up) and MESSAGE in messages; a limit of 0 means
none, so that resource is left out. Limits are the operator's business: SETQUOTA is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver.imap.base import Done, Fail, State, command
from mailserver.imap.protocol import encoder as enc
from mailserver.imap.protocol.commands import GetQuota, GetQuotaRoot, SetQuota

if TYPE_CHECKING:
    from mailserver.imap.session import Session

ROOT = ""


async def _send_quota(s: Session) -> None:
    assert s.mailbox_id is not None
    usage, limits = await s.rt.store.usage(s.mailbox_id)
    resources = []
    if limits.storage:
        resources.append(("STORAGE", -(-usage.bytes // 1024), limits.storage // 1024))
    if limits.messages:
        resources.append(("MESSAGE", usage.messages, limits.messages))
    s.send(enc.quota(ROOT, resources))


@command("GETQUOTA", State.AUTH_OR_SELECTED, ("QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"))
async def getquota(s: Session, tag: str, cmd: GetQuota) -> Done:
    if cmd.root != ROOT:
        raise Fail("NO", "no such quota root", "NONEXISTENT")
    await _send_quota(s)
    return Done("GETQUOTA completed")


@command("GETQUOTAROOT", State.AUTH_OR_SELECTED)
async def getquotaroot(s: Session, tag: str, cmd: GetQuotaRoot) -> Done:
    assert s.mailbox_id is not None
    folder = await s.rt.store.folder(s.mailbox_id, cmd.mailbox)
    s.send(enc.quotaroot(folder.name, [ROOT], utf8=s.utf8))
    await _send_quota(s)
    return Done("GETQUOTAROOT completed")


@command("SETQUOTA", State.AUTH_OR_SELECTED)
async def setquota(s: Session, tag: str, cmd: SetQuota) -> Done:
    raise Fail("NO", "quotas are set by the administrator", "NOPERM")
