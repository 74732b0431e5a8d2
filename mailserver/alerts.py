"""New-message alerts at a patient's personal address (issue 18), decided in the delivery's commit.

When a message reaches a patient's mailbox (``Delivery.commit``), the patient whose record has an
``email`` and ``alerts_enabled`` gets one short alert naming the sender and the portal's address, never
the message's subject, content or attachments; at most one per ``[patients] alert_interval``
(``last_alert_at``, under the patient row's lock). The alert is written, as an inline blob and an entry
of the outbound queue flagged ``relay``, in the same transaction as the delivery, so it is durable with
the message and goes through the queue's retries to ``[relay]`` (the operator's ordinary relay: these
addresses are outside the trust space). Without ``[relay] host`` nothing is queued (logged once).
Every queued alert is audited (``patient-alert``) and counted (``caducee_patient_alerts``).

``now`` is the throttle's clock: tests replace it to pass the interval without sleeping.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.orm import Session

from directory.models import DirectoryMailbox, Patient, Professional
from mailserver.audit import Audit
from mailserver.db.models import Mailbox, utcnow
from mailserver.policy import LocalTarget, RemoteTarget
from mailserver.runtime import Runtime
from mailserver.store.store import insert_inline_blob

log = logging.getLogger("caducee.alerts")

now: Callable[[], dt.datetime] = utcnow

ALERT_SUBJECT = "Nouveau message sur votre messagerie de santé"
_no_relay_logged: set[int] = set()


def alert_text(sender_name: str, portal_url: str) -> str:
    """The whole alert: who wrote and where to read it, nothing of the message itself."""
    text = f"Vous avez un nouveau message de {sender_name} sur votre messagerie de santé."
    if portal_url:
        text += f"\n\nPour le lire, connectez-vous à votre messagerie : {portal_url}"
    return text + "\n\nCe message est envoyé automatiquement, merci de ne pas y répondre.\n"


def sender_name(session: Session, address: str) -> str:
    """How the patient knows the sender: the directory's ``Dr MARTIN``, the mailbox's display name, or
    the address itself."""
    row = session.execute(
        select(Professional.civility, Professional.first_name, Professional.last_name)
        .join(DirectoryMailbox, DirectoryMailbox.professional_id == Professional.id)
        .where(DirectoryMailbox.address == address.lower())
        .limit(1)
    ).first()
    if row is not None and row.last_name:
        title = "Dr" if (row.civility or "").upper() == "DR" else (row.first_name or "")
        return f"{title} {row.last_name.upper()}".strip()
    name = session.execute(select(Mailbox.display_name).where(Mailbox.address == address.lower())).scalar()
    return name or address or "votre professionnel de santé"


def personal_mail(rt: Runtime, to: str, subject: str, text: str) -> bytes:
    """A short automatic message to a patient's personal address, from ``[patients] alert_from``."""
    hostname = rt.settings.server.hostname
    msg = EmailMessage()
    msg["From"] = rt.settings.patients.alert_from or f"no-reply@{hostname}"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)  # "+0000" read as unknown zone
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    return msg.as_bytes()


def build_alert(rt: Runtime, to: str, name: str) -> bytes:
    return personal_mail(rt, to, ALERT_SUBJECT, alert_text(name, rt.settings.patients.portal_url))


def queue_personal(session: Session, rt: Runtime, to: str, data: bytes) -> int:
    """Queue ``data`` for ``to`` (a patient's personal address) through ``[relay]``, inside the
    caller's transaction: the only way anything leaves for an address outside the trust space (alerts,
    second-factor codes, activation links). Returns the queue entry's id."""
    alert_from = rt.settings.patients.alert_from or f"no-reply@{rt.settings.server.hostname}"
    blob_id = insert_inline_blob(session, data)
    hook = rt.queue.enqueue_hook(relay=True)
    recipient = (RemoteTarget(to, to.rpartition("@")[2]), {"notify": "NEVER"})
    return int(hook(session, blob_id, alert_from, [recipient]))


def queue_alerts(session: Session, rt: Runtime, sender: str, targets: Sequence[LocalTarget]) -> list[str]:
    """Queue the alerts due for the patient mailboxes in ``targets`` (just delivered), inside the
    delivery's transaction; returns what happened to each (``queued``, ``throttled``, ``disabled``,
    ``no_relay``) for the caller to count once committed (a group commit may run this twice). A message
    with an empty sender (a delivery report to a patient who wrote) gives none."""
    patients = [t for t in targets if t.type == "PAT"]
    if not patients or not sender:
        return []  # a null reverse-path is the server's own report (a DSN), not someone writing
    relay = rt.settings.relay
    results: list[str] = []
    at = now()
    interval = dt.timedelta(seconds=rt.settings.patients.alert_interval)
    for target in patients:
        ins = target.address.partition("@")[0].upper()
        patient = session.get(Patient, ins, with_for_update=True)
        if patient is None or not patient.email:
            continue
        if not patient.alerts_enabled:
            results.append("disabled")
            continue
        if not relay.host:
            results.append("no_relay")
            if id(rt) not in _no_relay_logged:
                _no_relay_logged.add(id(rt))
                log.warning("patient alerts are not sent: no [relay] host is configured")
            continue
        last = patient.last_alert_at
        if last is not None and at - (last if last.tzinfo else last.replace(tzinfo=dt.UTC)) < interval:
            results.append("throttled")
            continue
        patient.last_alert_at = at
        data = build_alert(rt, patient.email, sender_name(session, sender))
        entry = queue_personal(session, rt, patient.email, data)
        request = f"alert for <{target.address}>"
        Audit.record_in(session, target.address, "patient-alert", "", request, f"queue entry {entry}")
        results.append("queued")
    return results


@dataclass(frozen=True)
class AlertPreference:
    """What the patient's settings page shows: whether alerts are on and where they go."""

    enabled: bool
    email: str | None
    relay: bool
    phone: str | None = None


def _ins(address: str) -> str:
    return address.partition("@")[0].upper()


async def preference(rt: Runtime, address: str) -> AlertPreference | None:
    """The alert setting of the patient behind mailbox ``address``; None if no patient record."""
    async with rt.db.read() as session:
        patient = await session.get(Patient, _ins(address))
    if patient is None:
        return None
    return AlertPreference(patient.alerts_enabled, patient.email, bool(rt.settings.relay.host), patient.phone)


async def set_enabled(rt: Runtime, address: str, enabled: bool, remote: str, via: str) -> bool:
    """The patient turns alerts on or off (portal); audited; False if no patient record."""
    async with rt.db.write() as session:
        patient = await session.get(Patient, _ins(address), with_for_update=True)
        if patient is None:
            return False
        patient.alerts_enabled = enabled
        state = "on" if enabled else "off"
        Audit.record_in(session, address, "patient-alert-settings", remote, f"{via} alerts {state}", "ok")
    return True
