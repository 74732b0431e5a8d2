"""What the patient portal does, once: the HTML pages (``web.py``) and the JSON API (``api.py``) both call
these functions and only translate their results and ``PortalError`` into their own format.

- Patients sign in with INS + password through ``rt.auth.authenticate`` (shared lock-out and audit),
  then the second factor of ``factors`` (e-mailed code or authenticator app) unless a trusted device
  spares it; sessions and invitation codes live in the database as SHA-256 of high-entropy secrets.
  A forgotten password is reset with an e-mailed code; an invitation may be e-mailed as a link.
- A reply is a proper RFC 5322 message from the patient, checked by ``conversations.check_message``,
  kept in the patient's Sent folder (their quota), delivered with ``Delivery`` (local professional) or
  through the outbound queue's hook (a professional at a peer operator), then linked to its conversation.
- Message bodies are hostile: text is returned as text (HTML parts reduced to their text), to be
  escaped by the caller; they are never logged nor put in audit events.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.policy
import email.utils
import hashlib
import re
import secrets
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any, ClassVar

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from directory.ins import InvalidINS, validate_ins
from directory.models import Patient, Structure
from directory.patients import PatientError, display_name_for, validate_contact_email, validate_phone
from directory.search import M as DirectoryMailbox
from directory.search import entry_columns, joined, to_entry
from directory.text import fold
from mailserver import accounts, alerts, conversations, large_files, quota
from mailserver.audit import Audit
from mailserver.auth import generate_app_password
from mailserver.charsets import decode_text
from mailserver.conversation_models import (
    CLOSED,
    Conversation,
    ConversationMessage,
    PortalInvite,
    PortalSession,
)
from mailserver.db.models import Domain, Folder, Mailbox, Message, utcnow
from mailserver.delivery import Delivery, EnqueueHook
from mailserver.headers import HeaderView, decode_header
from mailserver.policy import LocalTarget, Refusal, route_recipient
from mailserver.portal import factors, previews
from mailserver.portal.errors import PortalError
from mailserver.runtime import Runtime
from mailserver.smtp import paths
from mailserver.store import mime

INVITE_LIFETIME = dt.timedelta(days=7)
SESSION_MAX_AGE = dt.timedelta(hours=12)
MIN_PASSWORD = 10
MAX_ATTACHMENTS = 10
MAX_TEXT = 100_000
MAX_SUBJECT = 200
MAX_QUERY = 100
SIGNATURE_TYPES = {("application", "pkcs7-signature"), ("application", "x-pkcs7-signature")}


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- accounts


async def _patient_mailbox(rt: Runtime, ins: str) -> Mailbox | None:
    """The PAT mailbox ``ins@<a patient domain>``, looked up in every hosted patient domain."""
    async with rt.db.read() as session:
        return (
            await session.execute(
                select(Mailbox)
                .join(Domain, Domain.id == Mailbox.domain_id)
                .where(
                    Domain.patients.is_(True), Mailbox.type == "PAT", Mailbox.address.like(f"{ins.lower()}@%")
                )
                .order_by(Mailbox.id)
                .limit(1)
            )
        ).scalar_one_or_none()


async def invite(rt: Runtime, ins: str) -> tuple[str, str, dt.datetime]:
    """A fresh one-time activation code for the patient (earlier unused codes stop working).

    The patient's mailbox is created in the patient domain when it does not exist yet and exactly one
    patient domain is hosted. Returns (address, code, expiry); only the code's hash is kept.
    """
    try:
        ins = validate_ins(ins)
    except InvalidINS as exc:
        raise accounts.AccountError(str(exc)) from None
    mb = await _patient_mailbox(rt, ins)
    if mb is None:
        domains = [d.name for d in await accounts.list_domains(rt) if d.patients]
        if len(domains) != 1:
            raise accounts.AccountError(
                f"no mailbox for INS {ins}: add it with `caducee mailbox add {ins.lower()}@DOMAIN --type PAT`"
            )
        await accounts.add_mailbox(rt, f"{ins.lower()}@{domains[0]}", "PAT")
        mb = await _patient_mailbox(rt, ins)
        assert mb is not None
    code = generate_app_password()
    expires = utcnow() + INVITE_LIFETIME
    async with rt.db.write() as session:
        await session.execute(
            delete(PortalInvite).where(PortalInvite.mailbox_id == mb.id, PortalInvite.used_at.is_(None))
        )
        session.add(
            PortalInvite(mailbox_id=mb.id, code_hash=_sha(code), created_at=utcnow(), expires_at=expires)
        )
    await rt.audit.record("admin", "admin", "", f"patient invite {mb.address}", "code issued")
    return mb.address, code, expires


async def send_invite(rt: Runtime, ins: str) -> tuple[str, int, dt.datetime]:
    """``invite``, with the activation link e-mailed to the patient's personal address through
    ``[relay]`` (the queue, with its retries) instead of shown. Refused, with nothing changed, when the
    patient has no e-mail on record or the operator no relay or portal address. Returns (address,
    queue entry, expiry)."""
    try:
        key = validate_ins(ins)
    except InvalidINS as exc:
        raise accounts.AccountError(str(exc)) from None
    async with rt.db.read() as session:
        patient = await session.get(Patient, key)
    if patient is None or not patient.email:
        raise accounts.AccountError(
            f"no personal e-mail on record for INS {key}: add one with `caducee patient edit {key} --email"
            " ADDR`, or run the command without --send and give the code in person"
        )
    if not rt.settings.relay.host or not rt.settings.patients.portal_url:
        raise accounts.AccountError("--send needs [relay] host and [patients] portal_url set")
    address, code, expires = await invite(rt, key)
    to = patient.email
    link = f"{rt.settings.patients.portal_url.rstrip('/')}/activation?code={code}"
    text = (
        "Votre établissement de santé vous a ouvert une messagerie de santé sécurisée.\n\n"
        f"Pour l'activer, ouvrez ce lien et choisissez votre mot de passe :\n{link}\n\n"
        f"Munissez-vous de votre identifiant national de santé (INS). Ce lien est valable jusqu'au "
        f"{expires:%d/%m/%Y} et ne sert qu'une fois.\n\n"
        "Si vous n'attendiez pas ce message, ignorez-le.\n"
    )
    data = alerts.personal_mail(rt, to, "Activez votre messagerie de santé", text)

    def work(session: Session) -> int:
        entry = alerts.queue_personal(session, rt, to, data)
        Audit.record_in(
            session, "admin", "admin", "", f"patient invite {address}", f"link e-mailed (queue entry {entry})"
        )
        return entry

    entry = await rt.db.run_write(work)
    rt.queue.wake()
    return address, entry, expires


def check_password(password: str) -> None:
    """The portal's password policy (activation and reset)."""
    if len(password) < MIN_PASSWORD:
        raise PortalError(400, f"Le mot de passe doit comporter au moins {MIN_PASSWORD} caractères.")


