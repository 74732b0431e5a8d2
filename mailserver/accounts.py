"""Hosted domains and mailboxes: creation, credentials, state. Called by the CLI (and later the API).

Rules kept here, once: an address is validated by email-validator (any domain an administrator
configures, ``.test`` included); a mailbox's type and address never change after creation (as in the
national directory); a patient domain holds only ``PAT`` mailboxes addressed ``INS@domain`` with a
valid INS; a ``PER`` mailbox carries a valid RPPS identifier.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import email_validator
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from directory.ins import InvalidINS, validate_ins
from directory.rpps import InvalidRPPS, validate_rpps
from mailserver import acl, certauth
from mailserver.db.engine import run_core
from mailserver.db.models import (
    ACL_RIGHTS,
    DEFAULT_MEMBER_RIGHTS,
    MAILBOX_TYPES,
    MEMBER_TYPES,
    SEND_RIGHT,
    SHARED_TYPES,
    AppPassword,
    Domain,
    Folder,
    Mailbox,
    MailboxCert,
    MemberFlags,
    Membership,
    Message,
    utcnow,
)
from mailserver.headers import HeaderView, decode_header
from mailserver.policy import Refusal
from mailserver.runtime import Runtime
from mailserver.store import mime, queries


class AccountError(Exception):
    """A refused administrative request, phrased for the operator."""


def validate_address(address: str) -> str:
    """Normalise and validate an address (lower-case; syntax only, no DNS)."""
    try:
        info = email_validator.validate_email(
            address.strip(), check_deliverability=False, test_environment=True, globally_deliverable=False
        )
    except email_validator.EmailNotValidError as exc:
        raise AccountError(f"invalid address {address!r}: {exc}") from None
    return info.normalized.lower()


def validate_domain(name: str) -> str:
    domain = name.strip().lower().rstrip(".")
    validate_address(f"postmaster@{domain}")
    return domain


@dataclass(frozen=True)
class MailboxView:
    id: int
    address: str
    type: str
    rpps: str | None
    display_name: str
    enabled: bool
    quota_storage: int | None
    quota_messages: int | None
    used_bytes: int
    used_messages: int
    accepts_patient_first: bool
    created_at: dt.datetime
    auth_methods: list[str] | None = None  # None: every method (see mailserver.auth.METHODS)

    def as_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["created_at"] = self.created_at.isoformat()
        return d


def _view(m: Mailbox) -> MailboxView:
    return MailboxView(
        m.id,
        m.address,
        m.type,
        m.rpps,
        m.display_name,
        m.enabled,
        m.quota_storage,
        m.quota_messages,
        m.used_bytes,
        m.used_messages,
        m.accepts_patient_first,
        m.created_at,
        m.auth_methods.split(",") if m.auth_methods is not None else None,
    )


async def add_domain(rt: Runtime, name: str, patients: bool) -> Domain:
    domain = validate_domain(name)
    try:
        async with rt.db.write() as session:
            d = Domain(name=domain, patients=patients, created_at=utcnow())
            session.add(d)
            await session.flush()
            rt.audit.record_in(
                session, "admin", "admin", "", f"domain add {domain} patients={patients}", "ok"
            )
            return d
    except IntegrityError:
        raise AccountError(f"domain {domain} already exists") from None


async def list_domains(rt: Runtime) -> list[Domain]:
    async with rt.db.read() as session:
        return list((await session.execute(select(Domain).order_by(Domain.name))).scalars())


async def find_mailbox(rt: Runtime, address: str) -> MailboxView | None:
    async with rt.db.read() as session:
        m = (
            await session.execute(select(Mailbox).where(Mailbox.address == address.strip().lower()))
        ).scalar_one_or_none()
        return _view(m) if m else None


async def get_mailbox(rt: Runtime, address: str) -> MailboxView:
    m = await find_mailbox(rt, address)
    if m is None:
        raise AccountError(f"no mailbox {address.strip().lower()}")
    return m


async def add_mailbox(
    rt: Runtime,
    address: str,
    type_: str,
    *,
    rpps: str | None = None,
    display_name: str = "",
    password: str | None = None,
    quota_storage: int | None = None,
    quota_messages: int | None = None,
    accepts_patient_first: bool = False,
) -> MailboxView:
    """Create a mailbox with its default folders; every rule in the module docstring is checked first."""
    type_ = type_.upper()
    if type_ not in MAILBOX_TYPES:
        raise AccountError(f"mailbox type must be one of {', '.join(MAILBOX_TYPES)}, got {type_!r}")
    addr = validate_address(address)
    local, _, domain_name = addr.rpartition("@")
    if rpps is not None:
        try:
            rpps = validate_rpps(rpps)
        except InvalidRPPS as exc:
            raise AccountError(str(exc)) from None
    if type_ == "PER" and rpps is None:
        raise AccountError("a PER (personal) mailbox needs --rpps, the professional's RPPS identifier")
    if accepts_patient_first and type_ != "ORG":
        raise AccountError("only an ORG mailbox (a pharmacy) may accept a patient's first message")
    password_hash = await rt.passwords.hash_async(password) if password else None
    try:
        async with rt.db.write() as session:
            dom = (
                await session.execute(select(Domain).where(Domain.name == domain_name))
            ).scalar_one_or_none()
            if dom is None:
                raise AccountError(
                    f"domain {domain_name} is not hosted here (caducee domain add {domain_name})"
                )
            if dom.patients != (type_ == "PAT"):
                raise AccountError(
                    f"{domain_name} is a patient domain: its mailboxes are of type PAT"
                    if dom.patients
                    else f"PAT mailboxes belong in a patient domain, and {domain_name} is not one"
                )
            if type_ == "PAT":
                try:
                    local = validate_ins(local)
                except InvalidINS as exc:
                    raise AccountError(f"a patient address is INS@domain: {exc}") from None
                addr = f"{local.lower()}@{domain_name}"
            mb = Mailbox(
                address=addr,
                domain_id=dom.id,
                type=type_,
                rpps=rpps,
                display_name=display_name,
                password_hash=password_hash,
                enabled=True,
                accepts_patient_first=accepts_patient_first,
                quota_storage=quota_storage,
                quota_messages=quota_messages,
                used_bytes=0,
                used_messages=0,
                quota_warned=0,
                last_uidvalidity=0,
                created_at=utcnow(),
            )
            session.add(mb)
            await session.flush()
            await rt.store.create_default_folders(session, mb)
            rt.audit.record_in(session, "admin", "admin", "", f"mailbox add {addr} type={type_}", "ok")
            return _view(mb)
    except IntegrityError:
        raise AccountError(f"mailbox {addr} already exists") from None


async def _update(rt: Runtime, address: str, what: str, **values: object) -> MailboxView:
    addr = address.strip().lower()
    async with rt.db.write() as session:
        mb = (
            await session.execute(select(Mailbox).where(Mailbox.address == addr).with_for_update())
        ).scalar_one_or_none()
        if mb is None:
            raise AccountError(f"no mailbox {addr}")
        for key, value in values.items():
            setattr(mb, key, value)
        rt.audit.record_in(session, "admin", "admin", "", f"mailbox {what} {addr}", "ok")
        view = _view(mb)
    rt.auth.cache.forget(addr)  # other processes see the new hash or flag on their next login's read
    return view


async def set_password(rt: Runtime, address: str, password: str) -> MailboxView:
    if len(password) < 8:
        raise AccountError("a password needs at least 8 characters")
    return await _update(rt, address, "passwd", password_hash=await rt.passwords.hash_async(password))


async def set_enabled(rt: Runtime, address: str, enabled: bool) -> MailboxView:
    return await _update(rt, address, "enable" if enabled else "disable", enabled=enabled)


async def delete_mailbox(rt: Runtime, address: str) -> None:
    """Delete a mailbox and all its mail (blob files removed after the commit)."""
    addr = address.strip().lower()
    async with rt.db.write() as session:
        mb = (await session.execute(select(Mailbox).where(Mailbox.address == addr))).scalar_one_or_none()
        if mb is None:
            raise AccountError(f"no mailbox {addr}")
        paths = await rt.store.delete_mailbox_content(session, mb.id)
        await session.execute(delete(AppPassword).where(AppPassword.mailbox_id == mb.id))
        await session.execute(
            delete(Membership).where((Membership.mailbox_id == mb.id) | (Membership.member_id == mb.id))
        )
        await session.delete(mb)
        rt.audit.record_in(session, "admin", "admin", "", f"mailbox delete {addr}", "ok")
    rt.auth.cache.forget(addr)
    for p in paths:
        rt.blobs.remove(p)


async def list_mailboxes(rt: Runtime, domain: str | None = None) -> list[MailboxView]:
    q = select(Mailbox).order_by(Mailbox.address)
    if domain:
        q = q.join(Domain).where(Domain.name == domain.lower())
    async with rt.db.read() as session:
        return [_view(m) for m in (await session.execute(q)).scalars()]


async def add_app_password(rt: Runtime, address: str, label: str) -> tuple[int, str]:
    """Create an application password; the clear text is returned once and never stored."""
    from mailserver.auth import generate_app_password

    mb = await get_mailbox(rt, address)
    secret = generate_app_password()
    hashed = await rt.passwords.hash_async(secret)
    async with rt.db.write() as session:
        app = AppPassword(mailbox_id=mb.id, label=label, password_hash=hashed, created_at=utcnow())
        session.add(app)
        await session.flush()
        rt.audit.record_in(session, "admin", "admin", "", f"app-password add {mb.address} {label!r}", "ok")
        return app.id, secret


async def list_app_passwords(rt: Runtime, address: str) -> list[AppPassword]:
    mb = await get_mailbox(rt, address)
    async with rt.db.read() as session:
        q = select(AppPassword).where(AppPassword.mailbox_id == mb.id).order_by(AppPassword.id)
        return list((await session.execute(q)).scalars())


async def revoke_app_password(rt: Runtime, address: str, app_id: int) -> None:
    mb = await get_mailbox(rt, address)
    async with rt.db.write() as session:
        result = await session.execute(
            delete(AppPassword).where(AppPassword.id == app_id, AppPassword.mailbox_id == mb.id)
        )
        if result.rowcount == 0:
            raise AccountError(f"{mb.address} has no application password {app_id}")
        rt.audit.record_in(session, "admin", "admin", "", f"app-password revoke {mb.address} {app_id}", "ok")
    rt.auth.cache.forget(mb.address)


async def set_auth_methods(rt: Runtime, address: str, methods: list[str]) -> MailboxView:
    """Which login methods the mailbox accepts (``mailserver.auth.allows`` enforces it for every
    protocol); every one of ``METHODS`` means no restriction."""
    from mailserver.auth import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise AccountError(f"methods must be among {', '.join(METHODS)} (got {', '.join(methods) or 'none'})")
    chosen = [m for m in METHODS if m in methods]
    value = None if chosen == list(METHODS) else ",".join(chosen)
    return await _update(rt, address, f"auth {','.join(chosen)}", auth_methods=value)


async def add_certificate(rt: Runtime, address: str, data: bytes, match: str) -> MailboxCert:
    """Register a client certificate (PEM or DER) for SASL EXTERNAL: an APP mailbox's software
    certificate, issued by the health PKI and not expired or revoked now."""
    mb = await get_mailbox(rt, address)
    if mb.type != "APP":
        raise AccountError(f"{mb.address} is a {mb.type} mailbox: certificates log in APP mailboxes")
    if rt.auth.certificates is None:
        raise AccountError("no health PKI configured ([tls] peer_ca)")
    try:
        cert = certauth.load_pem_certificate(data)
        der = cert.public_bytes(serialization.Encoding.DER)
        await rt.auth.certificates.verify(der)
    except certauth.CertificateError as exc:
        raise AccountError(f"certificate refused: {exc}") from None
    f = certauth.facts(cert)
    row = MailboxCert(
        mailbox_id=mb.id,
        issuer=f.issuer,
        serial=f.serial,
        subject=f.subject,
        match=match,
        sha256=f.sha256,
        not_after=f.not_after,
        created_at=utcnow(),
    )
    try:
        async with rt.db.write() as session:
            session.add(row)
            await session.flush()
            rt.audit.record_in(
                session, "admin", "admin", "", f"cert add {mb.address} {f.subject} serial {f.serial}", "ok"
            )
    except IntegrityError:
        raise AccountError(f"this certificate is already registered for {mb.address}") from None
    return row


async def list_certificates(rt: Runtime, address: str) -> list[MailboxCert]:
    mb = await get_mailbox(rt, address)
    async with rt.db.read() as session:
        q = select(MailboxCert).where(MailboxCert.mailbox_id == mb.id).order_by(MailboxCert.id)
        return list((await session.execute(q)).scalars())


async def remove_certificate(rt: Runtime, address: str, cert_id: int) -> None:
    mb = await get_mailbox(rt, address)
    async with rt.db.write() as session:
        result = await session.execute(
            delete(MailboxCert).where(MailboxCert.id == cert_id, MailboxCert.mailbox_id == mb.id)
        )
        if result.rowcount == 0:
            raise AccountError(f"{mb.address} has no certificate {cert_id}")
        rt.audit.record_in(session, "admin", "admin", "", f"cert remove {mb.address} {cert_id}", "ok")


def normalise_rights(rights: str) -> str:
    """RFC 4314 rights in canonical order, refusing any letter outside ``ACL_RIGHTS``."""
    unknown = sorted(set(rights) - set(ACL_RIGHTS))
    if unknown:
        raise AccountError(f"unknown right(s) {''.join(unknown)!r}: rights are letters of {ACL_RIGHTS}")
    return "".join(r for r in ACL_RIGHTS if r in rights)


@dataclass(frozen=True)
class Member:
    """One person's membership of a shared (ORG/CAB) mailbox."""

    org: str
    member: str
    rights: str


