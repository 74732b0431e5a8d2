"""Patient alerts (issue 18): a professional writes to a patient over submission, the patient gets one
short alert at their personal address through the relay, a local aiosmtpd sink on 127.0.0.1 with
STARTTLS (the test PKI, verified against its CA) and AUTH. Never the subject, body or attachments; at
most one per interval; none when turned off, without an address, or without a relay; a relay that is
down gets the alert later (the queue's retries); and the relay is never open to anyone else."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import select

from directory.models import Patient
from directory.patients import add_patient, edit_patient, make_record
from mailserver import accounts, alerts
from mailserver.db.models import AuditEvent, utcnow
from mailserver.queue.queue import Queue
from tests.portal.helpers import add_professional
from tests.smtp.conftest import MARTIN, PASSWORD, RPPS, SMTPEnv, start_env, wait_for
from tests.smtp.relay_sink import RELAY_PASSWORD, RELAY_USER, Sink

PATIENT_INS = "262112B82955335"
PATIENT_DOMAIN = "patient.a.mssante.test"
PATIENT = f"{PATIENT_INS.lower()}@{PATIENT_DOMAIN}"
PERSONAL = "pierrette.petit@perso.test"
PORTAL_URL = "https://portail.a.mssante.test/"
SUBJECT = "Résultats de la biopsie"
BODY = "Le compte rendu anatomopathologique est joint."


async def _env(
    tmp_path: Path,
    db_url: str,
    pki: Any,
    sink: Sink,
    relay: bool = True,
    ca: Path | None = None,
    password: str = RELAY_PASSWORD,
) -> SMTPEnv:
    secret = tmp_path / "relay-password"
    secret.write_text(password + "\n")
    relay_section = {
        "host": "127.0.0.1" if relay else "",
        "port": sink.port,
        "username": RELAY_USER,
        "password_file": str(secret),
        "ca_file": str(ca or pki.peer_ca),
    }
    env = await start_env(
        tmp_path,
        db_url,
        pki,
        relay=relay_section,
        patients={"portal_url": PORTAL_URL, "alert_interval": "15m"},
        server={"hostname": "mail.a.mssante.test"},
    )
    rt = env.rt
    await add_professional(rt, MARTIN, RPPS, "Martin", "Claire", "Médecine générale", hosted=True)
    await accounts.add_domain(rt, PATIENT_DOMAIN, patients=True)
    await accounts.add_mailbox(rt, PATIENT, "PAT")
    await add_patient(
        rt.db, make_record(PATIENT_INS, "Petit", "Pierrette", "F", "1962-11-23", email=PERSONAL)
    )
    return env


@pytest.fixture
async def sink(pki: Any) -> AsyncIterator[Sink]:
    s = Sink(pki)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def env(tmp_path: Path, db_url: str, pki: Any, sink: Sink) -> AsyncIterator[SMTPEnv]:
    sink.start()
    e = await _env(tmp_path, db_url, pki, sink)
    try:
        yield e
    finally:
        await e.close()


def _message(subject: str = SUBJECT) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = MARTIN
    msg["To"] = PATIENT
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="a.mssante.test")
    msg["Date"] = email.utils.formatdate()
    msg.set_content(BODY)
    msg.add_attachment(b"%PDF-1.4 compte rendu", maintype="application", subtype="pdf", filename="cr.pdf")
    return msg


async def _submit(env: SMTPEnv, msg: EmailMessage) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=env.ports["submission"], start_tls=True, tls_context=env.user()
    )
    await client.connect()
    await client.login(MARTIN, PASSWORD)
    await client.send_message(msg)
    await client.quit()


async def _alert_events(env: SMTPEnv) -> list[AuditEvent]:
    async with env.rt.db.read() as session:
        q = select(AuditEvent).where(AuditEvent.action == "patient-alert").order_by(AuditEvent.id)
        return list((await session.execute(q)).scalars())


async def _sunk(sink: Sink) -> list[tuple[str, tuple[str, ...], EmailMessage]]:
    return sink.messages()


async def _queue_drained(env: SMTPEnv) -> bool:
    return not await Queue(env.rt).entries()


async def test_one_alert_without_content_then_throttled(env: SMTPEnv, sink: Sink) -> None:
    await _submit(env, _message())
    [(sender, rcpts, alert)] = await wait_for(lambda: _sunk(sink))
    assert sender == "no-reply@mail.a.mssante.test" and rcpts == (PERSONAL,)
    assert sink.logins, "the relay was used with AUTH"
    assert not alert.is_multipart()
    text = alert.get_content()
    assert "Vous avez un nouveau message de Dr MARTIN sur votre messagerie de santé" in text
    assert PORTAL_URL in text
    raw = alert.as_string()
    for leak in (SUBJECT, "biopsie", BODY, "cr.pdf", "PDF"):
        assert leak not in raw
    assert alert["To"] == PERSONAL and alert["Auto-Submitted"] == "auto-generated"
    [event] = await _alert_events(env)
    assert event.actor == PATIENT and SUBJECT not in (event.request + event.response)
    assert PERSONAL not in event.request + event.response
    # the message itself is in the patient's mailbox
    assert len(await env.inbox(PATIENT)) == 1

    await _submit(env, _message("Deuxième message"))
    await wait_for(lambda: _inbox_has(env, 2))
    await wait_for(lambda: _queue_drained(env))
    assert len(sink.messages()) == 1, "a second message within the interval gives no second alert"
    assert len(await _alert_events(env)) == 1
    metrics = env.rt.metrics.exposition().decode()
    assert 'caducee_patient_alerts_total{result="queued"} 1.0' in metrics
    assert 'caducee_patient_alerts_total{result="throttled"} 1.0' in metrics


async def _inbox_has(env: SMTPEnv, count: int) -> bool:
    return len(await env.inbox(PATIENT)) == count


async def test_a_new_alert_once_the_interval_has_passed(
    env: SMTPEnv, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The throttle holds back alerts only for ``alert_interval`` (15 min here), counted from the last
    alert sent: a message just inside it gives none, the next one after it gives a new alert. Time
    moves through ``alerts.now``, never by sleeping."""
    start = utcnow()
    monkeypatch.setattr(alerts, "now", lambda: start)
    await _submit(env, _message())
    await wait_for(lambda: _sunk(sink))
    monkeypatch.setattr(alerts, "now", lambda: start + dt.timedelta(minutes=14, seconds=59))
    await _submit(env, _message("Deuxième message"))
    await wait_for(lambda: _inbox_has(env, 2))
    await wait_for(lambda: _queue_drained(env))
    assert len(sink.messages()) == 1, "inside the interval: no second alert"
    monkeypatch.setattr(alerts, "now", lambda: start + dt.timedelta(minutes=15, seconds=1))
    await _submit(env, _message("Troisième message"))

    async def two_alerts() -> list[tuple[str, tuple[str, ...], EmailMessage]]:
        found = sink.messages()
        return found if len(found) == 2 else []

    first, second = await wait_for(two_alerts)
    assert second[1] == (PERSONAL,) and second[2]["Subject"] == first[2]["Subject"]
    assert "Vous avez un nouveau message de Dr MARTIN" in second[2].get_content()
    assert "Troisième" not in second[2].as_string()
    assert [e.actor for e in await _alert_events(env)] == [PATIENT, PATIENT]
    async with env.rt.db.read() as session:
        patient = await session.get(Patient, PATIENT_INS)
    assert patient is not None and patient.last_alert_at is not None
    last = (
        patient.last_alert_at.replace(tzinfo=dt.UTC)
        if patient.last_alert_at.tzinfo is None
        else patient.last_alert_at
    )
    assert last == start + dt.timedelta(minutes=15, seconds=1), "the next interval counts from this alert"
    metrics = env.rt.metrics.exposition().decode()
    assert 'caducee_patient_alerts_total{result="queued"} 2.0' in metrics
    assert 'caducee_patient_alerts_total{result="throttled"} 1.0' in metrics