async def activate(rt: Runtime, ins: str, code: str, password: str, remote: str) -> None:
    """Set the patient's password with a one-time activation code. Wrong codes count towards the
    login's lock-out (``[auth] max_failures`` for the account, ``max_failures_per_ip`` for the client,
    for ``[auth] lockout``): while locked, even the right code is refused, and not spent."""
    check_password(password)
    try:
        ins = validate_ins(ins)
    except InvalidINS:
        raise PortalError(400, "Identifiant national de santé (INS) invalide.") from None
    mb = await _patient_mailbox(rt, ins)
    account = mb.address if mb else f"{ins.lower()}@patient"
    if not await rt.auth.attempt(account, remote, "portal activation"):
        raise PortalError(429, factors.LOCKED)
    now = utcnow()
    async with rt.db.write() as session:
        row = (
            await session.execute(
                select(PortalInvite)
                .where(PortalInvite.code_hash == _sha(code.strip().lower()))
                .with_for_update()
            )
        ).scalar_one_or_none()
        valid = row is not None and mb is not None and row.mailbox_id == mb.id
        if not valid or row is None or row.used_at is not None or row.expires_at <= now:
            failure = True
        else:
            failure = False
            row.used_at = now
    if failure or mb is None:
        await rt.audit.record(f"{ins.lower()}", "activation", remote, "portal activation", "refused")
        raise PortalError(400, "Code d'activation invalide, déjà utilisé ou expiré.")
    await accounts.set_password(rt, mb.address, password)
    await rt.auth.succeeded(
        mb.address, remote, (mb.address, "activation", remote, "portal activation", "password set")
    )


@dataclass(frozen=True)
class SessionInfo:
    token: str
    mailbox_id: int
    address: str
    csrf: str
    expires_at: dt.datetime


async def login(
    rt: Runtime, ins: str, password: str, remote: str, device: str = ""
) -> SessionInfo | factors.Challenge:
    """INS + password → a new session, or the second step it still needs (``[portal] second_factor``;
    ``device`` is the browser's trusted-device cookie). Failures count towards the shared lock-out."""
    try:
        ins = validate_ins(ins)
    except InvalidINS:
        raise PortalError(401, "Identifiant ou mot de passe incorrect.") from None
    mb = await _patient_mailbox(rt, ins)
    address = mb.address if mb else f"{ins.lower()}@patient"
    outcome = await rt.auth.authenticate(address, password, remote, "portal")
    if outcome.reason == "locked":
        raise PortalError(429, factors.LOCKED)
    if not outcome.ok or outcome.mailbox_id is None or outcome.address is None:
        raise PortalError(401, "Identifiant ou mot de passe incorrect.")
    pending = await factors.after_password(rt, outcome.mailbox_id, outcome.address, remote, device)
    if pending is not None:
        return pending
    return await open_session(rt, outcome.mailbox_id, outcome.address, remote)


async def second_step(rt: Runtime, token: str, code: str, remote: str) -> SessionInfo:
    """The code of a pending login (``factors.verify``) → the session."""
    passed = await factors.verify(rt, token, code, factors.LOGIN, remote)
    assert passed.mailbox_id is not None
    return await open_session(rt, passed.mailbox_id, passed.account, remote)


async def open_session(rt: Runtime, mailbox_id: int, address: str, remote: str) -> SessionInfo:
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = utcnow()
    expires = now + dt.timedelta(seconds=rt.settings.portal.session_lifetime)
    async with rt.db.write() as session:
        await session.execute(delete(PortalSession).where(PortalSession.expires_at <= now))
        session.add(
            PortalSession(
                token_hash=_sha(token),
                mailbox_id=mailbox_id,
                csrf=csrf,
                remote=remote[:100],
                created_at=now,
                expires_at=expires,
            )
        )
    return SessionInfo(token, mailbox_id, address, csrf, expires)