async def add_member(
    rt: Runtime,
    org_address: str,
    member_address: str,
    rights: str | None = None,
    *,
    actor: str = "admin",
    remote: str = "",
) -> Member:
    """Make ``member_address`` a member of the ORG/CAB mailbox with ``rights`` (set again if already
    one): they open it, and send as it when the rights hold ``p``, with their own identity. Without
    ``rights`` a new member gets ``DEFAULT_MEMBER_RIGHTS`` and an existing one keeps theirs, so a
    provisioning script run twice never widens what was granted."""
    org, member = await get_mailbox(rt, org_address), await get_mailbox(rt, member_address)
    if org.type not in SHARED_TYPES:
        raise AccountError(f"{org.address} is not an ORG or CAB mailbox")
    if member.type in SHARED_TYPES or member.id == org.id:
        raise AccountError(f"{member.address} is a shared mailbox: members are people's mailboxes")
    if member.type not in MEMBER_TYPES:
        raise AccountError(
            f"{member.address} is a {member.type} mailbox: members are professionals' (PER) or"
            " software (APP) mailboxes"
        )
    canonical = normalise_rights(rights) if rights is not None else ""
    if rights is not None and not canonical:
        raise AccountError("no rights given: use `mailbox member remove` to end a membership")
    async with rt.db.write() as session:
        row = await session.get(Membership, (org.id, member.id))
        if not canonical:
            canonical = row.rights if row is not None else normalise_rights(DEFAULT_MEMBER_RIGHTS)
        if row is None:
            session.add(Membership(mailbox_id=org.id, member_id=member.id, rights=canonical))
        else:
            row.rights = canonical
        rt.audit.record_in(
            session,
            actor,
            "admin",
            remote,
            f"member add {member.address} to {org.address} rights {canonical}",
            "ok",
        )
    return Member(org.address, member.address, canonical)


