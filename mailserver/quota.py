"""Quota policy: the limits that apply to a mailbox and whether a change fits them.

Plain functions over plain values, called by the store (every delivery, append, copy, move), by SMTP
(RCPT with a declared SIZE) and by the portal, so the rule is written once. A limit of 0 means none.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from email.utils import format_datetime


@dataclass(frozen=True)
class Limits:
    storage: int
    messages: int


UNLIMITED = Limits(0, 0)


@dataclass(frozen=True)
class Usage:
    bytes: int
    messages: int


class OverQuota(Exception):
    """The change would take the mailbox over one of its limits; nothing was changed."""

    def __init__(self, address: str, resource: str) -> None:
        super().__init__(f"{address}: {resource} quota exceeded")
        self.address = address
        self.resource = resource


def effective_limits(
    mailbox_storage: int | None,
    mailbox_messages: int | None,
    domain_storage: int | None,
    domain_messages: int | None,
    default_storage: int,
    default_messages: int,
) -> Limits:
    """The mailbox's own limit wins, then its domain's default, then the server-wide default."""

    def pick(*values: int | None) -> int:
        return next(v for v in values if v is not None)

    return Limits(
        storage=pick(mailbox_storage, domain_storage, default_storage),
        messages=pick(mailbox_messages, domain_messages, default_messages),
    )


def exceeded(usage: Usage, limits: Limits, add_bytes: int, add_messages: int) -> str | None:
    """The resource name (RFC 9208: ``STORAGE`` / ``MESSAGE``) the change would exceed, or None."""
    if add_bytes > 0 and limits.storage and usage.bytes + add_bytes > limits.storage:
        return "STORAGE"
    if add_messages > 0 and limits.messages and usage.messages + add_messages > limits.messages:
        return "MESSAGE"
    return None


def warning_level(used_bytes: int, limits: Limits, levels: list[int]) -> int:
    """The highest warning level (percent of the storage limit) that ``used_bytes`` has reached, or 0."""
    if not limits.storage:
        return 0
    percent = used_bytes * 100 / limits.storage
    return max((lvl for lvl in levels if percent >= lvl), default=0)


def human_size(n: int) -> str:
    """Sizes as people read them in French (``1,5 Mo``)."""
    value = float(n)
    for unit in ("octets", "Ko", "Mo", "Go"):
        if value < 1024 or unit == "Go":
            return f"{value:.0f} {unit}" if unit == "octets" else f"{value:.1f} {unit}".replace(".", ",")
        value /= 1024
    return f"{n} octets"


def warning_message(address: str, level: int, used: int, limit: int) -> bytes:
    """The notice put in the INBOX when usage crosses ``level`` percent (plain text, French)."""
    domain = address.rpartition("@")[2]
    now = format_datetime(dt.datetime.now(dt.UTC))
    text = (
        f"Bonjour,\r\n\r\nVotre boîte aux lettres {address} est remplie à {level} % :\r\n"
        f"{human_size(used)} utilisés sur {human_size(limit)}.\r\n\r\n"
        "Lorsqu'elle sera pleine, les nouveaux messages vous seront refusés. Supprimez les messages dont "
        "vous n'avez plus besoin (pensez à vider la corbeille) ou contactez votre administrateur.\r\n"
    )
    headers = (
        f"From: =?utf-8?q?Messagerie_Cadu=C3=A9e?= <postmaster@{domain}>\r\n"
        f"To: <{address}>\r\n"
        f"Subject: =?utf-8?q?Votre_bo=C3=AEte_aux_lettres_est_remplie_=C3=A0_{level}_=25?=\r\n"
        f"Date: {now}\r\n"
        f"Message-ID: <quota-{level}-{uuid.uuid4().hex}@{domain}>\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return headers.encode() + text.encode("utf-8")