async def must_enrol(rt: Runtime, info: SessionInfo) -> bool:
    """Under ``second_factor = "totp"`` a patient who signed in by e-mailed code must enrol an app
    before anything else."""
    return rt.settings.portal.second_factor == "totp" and not await factors.enrolled(rt, info.mailbox_id)


# ---------------------------------------------------------------------------------------------- reset


async def request_reset(rt: Runtime, ins: str, remote: str) -> factors.Challenge:
    """Forgotten password, first step: the same answer whether the INS is known or not."""
    try:
        ins = validate_ins(ins)
    except InvalidINS:
        raise PortalError(400, "Identifiant national de santé (INS) invalide.") from None
    mb = await _patient_mailbox(rt, ins)
    address = mb.address if mb else f"{ins.lower()}@patient"
    return await factors.open_reset(rt, ins, mb.id if mb else None, address, remote)


async def reset_password(rt: Runtime, token: str, code: str, password: str, remote: str) -> str:
    """Forgotten password, second step: the e-mailed code, then the new password (the activation's
    policy). Every trusted device and every portal session of the account end. Returns the INS."""
    check_password(password)
    passed = await factors.verify(rt, token, code, factors.RESET, remote)
    assert passed.mailbox_id is not None
    await accounts.set_password(rt, passed.account, password)

    def work(session: Session) -> None:
        factors.forget_devices_in(session, passed.mailbox_id or 0)
        session.execute(delete(PortalSession).where(PortalSession.mailbox_id == passed.mailbox_id))
        Audit.record_in(
            session, passed.account, "password-reset", remote, "portal reset", "password set, sessions ended"
        )

    await rt.db.run_write(work)
    return passed.account.partition("@")[0].upper()


CONTACT_FIELDS = {"email": "alert e-mail", "phone": "phone"}
CONTACT_CHANGED_SUBJECT = "Votre adresse de contact a été modifiée"


def _contact_values(changes: dict[str, str | None]) -> dict[str, str | None]:
    """``changes`` (``email``, ``phone``: a value, or empty/None to remove it) normalised as the
    operator's ``caducee patient edit`` does; PortalError 400 in French otherwise."""
    values: dict[str, str | None] = {}
    try:
        if "email" in changes:
            values["email"] = validate_contact_email(changes["email"])
    except PatientError:
        raise PortalError(400, "Adresse électronique invalide (par exemple prenom.nom@exemple.fr).") from None
    try:
        if "phone" in changes:
            values["phone"] = validate_phone(changes["phone"])
    except PatientError:
        raise PortalError(
            400, "Numéro de téléphone invalide (par exemple 0612345678 ou +33612345678)."
        ) from None
    return values


def _contact_notice(rt: Runtime, to: str) -> bytes:
    text = (
        "L'adresse électronique enregistrée pour votre messagerie de santé vient d'être modifiée : les "
        "alertes de nouveau message et les codes de connexion partiront désormais vers la nouvelle "
        "adresse.\n\nSi vous n'êtes pas à l'origine de ce changement, contactez sans attendre votre "
        "établissement de santé.\n"
    )
    return alerts.personal_mail(rt, to, CONTACT_CHANGED_SUBJECT, text)


async def change_contact(
    rt: Runtime, info: SessionInfo, password: str, changes: dict[str, str | None], remote: str, via: str
) -> bool:
    """The patient changes the personal e-mail (where alerts and e-mailed login codes go) or the phone
    of their own record. A value that really changes needs the current password: a stolen session
    alone must not redirect the second factor. It is checked as a login (``[auth]`` lock-out: 429 once
    locked, 403 when wrong). Audited (``patient-contact``, naming the fields, not the values); the
    former address, when there was one and a relay is set, is told of a new one. False: no record."""
    values = _contact_values(changes)
    ins = info.address.partition("@")[0].upper()
    async with rt.db.read() as session:
        patient = await session.get(Patient, ins)
    if patient is None:
        return False
    if all(getattr(patient, k) == v for k, v in values.items()):
        return True  # the same details sent back: nothing to confirm
    if not password:  # never right: refused without spending one of the lock-out's tries
        raise PortalError(400, "Indiquez votre mot de passe actuel (current_password) pour ce changement.")
    outcome = await rt.auth.authenticate(info.address, password, remote, "portal-confirm")
    if outcome.reason == "locked":
        raise PortalError(429, factors.LOCKED)
    if not outcome.ok or outcome.address != info.address:
        raise PortalError(403, "Mot de passe actuel incorrect.")

    def work(session: Session) -> bool:
        row = session.get(Patient, ins, with_for_update=True)
        if row is None:
            return False
        former = row.email
        done = []
        for name, value in values.items():
            if getattr(row, name) != value:
                done.append(f"{CONTACT_FIELDS[name]} {'removed' if value is None else 'changed'}")
                setattr(row, name, value)
        if not done:
            return True
        row.updated_at = utcnow()
        response = "ok"
        if former and former != row.email and rt.settings.relay.host:
            entry = alerts.queue_personal(session, rt, former, _contact_notice(rt, former))
            response = f"ok, former address told (queue entry {entry})"
        Audit.record_in(
            session, info.address, "patient-contact", remote, f"{via} {', '.join(done)}", response
        )
        return True

    found = bool(await rt.db.run_write(work))
    rt.queue.wake()
    return found