async def remove_member(
    rt: Runtime, org_address: str, member_address: str, *, actor: str = "admin", remote: str = ""
) -> None:
    """End a membership: the person no longer opens nor sends as the shared mailbox."""
    org, member = await get_mailbox(rt, org_address), await get_mailbox(rt, member_address)
    async with rt.db.write() as session:
        result = await session.execute(
            delete(Membership).where(Membership.mailbox_id == org.id, Membership.member_id == member.id)
        )
        if result.rowcount == 0:
            raise AccountError(f"{member.address} is not a member of {org.address}")
        # Their own \Seen on the ORG's messages goes with them (nothing kept for a stranger).
        org_messages = (
            select(Message.id).join(Folder, Folder.id == Message.folder_id).where(Folder.mailbox_id == org.id)
        )
        await session.execute(
            delete(MemberFlags).where(
                MemberFlags.member_id == member.id, MemberFlags.message_id.in_(org_messages)
            )
        )
        rt.audit.record_in(
            session, actor, "admin", remote, f"member remove {member.address} from {org.address}", "ok"
        )


async def list_members(rt: Runtime, org_address: str | None = None) -> list[Member]:
    """The memberships of one shared mailbox, or of all, by shared mailbox then member."""
    org_id = None
    if org_address:
        org = await get_mailbox(rt, org_address)
        if org.type not in SHARED_TYPES:
            raise AccountError(
                f"{org.address} is a {org.type} mailbox: only ORG and CAB mailboxes have members"
            )
        org_id = org.id
    shared, person = Mailbox.__table__.alias("shared"), Mailbox.__table__.alias("person")
    q = (
        select(shared.c.address, person.c.address, Membership.rights)
        .join(shared, shared.c.id == Membership.mailbox_id)
        .join(person, person.c.id == Membership.member_id)
        .order_by(shared.c.address, person.c.address)
    )
    if org_id is not None:
        q = q.where(Membership.mailbox_id == org_id)
    async with rt.db.read() as session:
        return [Member(*row) for row in (await session.execute(q)).all()]


