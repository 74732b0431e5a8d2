"""Who may send what to whom: the rules SMTP (MTA and submission), IMAP APPEND and the portal share.

Plain functions over data read from the database; each refusal is a ``Refusal`` carrying the SMTP
reply (code, enhanced status code, text) that the protocols translate for their own clients.
Never an open relay: a recipient outside the hosted domains is only ever accepted for an
authenticated sender, and only towards the trust space (see ``route_recipient``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select

from directory.recipients import directory_status
from mailserver import quota, trust
from mailserver.db.engine import Reader
from mailserver.db.models import Domain, Mailbox


class Refusal(Exception):
    """A refused envelope step, with the reply to give (RFC 5321 code + RFC 3463 enhanced code)."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def smtp(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@dataclass(frozen=True)
class LocalTarget:
    """A hosted, enabled mailbox."""

    address: str
    mailbox_id: int
    type: str


@dataclass(frozen=True)
class RemoteTarget:
    """A mailbox at a peer operator of the trust space, reached through the outbound queue."""

    address: str
    domain: str


def split_address(address: str) -> tuple[str, str]:
    """(local part, lower-case domain); refuses what no hosted mailbox could ever be (relay tricks).

    The classic relay battery (``user%other@``, ``"user@other"@``, source routes ``@a:u@b``, ``!`` paths)
    never names a local mailbox here: such local parts are refused outright rather than interpreted.
    """
    addr = address.strip()
    if addr.startswith("@") or addr.count("@") != 1:
        raise Refusal(550, "5.7.1", f"<{address}>: relaying denied (source routes and quoted @ are refused)")
    local, domain = addr.rsplit("@", 1)
    if not local or not domain or any(c in local for c in '%!"\\ ') or local.startswith(".") or ".." in local:
        raise Refusal(550, "5.7.1", f"<{address}>: relaying denied (address form not accepted)")
    return local, domain.lower().rstrip(".")


# Built once: RCPT runs these for every recipient (see ``Database.lookup``).
_HOSTED_DOMAIN = select(Domain.id).where(Domain.name == bindparam("domain"))
_RECIPIENT = (
    select(
        Mailbox.id,
        Mailbox.type,
        Mailbox.enabled,
        Mailbox.used_bytes,
        Mailbox.used_messages,
        Mailbox.quota_storage,
        Mailbox.quota_messages,
        Domain.quota_storage,
        Domain.quota_messages,
    )
    .join(Domain, Domain.id == Mailbox.domain_id)
    .where(Mailbox.address == bindparam("address"))
)


async def is_hosted(session: Reader, domain: str) -> bool:
    return (await session.execute(_HOSTED_DOMAIN, {"domain": domain})).first() is not None


async def local_recipient(
    session: Reader, address: str, size: int | None = None, defaults: quota.Limits = quota.UNLIMITED
) -> LocalTarget | None:
    """The local target for ``address``, None when its domain is not hosted here; Refusal when unknown,
    disabled, or (with the SIZE the client declared, RFC 1870) when the message cannot fit the quota
    (``defaults``: the server-wide limits, for mailboxes and domains without their own)."""
    local, domain = split_address(address)
    addr = f"{local.lower()}@{domain}"
    row = (await session.execute(_RECIPIENT, {"address": addr})).first()
    if row is None:
        if not await is_hosted(session, domain):
            return None
        if await directory_status(session, addr) == "retired":
            raise Refusal(
                550, "5.1.6", f"<{addr}>: mailbox retired from the MSSanté directory (moved or closed)"
            )
        raise Refusal(550, "5.1.1", f"<{addr}>: no such mailbox here")
    mailbox_id, type_, enabled, used, count, mq_s, mq_m, dq_s, dq_m = row
    if not enabled:
        if await directory_status(session, addr) == "retired":
            raise Refusal(
                550, "5.1.6", f"<{addr}>: mailbox retired from the MSSanté directory (moved or closed)"
            )
        raise Refusal(550, "5.2.1", f"<{addr}>: mailbox disabled")
    if size:
        limits = quota.effective_limits(mq_s, mq_m, dq_s, dq_m, defaults.storage, defaults.messages)
        if quota.exceeded(quota.Usage(used, count), limits, size, 1):
            raise Refusal(452, "4.2.2", f"<{addr}>: mailbox full")
    return LocalTarget(addr, mailbox_id, type_)


async def route_recipient(
    session: Reader,
    address: str,
    *,
    authenticated: bool,
    size: int | None = None,
    defaults: quota.Limits = quota.UNLIMITED,
) -> LocalTarget | RemoteTarget:
    """Where a recipient goes, or the Refusal to give at RCPT.

    Hosted domains: an existing, enabled mailbox (else 550 5.1.1 / 5.2.1). Anything else is relaying:
    refused to unauthenticated peers whoever asks, and allowed to an authenticated sender only towards
    a domain of the trust list (550 5.7.1 otherwise).
    """
    local = await local_recipient(session, address, size, defaults)
    if local is not None:
        return local
    local_part, domain = split_address(address)
    if not authenticated:
        raise Refusal(550, "5.7.1", f"<{address}>: relaying denied, {domain} is not hosted here")
    if await trust.lookup(session, domain) is None:
        raise Refusal(550, "5.7.1", f"<{address}>: {domain} is not in the MSSanté trust space")
    return RemoteTarget(f"{local_part}@{domain}", domain)