async def resume(rt: Runtime, token: str) -> SessionInfo | None:
    """The live session for ``token``, its idle expiry pushed back; None when unknown or expired."""
    if not token:
        return None
    now = utcnow()
    async with rt.db.write() as session:
        row = await session.get(PortalSession, _sha(token), with_for_update=True)
        if row is None:
            return None
        if row.expires_at <= now or now - row.created_at > SESSION_MAX_AGE:
            await session.delete(row)
            return None
        mb = await session.get(Mailbox, row.mailbox_id)
        if mb is None or not mb.enabled:
            await session.delete(row)
            return None
        row.expires_at = now + dt.timedelta(seconds=rt.settings.portal.session_lifetime)
        return SessionInfo(token, row.mailbox_id, mb.address, row.csrf, row.expires_at)


async def logout(rt: Runtime, token: str) -> None:
    async with rt.db.write() as session:
        await session.execute(delete(PortalSession).where(PortalSession.token_hash == _sha(token)))


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Professional:
    address: str
    name: str
    profession: str


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    subject: str
    state: str
    opened_at: dt.datetime
    closed_at: dt.datetime | None
    last_at: dt.datetime
    messages: int
    unread: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "state": self.state,
            "opened_at": self.opened_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "last_at": self.last_at.isoformat(),
            "messages": self.messages,
            "unread": self.unread,
        }


@dataclass(frozen=True)
class Group:
    professional: Professional
    conversations: list[ConversationSummary]

    @property
    def unread(self) -> int:
        return sum(c.unread for c in self.conversations)


@dataclass(frozen=True)
class QuotaView:
    used_bytes: int
    limit_bytes: int | None

    @property
    def percent(self) -> int | None:
        if not self.limit_bytes:
            return None
        return min(100, round(100 * self.used_bytes / self.limit_bytes))

    def as_dict(self) -> dict[str, Any]:
        return {"used_bytes": self.used_bytes, "limit_bytes": self.limit_bytes, "percent": self.percent}


@dataclass(frozen=True)
class Overview:
    groups: list[Group]
    quota: QuotaView

    @property
    def unread(self) -> int:
        return sum(g.unread for g in self.groups)


@dataclass(frozen=True)
class AttachmentInfo:
    n: int
    filename: str
    content_type: str
    size: int
    preview: bool = False  # shown inline: an allowed image type whose bytes agree (``previews``)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "filename": self.filename, "content_type": self.content_type, "size": self.size}


@dataclass(frozen=True)
class MessageView:
    id: int
    direction: str
    kind: str
    author: str
    at: dt.datetime
    subject: str
    text: str
    unread: bool
    attachments: list[AttachmentInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.direction,
            "kind": self.kind,
            "author": self.author,
            "at": self.at.isoformat(),
            "subject": self.subject,
            "text": self.text,
            "unread": self.unread,
            "attachments": [a.as_dict() for a in self.attachments],
        }


@dataclass(frozen=True)
class ConversationDetail:
    summary: ConversationSummary
    professional: Professional
    messages: list[MessageView]

    @property
    def closed(self) -> bool:
        return self.summary.state == CLOSED


async def professional_identity(rt: Runtime, conv: Conversation) -> Professional:
    """Name and profession from the national directory; else what the professional's mail said."""
    async with rt.db.read() as session:
        row = (
            await session.execute(
                joined(select(*entry_columns())).where(DirectoryMailbox.address == conv.professional)
            )
        ).first()
        local = (
            await session.get(Mailbox, conv.professional_mailbox_id) if conv.professional_mailbox_id else None
        )
    if row is not None:
        entry = to_entry(row)
        person = " ".join(p for p in (entry.civility, entry.first_name, entry.last_name) if p)
        name = person or entry.display_name or entry.organisation
        profession = (
            ", ".join(p for p in (entry.profession, entry.skill) if p) or entry.service or entry.organisation
        )
        if name:
            return Professional(conv.professional, name, profession)
    name = conv.professional_name or (local.display_name if local else "") or "Professionnel de santé"
    return Professional(conv.professional, name, "")


async def _seen_state(
    rt: Runtime, mailbox_id: int, blob_ids: Sequence[int]
) -> dict[int, tuple[int, int, bool]]:
    """For each blob the patient holds: (folder id, uid, seen)."""
    if not blob_ids:
        return {}
    async with rt.db.read() as session:
        rows = await session.execute(
            select(Message.blob_id, Message.folder_id, Message.uid, Message.flags)
            .join(Folder, Folder.id == Message.folder_id)
            .where(Folder.mailbox_id == mailbox_id, Message.blob_id.in_(list(set(blob_ids))))
        )
        return {b: (f, u, "\\Seen" in flags.split()) for b, f, u, flags in rows}


def _summary(
    c: Conversation, rows: list[ConversationMessage], seen: dict[int, tuple[int, int, bool]]
) -> ConversationSummary:
    unread = sum(1 for m in rows if m.direction == "in" and m.blob_id in seen and not seen[m.blob_id][2])
    last = max((m.at for m in rows), default=c.opened_at)
    return ConversationSummary(
        c.public_id, c.subject, c.state, c.opened_at, c.closed_at, last, len(rows), unread
    )


async def _usage(rt: Runtime, mailbox_id: int) -> QuotaView:
    usage, limits = await rt.store.usage(mailbox_id)
    return QuotaView(usage.bytes, limits.storage or None)


