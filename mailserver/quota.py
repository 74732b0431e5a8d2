"""Quota policy: the limits that apply to a mailbox and whether a change fits them.

Plain functions over plain values, called by the store (every delivery, append, copy, move), by SMTP
(RCPT with a declared SIZE) and by the portal, so the rule is written once. A limit of 0 means none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    storage: int
    messages: int


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


def crossed_warning(before: Usage, after: Usage, limits: Limits, levels: list[int]) -> int | None:
    """The highest warning level (percent of storage) crossed upwards by this change, if any."""
    if not limits.storage:
        return None
    before_pct = before.bytes * 100 / limits.storage
    after_pct = after.bytes * 100 / limits.storage
    crossed = [lvl for lvl in levels if before_pct < lvl <= after_pct]
    return max(crossed) if crossed else None