async def test_alerts_turned_off_or_no_address_give_none(env: SMTPEnv, sink: Sink) -> None:
    async with env.rt.db.write() as session:
        patient = await session.get(Patient, PATIENT_INS)
        assert patient is not None
        patient.alerts_enabled = False
    await _submit(env, _message())
    await wait_for(lambda: _inbox_has(env, 1))
    async with env.rt.db.write() as session:
        patient = await session.get(Patient, PATIENT_INS)
        assert patient is not None
        patient.alerts_enabled = True
    await edit_patient(env.rt.db, PATIENT_INS, {"email": ""})
    await _submit(env, _message())
    await wait_for(lambda: _inbox_has(env, 2))
    assert await Queue(env.rt).entries() == []
    assert sink.messages() == [] and await _alert_events(env) == []


async def test_relay_down_then_retried(tmp_path: Path, db_url: str, pki: Any, sink: Sink) -> None:
    env = await _env(tmp_path, db_url, pki, sink)
    try:
        await _submit(env, _message())

        async def failed_once() -> bool:
            entries = await Queue(env.rt).entries()
            return any(
                r["attempts"] >= 1 and r["status"] == "queued" for e in entries for r in e["recipients"]
            )

        await wait_for(failed_once)
        [entry] = await Queue(env.rt).entries()
        assert entry["relay"] and "relay 127.0.0.1" in entry["recipients"][0]["last_reply"]
        sink.start()
        [(_sender, rcpts, _alert)] = await wait_for(lambda: _sunk(sink))
        assert rcpts == (PERSONAL,)
        await wait_for(lambda: _queue_drained(env))
    finally:
        await env.close()