async def overview(rt: Runtime, mailbox_id: int) -> Overview:
    """The patient's conversations grouped by professional (most recent activity first)."""
    async with rt.db.read() as session:
        convs = list(
            (
                await session.execute(
                    select(Conversation).where(Conversation.patient_mailbox_id == mailbox_id)
                )
            ).scalars()
        )
        msgs = list(
            (
                await session.execute(
                    select(ConversationMessage)
                    .where(ConversationMessage.conversation_id.in_([c.id for c in convs]))
                    .order_by(ConversationMessage.id)
                )
            ).scalars()
        )
    seen = await _seen_state(rt, mailbox_id, [m.blob_id for m in msgs if m.blob_id is not None])
    by_pro: dict[str, tuple[Professional, list[ConversationSummary]]] = {}
    for c in convs:
        summary = _summary(c, [m for m in msgs if m.conversation_id == c.id], seen)
        if c.professional not in by_pro:
            by_pro[c.professional] = (await professional_identity(rt, c), [])
        by_pro[c.professional][1].append(summary)
    groups = [
        Group(pro, sorted(items, key=lambda s: (s.state != "open", -s.last_at.timestamp())))
        for pro, items in by_pro.values()
    ]
    groups.sort(key=lambda g: -max(s.last_at.timestamp() for s in g.conversations))
    return Overview(groups, await _usage(rt, mailbox_id))


async def _conversation(rt: Runtime, mailbox_id: int, public_id: str) -> Conversation:
    async with rt.db.read() as session:
        conv = (
            await session.execute(
                select(Conversation).where(
                    Conversation.public_id == public_id, Conversation.patient_mailbox_id == mailbox_id
                )
            )
        ).scalar_one_or_none()
    if conv is None:
        raise PortalError(404, "Cette conversation n'existe pas.")
    return conv


def _leaves(node: dict[str, Any], path: list[int]) -> Iterator[tuple[list[int], dict[str, Any]]]:
    if node["type"] == "multipart":
        for i, child in enumerate(node["parts"]):
            yield from _leaves(child, [*path, i + 1])
    else:
        yield path or [1], node


def _param(params: list[list[str]] | None, name: str) -> str | None:
    return next((v for k, v in params or [] if k == name), None)


def _filename(node: dict[str, Any]) -> str | None:
    disposition = node.get("disposition") or [None, None]
    name = _param(disposition[1], "filename") or _param(node.get("params"), "name")
    return decode_header(name) if name else None


def _is_attachment(node: dict[str, Any]) -> bool:
    disposition = (node.get("disposition") or [""])[0]
    return disposition == "attachment" or _filename(node) is not None or node["type"] != "text"


_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


def safe_filename(name: str | None, n: int) -> str:
    """A file name that is only a name: no directories, control or reserved characters, no leading dot."""
    cleaned = _UNSAFE_NAME.sub("_", unicodedata.normalize("NFC", name or "")).strip(" ._")
    return cleaned[-150:] if cleaned else f"piece-jointe-{n}"


class _TextOfHTML(HTMLParser):
    """The visible text of an HTML part; scripts, styles and every attribute are dropped."""

    BLOCK: ClassVar[frozenset[str]] = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_to_text(html: str) -> str:
    parser = _TextOfHTML()
    parser.feed(html)
    parser.close()
    return re.sub(r"\n{3,}", "\n\n", "".join(parser.out)).strip()


def _decode(raw: bytes, meta: dict[str, Any], path: list[int], node: dict[str, Any]) -> str:
    data = mime.binary_section(raw, meta, path)
    if data is None:
        data = raw[node["part"][2] : node["part"][3]]
    return decode_text(data, _param(node.get("params"), "charset"))


def attachment_parts(meta: dict[str, Any]) -> list[tuple[AttachmentInfo, list[int], dict[str, Any]]]:
    """A message's attachments (signatures left out), numbered from 1, with their MIME part."""
    out = []
    for path, node in _leaves(meta["bodystructure"], []):
        if (node["type"], node["subtype"]) in SIGNATURE_TYPES or not _is_attachment(node):
            continue
        n = len(out) + 1
        info = AttachmentInfo(
            n, safe_filename(_filename(node), n), f"{node['type']}/{node['subtype']}", node["size"]
        )
        out.append((info, path, node))
    return out


def _part(raw: bytes, meta: dict[str, Any], path: list[int], node: dict[str, Any]) -> bytes:
    """A leaf part's content, transfer-decoded."""
    data = mime.binary_section(raw, meta, path)
    return raw[node["part"][2] : node["part"][3]] if data is None else data


def _shown(
    info: AttachmentInfo, raw: bytes, meta: dict[str, Any], path: list[int], node: dict[str, Any]
) -> AttachmentInfo:
    """An attachment as the patient sees it listed: its decoded size, and whether it previews."""
    size = mime.binary_size(raw, meta, path)
    preview = previews.may_preview(info.content_type) and previews.previewable(
        info.content_type, _part(raw, meta, path, node)
    )
    return dataclasses.replace(info, size=info.size if size is None else size, preview=preview)


def _body_text(raw: bytes, meta: dict[str, Any]) -> str:
    """The message's text with ``\n`` line ends: mail received over SMTP is stored with CRLF."""
    leaves = [(p, n) for p, n in _leaves(meta["bodystructure"], []) if not _is_attachment(n)]
    for subtype in ("plain", "html"):
        for path, node in leaves:
            if node["subtype"] == subtype:
                text = _decode(raw, meta, path, node).replace("\r\n", "\n")
                return (html_to_text(text) if subtype == "html" else text)[:MAX_TEXT]
    return ""


