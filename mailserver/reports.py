"""Usage indicators, as operators report them to the ANS: per mailbox type, the messages sent (and how
many of them to patients), the messages received, the mailboxes that exist and those used in a month.

Counted from the audit trail (kept at least 6 months), where every send, reception and login is one
event: a ``send`` is one message whatever its recipients, a ``receive`` one message delivered into one
mailbox (a refusal for a full mailbox is not counted), a mailbox is active when it logged in that
month. Grouped in the database, so a month of a large operator is a few indexed aggregate queries.
Events of mailboxes deleted since are not attributed to a type (they are left out).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from sqlalchemy import distinct, func, or_, select

from mailserver.db.models import MAILBOX_TYPES, AuditEvent, Domain, Mailbox
from mailserver.runtime import Runtime

COUNTS = ("mailboxes", "active", "sent", "sent_to_patients", "received")


def month_bounds(month: str) -> tuple[dt.datetime, dt.datetime]:
    """``2026-11`` → [1 November, 1 December) in UTC; ValueError for anything else."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"expected a month like 2026-11, got {month!r}")
    year, mon = int(m.group(1)), int(m.group(2))
    start = dt.datetime(year, mon, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


@dataclass
class UsageReport:
    month: str
    types: dict[str, dict[str, int]] = field(
        default_factory=lambda: {t: dict.fromkeys(COUNTS, 0) for t in MAILBOX_TYPES}
    )

    @property
    def total(self) -> dict[str, int]:
        return {c: sum(row[c] for row in self.types.values()) for c in COUNTS}

    def as_dict(self) -> dict[str, object]:
        return {"month": self.month, "types": self.types, "total": self.total}


async def usage(rt: Runtime, month: str) -> UsageReport:
    start, end = month_bounds(month)
    report = UsageReport(month)
    in_month = (AuditEvent.at >= start, AuditEvent.at < end)
    joined = (AuditEvent.actor == Mailbox.address,)
    async with rt.db.read() as session:
        patient_domains = list(
            (await session.execute(select(Domain.name).where(Domain.patients.is_(True)))).scalars()
        )
        existing = await session.execute(
            select(Mailbox.type, func.count()).where(Mailbox.created_at < end).group_by(Mailbox.type)
        )
        for type_, n in existing:
            report.types[type_]["mailboxes"] = n
        active = await session.execute(
            select(Mailbox.type, func.count(distinct(AuditEvent.actor)))
            .select_from(AuditEvent)
            .join(Mailbox, *joined)
            .where(*in_month, AuditEvent.action == "login")
            .group_by(Mailbox.type)
        )
        for type_, n in active:
            report.types[type_]["active"] = n
        counted = {
            "sent": AuditEvent.action == "send",
            "received": (AuditEvent.action == "receive") & AuditEvent.response.like("delivered%"),
        }
        if patient_domains:
            to_patient = or_(*(AuditEvent.request.like(f"%@{d}>%") for d in patient_domains))
            counted["sent_to_patients"] = (AuditEvent.action == "send") & to_patient
        for key, condition in counted.items():
            rows = await session.execute(
                select(Mailbox.type, func.count())
                .select_from(AuditEvent)
                .join(Mailbox, *joined)
                .where(*in_month, condition)
                .group_by(Mailbox.type)
            )
            for type_, n in rows:
                report.types[type_][key] = n
    return report