@dataclass(frozen=True)
class Access:
    """What a person holds on one shared mailbox: its id and address, and their rights there."""

    mailbox_id: int
    address: str
    rights: str


async def memberships_of(rt: Runtime, member_id: int) -> list[Access]:
    """The shared mailboxes ``member_id`` belongs to, by address (the IMAP shared namespace)."""
    async with rt.db.read() as session:  # on every LIST and shared-folder command: Core, on the cursor
        return [Access(*row) for row in await run_core(session, queries.memberships_of, member_id)]


async def rights_through(rt: Runtime, mailbox_id: int, member_ids: tuple[int, ...]) -> str:
    """The rights a session of shared mailbox ``mailbox_id`` opened through these members' membership
    holds there (any of theirs, in ``ACL_RIGHTS`` order): not more than the membership grants."""
    async with rt.db.read() as session:
        rows = await session.execute(
            select(Membership.rights).where(
                Membership.mailbox_id == mailbox_id, Membership.member_id.in_(member_ids)
            )
        )
        held = "".join(rows.scalars())
    return "".join(r for r in ACL_RIGHTS if r in held)


async def grant_send_as(rt: Runtime, org_address: str, member_address: str) -> Member:
    """Deprecated (``mailbox send-as``): a new member gets the default rights, which include sending;
    an existing one gets ``p`` added to what they hold."""
    held = [m.rights for m in await list_members(rt, org_address) if m.member == member_address.lower()]
    return await add_member(rt, org_address, member_address, held[0] + acl.POST if held else None)