def _date(meta: dict[str, Any], fallback: dt.datetime) -> dt.datetime:
    value = meta["headers"].get("date")
    return dt.datetime.fromisoformat(value) if value else fallback


async def read_conversation(
    rt: Runtime,
    mailbox_id: int,
    public_id: str,
    mark_read: bool = True,
    reader: tuple[str, str, str] | None = None,
) -> ConversationDetail:
    """A conversation as a thread; its unread messages become read (``\\Seen`` in the patient's mailbox).
    ``reader`` (address, remote, channel) is audited as one "read" event naming the messages shown."""
    conv = await _conversation(rt, mailbox_id, public_id)
    async with rt.db.read() as session:
        rows = list(
            (
                await session.execute(
                    select(ConversationMessage)
                    .where(ConversationMessage.conversation_id == conv.id)
                    .order_by(ConversationMessage.id)
                )
            ).scalars()
        )
    held = [m.blob_id for m in rows if m.blob_id is not None]
    seen = await _seen_state(rt, mailbox_id, held)
    metas = await rt.store.blob_metas([b for b in held if b in seen])
    pro = await professional_identity(rt, conv)
    messages = []
    for m in rows:
        if m.blob_id not in seen or m.blob_id not in metas:
            continue
        meta = metas[m.blob_id]
        raw = await rt.store.read_blob(m.blob_id)
        files = [_shown(info, raw, meta, p, n) for info, p, n in attachment_parts(meta)]
        author = "Vous" if m.direction == "out" else "Messagerie Caducée" if m.kind == "notice" else pro.name
        messages.append(
            MessageView(
                m.id,
                m.direction,
                m.kind,
                author,
                _date(meta, m.at),
                meta["headers"].get("subject") or "",
                _body_text(raw, meta),
                m.direction == "in" and not seen[m.blob_id][2],
                files,
            )
        )
    if mark_read:
        by_folder: dict[int, list[int]] = {}
        for r in rows:
            if r.direction == "in" and r.blob_id in seen and not seen[r.blob_id][2]:
                folder_id, uid, _seen = seen[r.blob_id]
                by_folder.setdefault(folder_id, []).append(uid)
        for folder_id, uids in by_folder.items():
            await rt.store.set_flags(folder_id, uids, "add", ["\\Seen"])
    summary = _summary(conv, rows, seen)
    if reader is not None and messages:
        shown = ",".join(str(m.id) for m in messages)
        await rt.audit.read(reader[0], reader[1], reader[2], f"conversation {public_id} messages {shown}")
    return ConversationDetail(summary, pro, messages)


@dataclass(frozen=True)
class Download:
    filename: str
    content_type: str
    data: bytes


async def attachment(
    rt: Runtime, mailbox_id: int, message_id: int, n: int, reader: tuple[str, str, str] | None = None
) -> Download:
    """Attachment ``n`` (from 1) of a conversation message the patient holds, decoded; ``reader``
    (address, remote, channel) is audited as a "read" event."""
    async with rt.db.read() as session:
        row = (
            await session.execute(
                select(ConversationMessage.blob_id)
                .join(Conversation, Conversation.id == ConversationMessage.conversation_id)
                .where(ConversationMessage.id == message_id, Conversation.patient_mailbox_id == mailbox_id)
            )
        ).scalar_one_or_none()
    seen = await _seen_state(rt, mailbox_id, [row] if row is not None else [])
    if row is None or row not in seen:
        raise PortalError(404, "Cette pièce jointe n'existe pas.")
    meta = await rt.store.blob_meta(row)
    found = [a for a in attachment_parts(meta) if a[0].n == n]
    if not found:
        raise PortalError(404, "Cette pièce jointe n'existe pas.")
    info, path, node = found[0]
    data = _part(await rt.store.read_blob(row), meta, path, node)
    if reader is not None:
        await rt.audit.read(reader[0], reader[1], reader[2], f"message {message_id} attachment {n}")
    return Download(info.filename, info.content_type, data)


# ---------------------------------------------------------------------------------------------- replying


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


async def _patient_from(rt: Runtime, mb: Mailbox) -> str:
    async with rt.db.read() as session:
        name = await display_name_for(session, mb.address)
    return email.utils.formataddr((name or mb.display_name or "", mb.address))


