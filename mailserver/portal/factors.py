"""The portal's second factor and its one-time codes (issue 18): after INS + password, a code e-mailed
to the patient's personal address or an RFC 6238 authenticator app; trusted devices; the codes of a
password reset.

- A pending step (``PortalCode``) belongs to the browser holding its challenge cookie (only its
  SHA-256 is stored). An e-mailed code is 6 digits, kept as an HMAC under a key derived from the master
  key, compared in constant time; it lives ``[portal] code_lifetime`` and allows ``code_tries`` wrong
  tries, counted across the codes of one account within ``[auth] failure_window`` (a new login does
  not give new tries); the last one voids the step and locks the account through the shared lock-out
  (``Authenticator.lock``). At most one code e-mail per account and purpose per ``code_interval``.
- The authenticator app's secret is sealed (AES-256-GCM) with a key derived (HKDF) from the S/MIME
  master key ``[smime] key_file`` (the README's one secret file to protect and back up); a code's time
  step is recorded and an older or equal step is refused, so a code is never accepted twice.
- A trusted device carries a cookie MACed over the mailbox, an epoch, an expiry and the mailbox's
  current password hash: a new password (by any path) or a raised epoch revokes every such cookie.
- Codes and messages go to the personal address only through ``[relay]`` (``alerts.queue_personal``),
  written in the same transaction as the code.

``now`` is the clock of everything here: tests replace it to move time without sleeping.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyotp
import segno
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from directory.models import Patient
from mailserver import alerts
from mailserver.audit import Audit
from mailserver.conversation_models import PortalCode, PortalFactor
from mailserver.db.models import Mailbox, utcnow
from mailserver.portal.errors import PortalError
from mailserver.runtime import Runtime
from smime.keys import load_or_create_master_key

now: Callable[[], dt.datetime] = utcnow

LOGIN = "login"
RESET = "reset"
EMAIL = "email"
TOTP = "totp"
DIGITS = 6
LOCKED = "Trop de tentatives : votre compte est temporairement verrouillé. Réessayez plus tard."
NO_FACTOR = (
    "Votre compte n'a aucun second facteur de connexion (adresse électronique personnelle ou "
    "application d'authentification). Contactez votre établissement de santé pour en faire enregistrer un."
)
EXPIRED = "Ce code a expiré : recommencez pour en recevoir un nouveau."
_SEAL_AD = b"caducee-portal-totp-v1"
_keys: dict[str, tuple[bytes, bytes, bytes]] = {}


# ---------------------------------------------------------------------------------------------- keys


def _derived(rt: Runtime) -> tuple[bytes, bytes, bytes]:
    """(seal, code MAC, device MAC) keys, derived once per process from the master key file."""
    path = str(Path(rt.settings.smime.key_file))
    if path not in _keys:
        master = load_or_create_master_key(path)
        _keys[path] = tuple(  # type: ignore[assignment]
            HKDF(hashes.SHA256(), 32, salt=None, info=f"caducee portal {label}".encode()).derive(master)
            for label in ("totp seal", "code mac", "device mac")
        )
    return _keys[path]


def seal(rt: Runtime, mailbox_id: int, secret: str) -> bytes:
    nonce = os.urandom(12)
    ad = _SEAL_AD + str(mailbox_id).encode()
    return nonce + AESGCM(_derived(rt)[0]).encrypt(nonce, secret.encode(), ad)


def unseal(rt: Runtime, mailbox_id: int, sealed: bytes) -> str | None:
    """The secret, or None when it fails authentication (another master key, another mailbox's row)."""
    try:
        ad = _SEAL_AD + str(mailbox_id).encode()
        return AESGCM(_derived(rt)[0]).decrypt(sealed[:12], sealed[12:], ad).decode()
    except (InvalidTag, ValueError):
        return None


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _code_digest(rt: Runtime, code: str, salt: str | None = None) -> str:
    """``salt$HMAC(code)``: the code never appears in the database, and a leaked table without the
    master key cannot be searched through the million possible codes."""
    salt = salt or secrets.token_hex(8)
    mac = hmac.new(_derived(rt)[1], f"{salt}:{code}".encode(), hashlib.sha256).hexdigest()
    return f"{salt}${mac}"


def _code_matches(rt: Runtime, stored: str | None, code: str) -> bool:
    if not stored or "$" not in stored:
        _code_digest(rt, code)  # the same work either way
        return False
    return hmac.compare_digest(_code_digest(rt, code, stored.partition("$")[0]), stored)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------------------------------------- codes


@dataclass(frozen=True)
class Challenge:
    """A pending second step: ``token`` goes in the browser's cookie; ``method`` is what it awaits;
    ``hint`` the masked address the code went to (empty for a reset: nothing is revealed)."""

    token: str
    method: str
    hint: str = ""


def mask(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}{'•' * max(3, len(local) - 1)}@{domain}"


def _code_text(purpose: str, code: str, minutes: int) -> tuple[str, str]:
    if purpose == RESET:
        subject = "Réinitialisation de votre mot de passe"
        why = "Vous avez demandé à changer le mot de passe de votre messagerie de santé."
    else:
        subject = "Votre code de connexion"
        why = "Pour terminer votre connexion à votre messagerie de santé, saisissez ce code."
    text = (
        f"{why}\n\nVotre code : {code}\n\nIl est valable {minutes} minutes et ne sert qu'une fois.\n\n"
        "Si vous n'êtes pas à l'origine de cette demande, ignorez ce message ; ne communiquez ce code "
        "à personne.\n\nCe message est envoyé automatiquement, merci de ne pas y répondre.\n"
    )
    return subject, text


def _prune(session: Session, rt: Runtime, at: dt.datetime) -> None:
    keep = max(rt.settings.auth.failure_window, rt.settings.portal.code_lifetime)
    session.execute(delete(PortalCode).where(PortalCode.created_at < at - dt.timedelta(seconds=keep)))


def _spent_tries(session: Session, rt: Runtime, account: str, purpose: str, at: dt.datetime) -> int:
    """Wrong codes already tried for this account and purpose within ``[auth] failure_window``."""
    since = at - dt.timedelta(seconds=rt.settings.auth.failure_window)
    rows = session.execute(
        select(PortalCode.tries).where(
            PortalCode.account == account, PortalCode.purpose == purpose, PortalCode.created_at >= since
        )
    ).scalars()
    return max(rows, default=0)


def _open(
    session: Session,
    rt: Runtime,
    *,
    account: str,
    mailbox_id: int | None,
    purpose: str,
    method: str,
    email: str | None,
) -> tuple[str, int | None]:
    """Open a pending step for a new browser, in the caller's transaction; returns (challenge token,
    queue entry of the code e-mail or None). Earlier pending steps of the account and purpose end (their
    tries still count); an e-mail code asked again within ``code_interval`` is not sent again: the new
    browser takes over the pending code already on its way."""
    at = now()
    _prune(session, rt, at)
    token = secrets.token_urlsafe(32)
    challenge_hash = _sha(token)
    pending = list(
        session.execute(
            select(PortalCode)
            .where(
                PortalCode.account == account,
                PortalCode.purpose == purpose,
                PortalCode.ended_at.is_(None),
            )
            .with_for_update()
        ).scalars()
    )
    interval = dt.timedelta(seconds=rt.settings.portal.code_interval)
    for row in pending:
        recent = at - _aware(row.created_at) < interval and _aware(row.expires_at) > at
        if method == EMAIL and row.method == EMAIL and recent:
            row.challenge_hash = challenge_hash  # this browser takes over the code already sent
            return token, None
        row.ended_at = at
    tries = _spent_tries(session, rt, account, purpose, at)
    row = PortalCode(
        challenge_hash=challenge_hash,
        mailbox_id=mailbox_id,
        account=account,
        purpose=purpose,
        method=method,
        tries=tries,
        created_at=at,
        expires_at=at + dt.timedelta(seconds=rt.settings.portal.code_lifetime),
    )
    entry = None
    if method == EMAIL:
        code = f"{secrets.randbelow(10**DIGITS):0{DIGITS}d}"
        row.code_hash = _code_digest(rt, code)
        if email:
            subject, text = _code_text(purpose, code, max(1, int(rt.settings.portal.code_lifetime // 60)))
            entry = alerts.queue_personal(session, rt, email, alerts.personal_mail(rt, email, subject, text))
    session.add(row)
    return token, entry


def _patient_email(session: Session, address: str) -> str | None:
    patient = session.get(Patient, address.partition("@")[0].upper())
    return patient.email if patient is not None and patient.email else None


async def after_password(
    rt: Runtime, mailbox_id: int, address: str, remote: str, device: str = ""
) -> Challenge | None:
    """What the password step leads to: None (no second factor: off, or a trusted device) or the
    pending step the browser must finish. A patient with no usable factor is refused (403), audited."""
    mode = rt.settings.portal.second_factor
    if mode == "off":
        return None
    if device and await trusted(rt, mailbox_id, device):
        await rt.audit.record(address, "second-factor", remote, "portal login", "trusted device")
        return None
    relay = bool(rt.settings.relay.host)

    def work(session: Session) -> Challenge | None:
        factor = session.get(PortalFactor, mailbox_id)
        if factor is not None and factor.totp_secret is not None and mode in (TOTP, "email_or_totp"):
            token, _ = _open(
                session, rt, account=address, mailbox_id=mailbox_id, purpose=LOGIN, method=TOTP, email=None
            )
            return Challenge(token, TOTP)
        email = _patient_email(session, address)
        if email is None or not relay:
            why = "no personal e-mail and no authenticator app" if email is None else "no [relay] host"
            Audit.record_in(
                session, address, "login-failure", remote, f"portal second factor ({why})", "refused"
            )
            return None
        token, entry = _open(
            session, rt, account=address, mailbox_id=mailbox_id, purpose=LOGIN, method=EMAIL, email=email
        )
        sent = f"queue entry {entry}" if entry is not None else "code already sent"
        Audit.record_in(session, address, "second-factor", remote, "portal login code by e-mail", sent)
        return Challenge(token, EMAIL, mask(email))

    found = await rt.db.run_write(work)
    if found is None:
        raise PortalError(403, NO_FACTOR)
    if found.method == EMAIL:
        rt.queue.wake()
    return found


async def open_reset(rt: Runtime, ins: str, mailbox_id: int | None, address: str, remote: str) -> Challenge:
    """A password reset asked for ``ins``: a code goes to the patient's personal address when there is
    one (and the account is not locked), and the browser gets a challenge in every case, so nothing in
    the answer says whether the INS is known."""
    locked = await rt.auth.is_locked(address)

    def work(session: Session) -> str:
        email = _patient_email(session, address) if mailbox_id is not None else None
        if locked or not rt.settings.relay.host:
            email = None
        token, entry = _open(
            session, rt, account=address, mailbox_id=mailbox_id, purpose=RESET, method=EMAIL, email=email
        )
        if mailbox_id is None:
            outcome = "unknown INS: nothing sent"
        elif locked:
            outcome = "account locked: nothing sent"
        elif email is None:
            outcome = "no personal e-mail or no relay: nothing sent"
        else:
            outcome = f"queue entry {entry}" if entry is not None else "code already sent"
        Audit.record_in(session, address, "password-reset", remote, "portal reset code", outcome)
        return token

    token = await rt.db.run_write(work)
    rt.queue.wake()
    return Challenge(token, EMAIL)


async def switch_to_email(rt: Runtime, token: str, remote: str) -> Challenge:
    """A patient without their app at hand (``email_or_totp``): the pending app step becomes an
    e-mailed code, its tries carried over."""
    async with rt.db.read() as session:
        row = (
            await session.execute(select(PortalCode).where(PortalCode.challenge_hash == _sha(token or "-")))
        ).scalar_one_or_none()
    if row is None or row.ended_at is not None or row.purpose != LOGIN or row.mailbox_id is None:
        raise PortalError(400, EXPIRED)
    if rt.settings.portal.second_factor != "email_or_totp" or row.method != TOTP:
        raise PortalError(403, "Votre établissement exige le code de votre application d'authentification.")
    mailbox_id, address = row.mailbox_id, row.account

    def work(session: Session) -> Challenge | None:
        email = _patient_email(session, address)
        if email is None or not rt.settings.relay.host:
            return None
        token, entry = _open(
            session, rt, account=address, mailbox_id=mailbox_id, purpose=LOGIN, method=EMAIL, email=email
        )
        sent = f"queue entry {entry}" if entry is not None else "code already sent"
        Audit.record_in(
            session, address, "second-factor", remote, "portal login code by e-mail instead", sent
        )
        return Challenge(token, EMAIL, mask(email))

    found = await rt.db.run_write(work)
    if found is None:
        raise PortalError(403, "Aucune adresse électronique personnelle n'est enregistrée pour ce compte.")
    rt.queue.wake()
    return found


@dataclass(frozen=True)
class Passed:
    """A finished second step: whose it was (``mailbox_id`` None: a reset for an unknown INS, which
    never passes) and how."""

    mailbox_id: int | None
    account: str
    method: str


def _matching_step(secret: str, code: str, at: dt.datetime) -> int | None:
    """The RFC 6238 time step (±1 for clock drift) whose code is ``code``, compared in constant time."""
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(at)
    found = None
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def _accept_totp(rt: Runtime, session: Session, mailbox_id: int, code: str, at: dt.datetime) -> bool:
    factor = session.get(PortalFactor, mailbox_id, with_for_update=True)
    if factor is None or factor.totp_secret is None:
        return False
    secret = unseal(rt, mailbox_id, factor.totp_secret)
    step = _matching_step(secret, code, at) if secret else None
    if step is None or (factor.totp_last_step is not None and step <= factor.totp_last_step):
        return False  # wrong, or a code already used (replay)
    factor.totp_last_step = step
    return True


async def verify(rt: Runtime, token: str, code: str, purpose: str, remote: str) -> Passed:
    """Check the code for the browser's pending step. Wrong: 401 with the tries left; the last wrong
    try voids the step and locks the account (429); expired or unknown: 400. Every outcome audited."""
    code = "".join(code.split())
    async with rt.db.read() as session:
        row = (
            await session.execute(select(PortalCode).where(PortalCode.challenge_hash == _sha(token or "-")))
        ).scalar_one_or_none()
    if row is None or row.purpose != purpose or row.ended_at is not None:
        raise PortalError(400, EXPIRED)
    account = row.account
    if await rt.auth.is_locked(account):
        raise PortalError(429, LOCKED)
    tries = rt.settings.portal.code_tries
    what = f"portal {'reset' if purpose == RESET else 'second factor'} ({row.method} code)"

    def work(session: Session) -> tuple[str, Passed | None, int]:
        at = now()
        row = session.execute(
            select(PortalCode).where(PortalCode.challenge_hash == _sha(token)).with_for_update()
        ).scalar_one_or_none()
        if row is None or row.ended_at is not None:
            return "gone", None, 0
        everyone = delete(PortalCode).where(PortalCode.account == row.account, PortalCode.purpose == purpose)
        if _aware(row.expires_at) <= at:
            row.ended_at = at
            Audit.record_in(session, account, "login-failure", remote, what, "code expired")
            return "expired", None, 0
        if row.method == TOTP:
            ok = row.mailbox_id is not None and _accept_totp(rt, session, row.mailbox_id, code, at)
        else:
            ok = _code_matches(rt, row.code_hash, code) and row.mailbox_id is not None
        passed = Passed(row.mailbox_id, row.account, row.method)
        if ok:
            session.execute(everyone)
            Audit.record_in(session, account, "second-factor", remote, what, "ok")
            return "ok", passed, 0
        row.tries += 1
        Audit.record_in(session, account, "login-failure", remote, what, f"wrong code ({row.tries}/{tries})")
        if row.tries >= tries:
            session.execute(everyone)
            return "lock", passed, 0
        return "wrong", None, tries - row.tries

    outcome, passed, left = await rt.db.run_write(work)
    if outcome == "ok" and passed is not None:
        return passed
    if outcome == "lock":
        await rt.auth.lock(account, remote, what, f"{tries} wrong codes")
        raise PortalError(429, LOCKED)
    if outcome == "wrong":
        plural = "s" if left > 1 else ""
        raise PortalError(401, f"Code incorrect. Il vous reste {left} essai{plural}.")
    raise PortalError(400, EXPIRED)


# ---------------------------------------------------------------------------------------------- devices


def _device_mac(rt: Runtime, mailbox_id: int, epoch: int, expires: int, password_hash: str) -> str:
    message = f"{mailbox_id}.{epoch}.{expires}.{password_hash}".encode()
    mac = hmac.new(_derived(rt)[2], message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


async def device_cookie(rt: Runtime, mailbox_id: int) -> str:
    """The value of a trusted-device cookie for this mailbox, valid ``[portal] trust_device`` days."""
    expires = int((now() + dt.timedelta(days=rt.settings.portal.trust_device)).timestamp())
    async with rt.db.read() as session:
        mb = await session.get(Mailbox, mailbox_id)
        factor = await session.get(PortalFactor, mailbox_id)
    epoch = factor.device_epoch if factor is not None else 0
    password_hash = mb.password_hash or "" if mb is not None else ""
    return f"{mailbox_id}.{epoch}.{expires}.{_device_mac(rt, mailbox_id, epoch, expires, password_hash)}"


async def trusted(rt: Runtime, mailbox_id: int, value: str) -> bool:
    """Whether ``value`` is a live trusted-device cookie of this mailbox: right MAC, not expired, the
    current epoch and the current password."""
    if rt.settings.portal.trust_device <= 0:
        return False
    parts = value.split(".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        return False
    mb_id, epoch, expires = (int(p) for p in parts[:3])
    if mb_id != mailbox_id or expires <= now().timestamp():
        return False
    async with rt.db.read() as session:
        mb = await session.get(Mailbox, mailbox_id)
        factor = await session.get(PortalFactor, mailbox_id)
    if mb is None or epoch != (factor.device_epoch if factor is not None else 0):
        return False
    expected = _device_mac(rt, mailbox_id, epoch, expires, mb.password_hash or "")
    return hmac.compare_digest(expected, parts[3])


def _factor_row(session: Session, mailbox_id: int) -> PortalFactor:
    factor = session.get(PortalFactor, mailbox_id, with_for_update=True)
    if factor is None:
        factor = PortalFactor(mailbox_id=mailbox_id, device_epoch=0)
        session.add(factor)
    return factor


def forget_devices_in(session: Session, mailbox_id: int) -> None:
    """Revoke every trusted-device cookie of the mailbox (a new epoch), in the caller's transaction."""
    factor = _factor_row(session, mailbox_id)
    factor.device_epoch = (factor.device_epoch or 0) + 1


async def forget_devices(rt: Runtime, mailbox_id: int, address: str, remote: str) -> None:
    def work(session: Session) -> None:
        forget_devices_in(session, mailbox_id)
        Audit.record_in(session, address, "second-factor", remote, "portal trusted devices forgotten", "ok")

    await rt.db.run_write(work)


# ---------------------------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class Enrolment:
    """What the enrolment page shows: the secret in text (grouped by four) and the QR code as SVG."""

    secret: str
    uri: str
    svg: str

    @property
    def grouped(self) -> str:
        return " ".join(self.secret[i : i + 4] for i in range(0, len(self.secret), 4))


async def enrolled(rt: Runtime, mailbox_id: int) -> bool:
    async with rt.db.read() as session:
        factor = await session.get(PortalFactor, mailbox_id)
    return factor is not None and factor.totp_secret is not None


def _qr_svg(uri: str) -> str:
    """An inline SVG (the CSP allows no data: image): dark modules on white, named for screen readers."""
    svg = segno.make(uri, error="m").svg_inline(
        scale=5, border=4, dark="#000", light="#fff", title="Code QR à scanner avec votre application"
    )
    return svg.replace("<svg ", '<svg role="img" aria-label="Code QR à scanner avec votre application" ', 1)


async def enrolment(rt: Runtime, mailbox_id: int) -> Enrolment:
    """The pending secret of an enrolment (a new one if none), kept sealed until a code confirms it."""

    def work(session: Session) -> str:
        factor = _factor_row(session, mailbox_id)
        secret = unseal(rt, mailbox_id, factor.totp_pending) if factor.totp_pending else None
        if secret is None:
            secret = pyotp.random_base32()
            factor.totp_pending = seal(rt, mailbox_id, secret)
        return secret

    secret = await rt.db.run_write(work)
    issuer = rt.settings.clients.hostname or rt.settings.server.hostname
    uri = pyotp.TOTP(secret).provisioning_uri(name="Messagerie de santé", issuer_name=issuer)
    return Enrolment(secret, uri, _qr_svg(uri))


async def confirm_enrolment(rt: Runtime, mailbox_id: int, address: str, code: str, remote: str) -> bool:
    """The first valid code makes the pending secret the patient's; audited either way."""
    code = "".join(code.split())

    def work(session: Session) -> bool:
        at = now()
        factor = _factor_row(session, mailbox_id)
        secret = unseal(rt, mailbox_id, factor.totp_pending) if factor.totp_pending else None
        step = _matching_step(secret, code, at) if secret else None
        if step is None:
            Audit.record_in(session, address, "second-factor", remote, "portal app enrolment", "wrong code")
            return False
        factor.totp_secret, factor.totp_pending = factor.totp_pending, None
        factor.totp_enrolled_at, factor.totp_last_step = at, step
        Audit.record_in(session, address, "second-factor", remote, "portal app enrolment", "enrolled")
        return True

    return await rt.db.run_write(work)


async def remove_app(rt: Runtime, mailbox_id: int, address: str, remote: str) -> None:
    def work(session: Session) -> None:
        factor = _factor_row(session, mailbox_id)
        factor.totp_secret = factor.totp_pending = None
        factor.totp_enrolled_at = factor.totp_last_step = None
        Audit.record_in(session, address, "second-factor", remote, "portal app removed", "ok")

    await rt.db.run_write(work)


async def pending(rt: Runtime, token: str) -> Challenge | None:
    """The browser's pending step, to show its page; None when there is none (or it ended)."""
    async with rt.db.read() as session:
        row = (
            await session.execute(select(PortalCode).where(PortalCode.challenge_hash == _sha(token or "-")))
        ).scalar_one_or_none()
        if row is None or row.ended_at is not None:
            return None
        hint = ""
        if row.purpose == LOGIN and row.method == EMAIL:
            patient = await session.get(Patient, row.account.partition("@")[0].upper())
            hint = mask(patient.email) if patient is not None and patient.email else ""
    return Challenge(token, row.method, hint)