async def test_relay_with_an_unverified_certificate_gets_nothing(
    tmp_path: Path, db_url: str, pki: Any, sink: Sink
) -> None:
    """``ca_file`` not trusting the relay's certificate: the alert waits in the queue, never sent."""
    sink.start()
    env = await _env(tmp_path, db_url, pki, sink, ca=pki.unknown_ca.cert_path)
    try:
        await _submit(env, _message())

        async def failed_once() -> list[str]:
            entries = await Queue(env.rt).entries()
            return [r["last_reply"] for e in entries for r in e["recipients"] if r["attempts"] >= 1]

        [reply] = await wait_for(failed_once)
        assert reply.startswith("451") and "CERTIFICATE_VERIFY_FAILED" in reply
        assert sink.messages() == [] and sink.logins == []
    finally:
        await env.close()


async def test_wrong_relay_password_is_retried_not_dropped(
    tmp_path: Path, db_url: str, pki: Any, sink: Sink
) -> None:
    """A relay refusing our AUTH is the operator's setting to fix: the alert stays queued, then goes."""
    sink.start()
    env = await _env(tmp_path, db_url, pki, sink, password="wrong-password")
    try:
        await _submit(env, _message())

        async def refused() -> list[str]:
            entries = await Queue(env.rt).entries()
            return [
                r["last_reply"]
                for e in entries
                for r in e["recipients"]
                if r["status"] == "queued" and r["attempts"]
            ]

        [reply] = await wait_for(refused)
        assert reply.startswith("451 4.7.0") and "refused our AUTH" in reply
        (tmp_path / "relay-password").write_text(RELAY_PASSWORD)
        [(_sender, rcpts, _alert)] = await wait_for(lambda: _sunk(sink))
        assert rcpts == (PERSONAL,)
    finally:
        await env.close()


async def test_no_relay_host_queues_nothing(tmp_path: Path, db_url: str, pki: Any, sink: Sink) -> None:
    env = await _env(tmp_path, db_url, pki, sink, relay=False)
    try:
        await _submit(env, _message())
        await wait_for(lambda: _inbox_has(env, 1))
        assert await Queue(env.rt).entries() == [] and await _alert_events(env) == []
        assert 'caducee_patient_alerts_total{result="no_relay"} 1.0' in env.rt.metrics.exposition().decode()
    finally:
        await env.close()


async def test_submission_to_an_outside_address_is_still_refused(env: SMTPEnv, sink: Sink) -> None:
    """The relay is only for alerts: a professional cannot write to the patient's personal address."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=env.ports["submission"], start_tls=True, tls_context=env.user()
    )
    await client.connect()
    await client.login(MARTIN, PASSWORD)
    await client.mail(MARTIN)
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as outside:
        await client.rcpt(PERSONAL)
    assert outside.value.code == 550 and "not in the MSSanté trust space" in outside.value.message
    await client.quit()
    assert await Queue(env.rt).entries() == [] and sink.messages() == []