def _build_message(
    rt: Runtime,
    from_: str,
    to: tuple[str, str],
    subject: str,
    thread: list[str],
    text: str,
    files: Sequence[Upload],
) -> EmailMessage:
    """The patient's message as any mail client would write it; ``to`` is (name, address)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = from_
    msg["To"] = email.utils.formataddr(to)
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(utcnow())
    msg["Message-ID"] = f"<{secrets.token_hex(16)}@{rt.settings.server.hostname}>"
    if thread:
        msg["In-Reply-To"] = thread[-1]
        msg["References"] = " ".join(thread[-20:])
    msg.set_content(text or "")
    for f in files:
        maintype, _, subtype = f.content_type.partition("/")
        if not maintype or not subtype or not re.fullmatch(r"[\w.+-]+", maintype + subtype):
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(f.data, maintype=maintype, subtype=subtype, filename=safe_filename(f.filename, 1))
    return msg


async def _remove_sent(rt: Runtime, mailbox_id: int, uid: int) -> None:
    folder = await rt.store.folder(mailbox_id, "Sent")
    await rt.store.set_flags(folder.id, [uid], "add", ["\\Deleted"])
    await rt.store.expunge(folder.id, [uid])


def _check_content(text: str, files: Sequence[Upload]) -> str:
    text = text.replace("\r\n", "\n").strip()
    if any((ord(c) < 32 and c not in "\t\n\r\f") or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise PortalError(400, "Votre message contient des caractères invalides.")
    if not text and not files:
        raise PortalError(400, "Votre message est vide.")
    if len(text) > MAX_TEXT:
        raise PortalError(413, f"Votre message est trop long : {MAX_TEXT} caractères au plus.")
    if len(files) > MAX_ATTACHMENTS:
        raise PortalError(413, f"Au plus {MAX_ATTACHMENTS} pièces jointes par message.")
    return text


@dataclass(frozen=True)
class Sent:
    blob_id: int
    conversations: list[str]
    queued: bool


async def _send(
    rt: Runtime, mb: Mailbox, to: str, msg: EmailMessage, remote: str, enqueue: EnqueueHook | None, what: str
) -> Sent:
    """One patient message to one professional, under the rules SMTP applies (``check_authors``,
    ``conversations.check_message``, ``route_recipient``): kept in the patient's Sent folder first
    (their quota), then delivered and committed (durable) — if delivery is refused the Sent copy is
    removed again, so the thread never shows a message nobody received — then followed in its
    conversation. A refusal by the conversation rules is audited (``portal-refused``) and answered 403."""
    data = bytes(msg)
    headers = HeaderView.parse(data)
    try:
        await accounts.check_authors(rt, mb.id, mb.address, headers)
    except Refusal as refusal:
        await rt.audit.record(mb.address, "portal-refused", remote, what, refusal.smtp)
        raise PortalError(403, "Vous ne pouvez écrire qu'en votre nom.") from None
    refused: Refusal | None = None
    explanation = ""
    async with rt.db.read() as session:
        try:
            await conversations.check_message(session, mb.address, [to], headers)
            target = await route_recipient(session, to, authenticated=True)
        except conversations.ConversationRefused as exc:
            refused, explanation = exc, exc.explanation
        except Refusal as exc:
            refused, explanation = exc, "Ce professionnel ne peut pas être joint pour le moment."
    if refused is not None:
        await rt.audit.record(mb.address, "portal-refused", remote, what, refused.smtp)
        status = 403 if isinstance(refused, conversations.ConversationRefused) else 502
        raise PortalError(status, explanation)
    if isinstance(target, LocalTarget):  # attachments above [large_files] threshold go by link
        try:
            data, _files = await large_files.rewrite(rt, mb.id, data, [to])
        except quota.OverQuota:
            raise PortalError(507, "Votre espace de stockage ne peut pas contenir ce fichier.") from None
    if len(data) > rt.settings.limits.message_size:
        raise PortalError(
            413, f"Message trop volumineux : {rt.settings.limits.message_size // (1024 * 1024)} Mo au plus."
        )
    usage, limits = await rt.store.usage(mb.id)
    if quota.exceeded(usage, limits, len(data), 1):
        raise PortalError(507, "Votre espace de stockage est plein : supprimez des messages pour écrire.")
    try:
        _uidvalidity, [uid] = await rt.store.append(mb.id, "Sent", [(data, ["\\Seen"], None)])
    except quota.OverQuota:
        raise PortalError(
            507, "Votre espace de stockage est plein : supprimez des messages pour écrire."
        ) from None
    delivery = Delivery(rt, mb.address, source="portal", remote_addr=remote, enqueue=enqueue)
    try:
        if isinstance(target, LocalTarget):
            delivery.add_local(target)
        else:
            delivery.add_remote(target)
        await delivery.body(data)
        result = await delivery.commit()
    except Refusal:
        await delivery.abort()
        await _remove_sent(rt, mb.id, uid)
        raise PortalError(502, "Ce professionnel ne peut pas être joint pour le moment.") from None
    if result.refused:
        await _remove_sent(rt, mb.id, uid)
        raise PortalError(503, "La boîte de ce professionnel est pleine : réessayez plus tard.")
    if result.queued:
        rt.queue.wake()
    sent = await rt.store.folder(mb.id, "Sent")
    async with rt.db.read() as session:
        blob_id = (
            await session.execute(
                select(Message.blob_id).where(Message.folder_id == sent.id, Message.uid == uid)
            )
        ).scalar_one()
    touched = await conversations.record_message(rt, mb.address, [to], headers, blob_id=blob_id)
    return Sent(blob_id, touched, bool(result.queued))


async def _mailbox_row(rt: Runtime, mailbox_id: int) -> Mailbox:
    async with rt.db.read() as session:
        mb = await session.get(Mailbox, mailbox_id)
    assert mb is not None
    return mb


async def reply(
    rt: Runtime,
    mailbox_id: int,
    public_id: str,
    text: str,
    files: Sequence[Upload],
    remote: str,
    enqueue: EnqueueHook | None = None,
) -> int:
    """Answer within a conversation; returns the new message's id. 409 once the conversation is closed."""
    conv = await _conversation(rt, mailbox_id, public_id)
    if conv.state == CLOSED:
        raise PortalError(409, "Cette conversation est close : vous ne pouvez plus y répondre.")
    text = _check_content(text, files)
    mb = await _mailbox_row(rt, mailbox_id)
    async with rt.db.read() as session:
        thread = list(
            (
                await session.execute(
                    select(ConversationMessage.message_id)
                    .where(ConversationMessage.conversation_id == conv.id)
                    .order_by(ConversationMessage.id)
                )
            ).scalars()
        )
    pro = await professional_identity(rt, conv)
    subject = conv.subject if re.match(r"(?i)re\s*:", conv.subject) else f"Re: {conv.subject}".strip()
    msg = _build_message(
        rt, await _patient_from(rt, mb), (pro.name, pro.address), subject, thread, text, files
    )
    what = f"portal reply in conversation {conv.public_id} to <{conv.professional}>"
    sent = await _send(rt, mb, conv.professional, msg, remote, enqueue, what)
    await rt.audit.record(mb.address, "send", remote, what, "queued" if sent.queued else "delivered")
    async with rt.db.read() as session:
        return (
            await session.execute(
                select(ConversationMessage.id)
                .where(
                    ConversationMessage.conversation_id == conv.id,
                    ConversationMessage.blob_id == sent.blob_id,
                )
                .order_by(ConversationMessage.id.desc())
                .limit(1)
            )
        ).scalar_one()