async def send_as_addresses(rt: Runtime, mailbox_id: int) -> frozenset[str]:
    """Every address the authenticated mailbox may send as: its own, and each ORG/CAB it is a member
    of with the ``p`` right."""
    async with rt.db.read() as session:
        own = (await session.execute(select(Mailbox.address).where(Mailbox.id == mailbox_id))).scalar()
        if own is None:
            return frozenset()
        granted = await session.execute(
            select(Mailbox.address)
            .join(Membership, Membership.mailbox_id == Mailbox.id)
            .where(Membership.member_id == mailbox_id, Membership.rights.contains(SEND_RIGHT))
        )
        return frozenset([own, *granted.scalars()])


async def may_send_as(rt: Runtime, mailbox_id: int, address: str) -> bool:
    """The authenticated mailbox may use ``address`` as sender (MAIL FROM): see ``send_as_addresses``."""
    return _normalised(address) in await send_as_addresses(rt, mailbox_id)


def acting_as(username: str | None, sender: str | None) -> str:
    """The audit's " as member of ORG" when a person sends as a shared mailbox, else nothing: the
    actor stays the person, the request names the ORG."""
    if not username or not sender or _normalised(sender) == _normalised(username):
        return ""
    return f" as member of {_normalised(sender)}"


def _normalised(address: str) -> str:
    """Mailbox addresses are stored lower-case, local part included: compare them so."""
    return address.strip().lower().rstrip(".")


_ADDRESS_LIKE = re.compile(r'[^\s<>()\[\],;:"@\\]+@[^\s<>()\[\],;:"@\\]+')


def _author_addresses(value: str) -> dict[str, str]:
    """Every address a reader may take for the author in a From/Sender value (normalised → as written):
    its mailboxes as parsed, and anything address-like in it, raw or RFC 2047-encoded (display names)."""
    found: dict[str, str] = {}
    for address in mime.addr_specs(value) + _ADDRESS_LIKE.findall(value + " " + decode_header(value)):
        found.setdefault(_normalised(address), address)
    return found


