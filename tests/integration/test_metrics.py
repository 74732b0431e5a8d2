"""Issue 19: ``/metrics`` scraped with aiohttp after real smtplib and imaplib sessions, parsed with
prometheus_client's parser; every counter must have moved by exactly what the sessions did."""

from __future__ import annotations

import asyncio
import email.message
import imaplib
import smtplib
import socket
import sqlite3
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mailserver import admin
from mailserver.imap import server as imap_server
from tests.smtp.conftest import MARTIN, PASSWORD, SECRETARIAT, SMTPEnv, start_env, wait_for

REMOTE = "dr.leroy@b.mssante.test"  # operator B, routed to a closed port: one temporary failure
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def env(tmp_path: Path, db_url: str, pki: Any) -> AsyncIterator[SMTPEnv]:
    env = await start_env(
        tmp_path,
        db_url,
        pki,
        imap={"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"]},
        delivery={"retry_schedule": ["1h"]},  # one attempt during the test, no retry
    )
    for module in (imap_server, admin):
        for listener in await module.start(env.rt):
            env.started.append(listener)
            env.ports[listener.service] = int(listener.address.rsplit(":", 1)[1])
    env.rt.listeners.extend(env.started)
    env.rt.started = True  # as ``caducee serve`` says once everything is bound
    try:
        yield env
    finally:
        await env.close()


async def scrape(env: SMTPEnv) -> Samples:
    url = f"http://127.0.0.1:{env.ports['admin']}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def moved(before: Samples, after: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """How each series of ``name`` changed (series that did not are left out)."""
    keys = {labels for n, labels in after if n == name}
    deltas = {k: after[(name, k)] - before.get((name, k), 0.0) for k in keys}
    return {k: v for k, v in deltas.items() if v}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def submit(env: SMTPEnv) -> None:
    """One submission session: EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL, RCPT ×2, DATA, QUIT."""
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = MARTIN, f"{SECRETARIAT}, {REMOTE}", "compte rendu"
    msg.set_content("Bonjour,\n")
    with smtplib.SMTP("127.0.0.1", env.ports["submission"], timeout=30) as client:
        client.ehlo("poste.a.mssante.test")
        client.starttls(context=env.user())
        client.ehlo("poste.a.mssante.test")
        client.login(MARTIN, PASSWORD)
        client.send_message(msg)


def read_inbox(env: SMTPEnv) -> None:
    """One IMAPS session: CAPABILITY, a wrong password (NO), LOGIN, SELECT, FETCH, LOGOUT."""
    client = imaplib.IMAP4_SSL("127.0.0.1", env.ports["imaps"], ssl_context=env.user(), timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        client.login(SECRETARIAT, "wrong-password")
    client.login(SECRETARIAT, PASSWORD)
    assert client.select("INBOX")[0] == "OK"
    status, data = client.fetch("1", "(BODY.PEEK[])")
    assert status == "OK" and b"compte rendu" in data[0][1]
    client.logout()


def failed_handshake(env: SMTPEnv) -> None:
    """A client speaking TLS 1.1 to the IMAPS port: refused during the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", env.ports["imaps"]), timeout=30) as sock,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        ctx.wrap_socket(sock)