# ---------------------------------------------------------------------------------------------- writing first


@dataclass(frozen=True)
class FirstContact:
    """A mailbox a patient may write to first: an ORG flagged ``accepts_patient_first`` (a pharmacy)."""

    address: str
    name: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"address": self.address, "name": self.name, "detail": self.detail}


def _first_contacts_query() -> Any:
    """The candidates, named from the national directory when it lists them (else the mailbox's name)."""
    name = func.coalesce(
        func.nullif(DirectoryMailbox.display_name, ""),
        func.nullif(Structure.trade_name, ""),
        func.nullif(Structure.legal_name, ""),
        func.nullif(Mailbox.display_name, ""),
        Mailbox.address,
    )
    return (
        select(Mailbox.address, name.label("name"), Structure.city, DirectoryMailbox.service)
        .outerjoin(DirectoryMailbox, DirectoryMailbox.address == Mailbox.address)
        .outerjoin(Structure, Structure.id == DirectoryMailbox.structure_id)
        .where(Mailbox.type == "ORG", Mailbox.enabled.is_(True), Mailbox.accepts_patient_first.is_(True))
        .order_by(func.lower(name), Mailbox.address)
    ), name


async def first_contacts(rt: Runtime, query: str = "") -> tuple[list[FirstContact], bool]:
    """Who the "Nouveau message" page offers, matching ``query`` (words of the name, city or address),
    at most ``[portal] first_contacts_max``; the flag is True when more match (the patient narrows the
    search). This only lists: ``conversations.check_message`` decides at sending."""
    limit = rt.settings.portal.first_contacts_max
    stmt, name = _first_contacts_query()
    for word in fold(query[:MAX_QUERY]).split()[:8]:
        stmt = stmt.where(
            or_(
                func.lower(name).contains(word, autoescape=True),
                DirectoryMailbox.search_text.contains(word, autoescape=True),
                Mailbox.address.contains(word, autoescape=True),
            )
        )
    async with rt.db.read() as session:
        rows = (await session.execute(stmt.limit(limit + 1))).all()
    contacts = [
        FirstContact(r.address, r.name, ", ".join(p for p in (r.service, r.city) if p)) for r in rows[:limit]
    ]
    return contacts, len(rows) > limit


async def _first_contact(rt: Runtime, address: str) -> FirstContact | None:
    stmt, _name = _first_contacts_query()
    async with rt.db.read() as session:
        row = (await session.execute(stmt.where(Mailbox.address == address))).first()
    return FirstContact(row.address, row.name, "") if row is not None else None


async def write_first(
    rt: Runtime,
    mailbox_id: int,
    to: str,
    subject: str,
    text: str,
    files: Sequence[Upload],
    remote: str,
    enqueue: EnqueueHook | None = None,
) -> str:
    """A patient's first message to a professional; returns the conversation's public id.

    Whether the patient may write first is ``conversations.check_message``'s decision, exactly as for a
    message submitted over SMTP: only an ORG mailbox flagged ``accepts_patient_first`` takes one (any
    other address, e.g. from a tampered form, is refused, audited as ``portal-refused``)."""
    to = to.strip().lower()[:320]
    subject = " ".join(subject.split())
    if not to:
        raise PortalError(400, "Choisissez le destinataire de votre message.")
    if paths.syntax_error(to):  # one address, as SMTP would take it (a tampered form)
        raise PortalError(400, "Ce destinataire n'est pas une adresse valide.")
    if not subject:
        raise PortalError(400, "Indiquez l'objet de votre message.")
    if not subject.isprintable():
        raise PortalError(400, "L'objet contient des caractères invalides.")
    if len(subject) > MAX_SUBJECT:
        raise PortalError(400, f"L'objet est trop long : {MAX_SUBJECT} caractères au plus.")
    text = _check_content(text, files)
    mb = await _mailbox_row(rt, mailbox_id)
    contact = await _first_contact(rt, to)
    msg = _build_message(
        rt, await _patient_from(rt, mb), (contact.name if contact else "", to), subject, [], text, files
    )
    what = f"portal first message to <{to}>"
    sent = await _send(rt, mb, to, msg, remote, enqueue, what)
    if not sent.conversations:  # the rules let it through, yet it follows no conversation: never expected
        raise PortalError(500, "Votre message a été envoyé mais n'apparaît dans aucune conversation.")
    public_id = sent.conversations[0]
    await rt.audit.record(
        mb.address,
        "send",
        remote,
        f"{what} in conversation {public_id}",
        "queued" if sent.queued else "delivered",
    )
    return public_id
