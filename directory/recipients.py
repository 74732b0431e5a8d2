"""Recipient checks against the directory, for SMTP RCPT and submission.

A mailbox retired from the national directory deserves a precise refusal (``550 5.1.6`` mailbox moved /
retired) rather than "unknown user", so that the sender's operator and the sender know to look it up
again instead of retrying or doubting the address syntax.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import bindparam, select

from directory.models import ACTIVE, RETIRED, DirectoryMailbox
from mailserver.db.engine import Reader

Status = Literal["active", "retired"]

_STATUS = select(DirectoryMailbox.status).where(DirectoryMailbox.address == bindparam("address"))


async def directory_status(session: Reader, address: str) -> Status | None:
    """``"active"`` or ``"retired"`` for an address of the directory; None if the directory lacks it."""
    status = (await session.execute(_STATUS, {"address": address.strip().lower()})).scalar_one_or_none()
    if status == RETIRED:
        return "retired"
    if status == ACTIVE:
        return "active"
    return None