async def test_counters_move_by_what_the_sessions_did(env: SMTPEnv) -> None:
    before = await scrape(env)
    await asyncio.to_thread(submit, env)
    await asyncio.to_thread(read_inbox, env)
    await asyncio.to_thread(failed_handshake, env)

    async def settled() -> Samples | None:
        now = await scrape(env)
        attempts = moved(before, now, "caducee_delivery_attempts_total")
        tls = moved(before, now, "caducee_tls_handshake_failures_total")
        open_now = {  # but the scrape's own
            k: v
            for (n, k), v in now.items()
            if n == "caducee_connections_open" and v and k != labels(service="admin")
        }
        return now if attempts and tls and not open_now else None

    after = await wait_for(settled)
    connections = moved(before, after, "caducee_connections_total")
    assert connections.pop(labels(service="admin")) > 0  # the scrapes
    assert connections == {
        labels(service="submission"): 1,
        labels(service="imap"): 1,  # the gate counts both IMAP ports; the failed handshake never reached it
    }
    assert moved(before, after, "caducee_commands_total") == {
        labels(service="submission", command="EHLO"): 2,
        labels(service="submission", command="STARTTLS"): 1,
        labels(service="submission", command="AUTH"): 1,
        labels(service="submission", command="MAIL"): 1,
        labels(service="submission", command="RCPT"): 2,
        labels(service="submission", command="DATA"): 1,
        labels(service="submission", command="QUIT"): 1,
        labels(service="imaps", command="CAPABILITY"): 1,  # imaplib asks at connect
        labels(service="imaps", command="LOGIN"): 2,
        labels(service="imaps", command="SELECT"): 1,
        labels(service="imaps", command="FETCH"): 1,
        labels(service="imaps", command="LOGOUT"): 1,
    }
    assert moved(before, after, "caducee_replies_total") == {
        # greeting, EHLO, STARTTLS 220, EHLO, AUTH 235, MAIL, RCPT ×2, end of data, QUIT 221; DATA's 354
        labels(service="submission", code="2xx"): 10,
        labels(service="submission", code="3xx"): 1,
        labels(service="imaps", code="NO"): 1,
        labels(service="imaps", code="OK"): 5,
    }
    assert moved(before, after, "caducee_logins_total") == {
        labels(method="password", result="ok"): 2,
        labels(method="password", result="invalid"): 1,
    }
    assert moved(before, after, "caducee_deliveries_total") == {labels(destination="local"): 1}
    assert moved(before, after, "caducee_delivery_attempts_total") == {labels(result="temporary"): 1}
    assert moved(before, after, "caducee_tls_handshake_failures_total") == {labels(service="imaps"): 1}
    assert after[("caducee_queue_depth", frozenset())] == 1
    assert after[("caducee_queue_oldest_age_seconds", frozenset())] > 0
    assert not moved(before, after, "caducee_audit_write_errors_total")
    for kind in ("read", "write"):
        assert moved(before, after, "caducee_database_seconds_count")[labels(kind=kind)] > 0


async def test_audit_write_errors_and_store_latency_are_counted(env: SMTPEnv) -> None:
    before = await scrape(env)
    url = f"http://127.0.0.1:{env.ports['admin']}/readyz"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200
    async with env.rt.db.write() as session:  # the audit table gone: every audit write fails
        await session.execute(text("ALTER TABLE audit_event RENAME TO audit_event_away"))
    with pytest.raises((DBAPIError, sqlite3.OperationalError)):  # raw from SQLite's writer thread
        await env.rt.audit.record("admin", "test", "", "an event", "ok")
    after = await scrape(env)
    assert moved(before, after, "caducee_audit_write_errors_total") == {frozenset(): 1}
    assert moved(before, after, "caducee_store_seconds_count") == {labels(operation="probe"): 1}


async def test_imap_starttls_completion_is_counted(env: SMTPEnv) -> None:
    """STARTTLS writes its own tagged OK (before the handshake): counted like every other completion."""
    before = await scrape(env)

    def session() -> None:
        client = imaplib.IMAP4("127.0.0.1", env.ports["imap"], timeout=30)
        client.starttls(ssl_context=env.user())
        client.logout()

    await asyncio.to_thread(session)

    async def closed() -> Samples | None:
        now = await scrape(env)
        return None if now[("caducee_connections_open", labels(service="imap"))] else now

    after = await wait_for(closed)
    assert moved(before, after, "caducee_commands_total") == {
        labels(service="imap", command="CAPABILITY"): 2,  # imaplib asks at connect and after STARTTLS
        labels(service="imap", command="STARTTLS"): 1,
        labels(service="imap", command="LOGOUT"): 1,
    }
    assert moved(before, after, "caducee_replies_total") == {labels(service="imap", code="OK"): 4}
