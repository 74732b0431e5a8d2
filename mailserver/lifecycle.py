"""The mailbox life cycle (CNIL rule for MSSanté: a mailbox without any login for a year is closed,
after its holder was warned).

A mailbox is inactive when its last login (or, never logged in, its creation) is older than
``[mailboxes] inactive_after``. The daily task puts one notice in its INBOX (audited
``inactive-notice``) and, ``grace_period`` later, disables it unless someone logged in meanwhile (a
login clears the notice; audited ``inactive-disabled``). Each step claims its mailboxes with one
conditional UPDATE, so two server processes never notify or disable the same mailbox twice.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from email.utils import format_datetime

from sqlalchemy import func, select, update

from mailserver.db.models import Mailbox
from mailserver.runtime import Runtime


@dataclass(frozen=True)
class Inactive:
    address: str
    type: str
    last_login_at: dt.datetime | None
    inactive_since: dt.datetime  # the last login, or the creation
    notice_at: dt.datetime | None
    disable_after: dt.datetime | None  # when the grace period ends (once notified)

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "type": self.type,
            "last_login_at": self.last_login_at.isoformat() if self.last_login_at else None,
            "inactive_since": self.inactive_since.isoformat(),
            "notice_at": self.notice_at.isoformat() if self.notice_at else None,
            "disable_after": self.disable_after.isoformat() if self.disable_after else None,
        }


def _activity() -> object:
    return func.coalesce(Mailbox.last_login_at, Mailbox.created_at)


def _cutoff(rt: Runtime, now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(seconds=rt.settings.mailboxes.inactive_after)


async def inactive(rt: Runtime, now: dt.datetime | None = None) -> list[Inactive]:
    """Enabled mailboxes without a login for ``inactive_after`` (notified or not yet), oldest first."""
    now = now or dt.datetime.now(dt.UTC)
    grace = dt.timedelta(seconds=rt.settings.mailboxes.grace_period)
    activity = _activity()
    q = (
        select(Mailbox)
        .where(Mailbox.enabled.is_(True), activity < _cutoff(rt, now))  # type: ignore[operator]
        .order_by(activity, Mailbox.address)  # type: ignore[arg-type]
    )
    async with rt.db.read() as session:
        rows = list((await session.execute(q)).scalars())
    return [
        Inactive(
            m.address,
            m.type,
            m.last_login_at,
            m.last_login_at or m.created_at,
            m.inactive_notice_at,
            m.inactive_notice_at + grace if m.inactive_notice_at else None,
        )
        for m in rows
    ]


def notice_message(address: str, since: dt.datetime, disable_on: dt.datetime) -> bytes:
    """The notice put in the INBOX (plain text, French), naming the day the mailbox closes."""
    domain = address.rpartition("@")[2]
    text = (
        f"Bonjour,\r\n\r\nAucune connexion à la boîte aux lettres {address} n'a eu lieu depuis le"
        f" {since:%d/%m/%Y}.\r\n"
        f"Sans connexion d'ici le {disable_on:%d/%m/%Y}, elle sera désactivée, conformément aux règles de"
        " la messagerie sécurisée de santé (CNIL).\r\n\r\n"
        "Pour la conserver, connectez-vous simplement avec votre logiciel de messagerie ou le webmail.\r\n"
    )
    headers = (
        f"From: =?utf-8?q?Messagerie_Cadu=C3=A9e?= <postmaster@{domain}>\r\n"
        f"To: <{address}>\r\n"
        "Subject: =?utf-8?q?Bo=C3=AEte_aux_lettres_inactive_=3A_elle_sera_d=C3=A9sactiv=C3=A9e?=\r\n"
        f"Date: {format_datetime(dt.datetime.now(dt.UTC))}\r\n"
        f"Message-ID: <inactive-{uuid.uuid4().hex}@{domain}>\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return headers.encode() + text.encode("utf-8")


async def run(rt: Runtime, now: dt.datetime | None = None) -> tuple[list[str], list[str]]:
    """The daily step: (addresses notified, addresses disabled)."""
    now = now or dt.datetime.now(dt.UTC)
    grace = dt.timedelta(seconds=rt.settings.mailboxes.grace_period)
    activity = _activity()
    async with rt.db.write() as session:
        notified = list(
            (
                await session.execute(
                    update(Mailbox)
                    .where(
                        Mailbox.enabled.is_(True),
                        Mailbox.inactive_notice_at.is_(None),
                        activity < _cutoff(rt, now),  # type: ignore[operator]
                    )
                    .values(inactive_notice_at=now)
                    .returning(Mailbox.id, Mailbox.address, Mailbox.last_login_at, Mailbox.created_at)
                )
            ).all()
        )
    for mailbox_id, address, last_login, created in notified:
        prepared = await rt.store.prepare(notice_message(address, last_login or created, now + grace))
        await rt.store.deliver(prepared, [mailbox_id], enforce_quota=False)
        await rt.audit.record(
            "admin", "inactive-notice", request=address, response=f"disabled after {(now + grace).date()}"
        )
    async with rt.db.write() as session:
        disabled = list(
            (
                await session.execute(
                    update(Mailbox)
                    .where(
                        Mailbox.enabled.is_(True),
                        Mailbox.inactive_notice_at <= now - grace,
                        activity < Mailbox.inactive_notice_at,  # type: ignore[operator]
                    )
                    .values(enabled=False)
                    .returning(Mailbox.address)
                )
            ).scalars()
        )
    for address in disabled:
        await rt.audit.record("admin", "inactive-disabled", request=address, response="disabled")
    return [row[1] for row in notified], disabled