def author_addresses(headers: HeaderView) -> list[str]:
    """The addresses a message's From fields name (normalised), as ``check_authors`` reads them."""
    return [a for value in headers.get_all("From") for a in _author_addresses(value)]


async def check_authors(rt: Runtime, mailbox_id: int, username: str, headers: HeaderView) -> None:
    """Refuse (550 5.7.1) a message whose From or Sender names anyone the mailbox may not send as.

    RFC 6409 lets the submission server enforce submission rights (§6.1, there for MAIL FROM) and its
    site policy on the message (§8); the strict reading is kept: every address in every From and Sender
    field (a From of several mailboxes, a group's members, an address written in a display name) must
    be one of ``send_as_addresses``, and each such field must name one. A message without From passes
    (there is nobody to impersonate). Submission, the portal and any later sending API call this before
    accepting a message.
    """
    allowed: frozenset[str] | None = None
    for name in ("From", "Sender"):
        for value in headers.get_all(name):
            addresses = _author_addresses(value)
            if not addresses:
                raise Refusal(550, "5.7.1", f"{name}: names no address (RFC 5322 §3.6.2)")
            allowed = await send_as_addresses(rt, mailbox_id) if allowed is None else allowed
            refused = [written for address, written in addresses.items() if address not in allowed]
            if refused:
                raise Refusal(
                    550, "5.7.1", f"{name}: <{refused[0]}> is not an address {username} may send as"
                )


@dataclass(frozen=True)
class QuotaLine:
    """One mailbox's usage against its effective limits (0 = unlimited)."""

    address: str
    used_bytes: int
    storage: int
    used_messages: int
    messages: int

    @property
    def percent(self) -> float:
        return round(self.used_bytes * 100 / self.storage, 1) if self.storage else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "used_bytes": self.used_bytes,
            "storage_limit": self.storage,
            "used_messages": self.used_messages,
            "message_limit": self.messages,
            "percent": self.percent,
        }


async def quota_lines(rt: Runtime, address: str | None = None) -> list[QuotaLine]:
    """Usage and effective limits of one mailbox or all of them, most used (in percent) first."""
    q = select(Mailbox).order_by(Mailbox.address)
    if address is not None:
        q = q.where(Mailbox.address == address.strip().lower())
    async with rt.db.read() as session:
        lines = []
        for mb in (await session.execute(q)).scalars():
            limits = await rt.store.limits(session, mb)
            lines.append(
                QuotaLine(mb.address, mb.used_bytes, limits.storage, mb.used_messages, limits.messages)
            )
    if address is not None and not lines:
        raise AccountError(f"no mailbox {address.strip().lower()}")
    return sorted(lines, key=lambda line: (-line.percent, -line.used_bytes, line.address))


async def set_mailbox_quota(
    rt: Runtime, address: str, storage: int | None, messages: int | None
) -> QuotaLine:
    """Set (or with None, reset to the domain's default) a mailbox's limits; warnings re-evaluated."""
    mb = await _update(
        rt,
        address,
        f"quota storage={storage} messages={messages}",
        quota_storage=storage,
        quota_messages=messages,
    )
    await rt.store.update_quota_warning(mb.id)
    return (await quota_lines(rt, mb.address))[0]


async def set_domain_quota(rt: Runtime, name: str, storage: int | None, messages: int | None) -> None:
    """The default limits of every mailbox of a domain that has none of its own."""
    domain = name.strip().lower()
    async with rt.db.write() as session:
        dom = (await session.execute(select(Domain).where(Domain.name == domain))).scalar_one_or_none()
        if dom is None:
            raise AccountError(f"domain {domain} is not hosted here")
        dom.quota_storage, dom.quota_messages = storage, messages
        rt.audit.record_in(session, "admin", "admin", "", f"domain quota {domain} {storage} {messages}", "ok")


async def recount_usage(
    rt: Runtime, address: str | None = None
) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """Rebuild usage counters from the store; returns (address, (bytes, msgs) before, after) per mailbox."""
    targets = [await get_mailbox(rt, address)] if address else await list_mailboxes(rt)
    out = []
    for mb in targets:
        before, after = await rt.store.recount(mb.id)
        out.append((mb.address, (before.bytes, before.messages), (after.bytes, after.messages)))
    return out
