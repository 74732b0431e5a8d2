"""SASL EXTERNAL with client certificates (issue 15): a patient-record system logs its APP mailbox in
with its IGC-Santé certificate, on IMAP and submission; python's ssl, imaplib and smtplib as clients."""

from __future__ import annotations

import asyncio
import datetime
import imaplib
import smtplib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import cli as caducee_cli
from mailserver import accounts
from mailserver.accounts import AccountError
from tests.identity.certs import AppCerts, make_app_certs
from tests.identity.conftest import DPI, MARTIN, Env, start_env
from tests.identity.provider import Provider
from tests.pki import _crl, _Issuer
from tests.smtp.conftest import wait_for


@pytest.fixture
def certs(tmp_path: Path, pki: Any) -> AppCerts:
    return make_app_certs(pki, tmp_path / "app-pki")


async def cert_env(tmp_path: Path, db_url: str, pki: Any, provider: Provider, certs: AppCerts) -> Env:
    return await start_env(
        tmp_path,
        db_url,
        pki,
        provider,
        imap={"client_cert": "optional"},
        submission={"client_cert": "optional"},
        auth={"client_crl": [str(certs.crl_path)]},
    )


@pytest.fixture
async def env(tmp_path: Path, pki: Any, provider: Provider, certs: AppCerts) -> AsyncIterator[Env]:
    e = await cert_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/certs.db", pki, provider, certs)
    try:
        yield e
    finally:
        await e.close()


def imap_external(port: int, ctx: ssl.SSLContext, authzid: bytes = b"") -> tuple[str, tuple[str, ...]]:
    """imaplib's AUTHENTICATE EXTERNAL: the tagged result ("OK" or the NO text) and the capabilities."""
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10)
    caps = conn.capabilities
    try:
        conn.authenticate("EXTERNAL", lambda challenge: authzid)
    except imaplib.IMAP4.error as exc:
        return str(exc), caps
    finally:
        conn.shutdown()
    return "OK", caps


async def last(env: Env, action: str) -> Any:
    return (await env.audit(action))[-1]


async def test_registered_certificate_logs_the_app_mailbox_in(
    tmp_path: Path, db_url: str, pki: Any, provider: Provider, certs: AppCerts
) -> None:
    env = await cert_env(tmp_path, db_url, pki, provider, certs)
    try:
        await accounts.add_certificate(env.rt, DPI, certs.dpi.cert_pem, "issuer-serial")
        result, caps = await asyncio.to_thread(
            imap_external, env.ports["imaps"], env.client_context(certs.dpi)
        )
        assert result == "OK" and "AUTH=EXTERNAL" in caps
        login = await last(env, "login")
        assert login.actor == DPI
        serial = format(certs.dpi.cert.serial_number, "x")
        assert (
            login.request
            == f"imap login (certificate EXTERNAL, subject {certs.dpi.subject}, serial {serial})"
        )
    finally:
        await env.close()


async def test_renewed_certificate_needs_a_subject_registration(env: Env, certs: AppCerts) -> None:
    await accounts.add_certificate(env.rt, DPI, certs.dpi.cert_pem, "issuer-serial")
    result, _ = await asyncio.to_thread(imap_external, env.ports["imaps"], env.client_context(certs.renewed))
    assert "AUTHENTICATIONFAILED" in result
    assert (await last(env, "login-failure")).response == "certificate not registered for any mailbox"
    (row,) = await accounts.list_certificates(env.rt, DPI)
    await accounts.remove_certificate(env.rt, DPI, row.id)
    await accounts.add_certificate(env.rt, DPI, certs.dpi.cert_pem, "subject")
    result, _ = await asyncio.to_thread(imap_external, env.ports["imaps"], env.client_context(certs.renewed))
    assert result == "OK"


async def test_revoked_certificate_is_refused(env: Env, certs: AppCerts) -> None:
    with pytest.raises(AccountError, match="revoked"):
        await accounts.add_certificate(env.rt, DPI, certs.revoked.cert_pem, "issuer-serial")
    # registered by subject before its revocation was published: the CRL still wins at login
    crl = certs.crl_path.read_bytes()
    certs.crl_path.write_bytes(b"")
    env.rt.auth.certificates.revocation.crl_files = []  # type: ignore[union-attr]
    await accounts.add_certificate(env.rt, DPI, certs.revoked.cert_pem, "subject")
    certs.crl_path.write_bytes(crl)
    env.rt.auth.certificates.revocation.crl_files = [certs.crl_path]  # type: ignore[union-attr]
    result, _ = await asyncio.to_thread(imap_external, env.ports["imaps"], env.client_context(certs.revoked))
    assert "AUTHENTICATIONFAILED" in result
    failure = await last(env, "login-failure")
    revoked = certs.revoked.cert
    assert failure.response == (
        f"certificate of {revoked.subject.rfc4514_string()} revoked (serial {revoked.serial_number:x})"
    )


async def test_revoked_intermediate_is_caught_at_login(
    tmp_path: Path, pki: Any, provider: Provider, certs: AppCerts
) -> None:
    """Issue 15's gap: the whole chain is checked, not only the leaf against its direct issuer's CRL."""
    root_crl = tmp_path / "root.crl.pem"
    root_crl.write_bytes(pki.root_crl_path.read_bytes())  # the root's CRL, empty for now
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/chain.db",
        pki,
        provider,
        imap={"client_cert": "optional"},
        auth={"client_crl": [str(certs.crl_path), str(root_crl)]},
    )
    try:
        await accounts.add_certificate(env.rt, DPI, certs.dpi.cert_pem, "subject")
        result, _ = await asyncio.to_thread(imap_external, env.ports["imaps"], env.client_context(certs.dpi))
        assert result == "OK"
        root = _Issuer(pki.root.cert, pki.root.key)
        intermediate = pki.intermediate.cert
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(intermediate.serial_number)
            .revocation_date(pki.now - datetime.timedelta(minutes=1))
            .build()
        )
        root_crl.write_bytes(_crl(root, pki.now, [entry]).public_bytes(serialization.Encoding.PEM))
        result, _ = await asyncio.to_thread(imap_external, env.ports["imaps"], env.client_context(certs.dpi))
        assert "AUTHENTICATIONFAILED" in result
        assert (await last(env, "login-failure")).response == (
            f"certificate of {pki.intermediate.subject} revoked (serial {intermediate.serial_number:x})"
        )
    finally:
        await env.close()


async def test_expired_certificate_is_refused_at_the_handshake(env: Env, certs: AppCerts) -> None:
    with pytest.raises(AccountError, match="expired"):
        await accounts.add_certificate(env.rt, DPI, certs.expired.cert_pem, "subject")
    with pytest.raises((ssl.SSLError, OSError, imaplib.IMAP4.abort)):
        await asyncio.to_thread(imap_external, env.ports["imaps"], env.client_context(certs.expired))
    # the server audits after the client saw the alert
    refused = await wait_for(lambda: env.audit("tls-refused"))
    assert "expired" in refused[-1].response, refused[-1].response


async def test_certificate_of_another_pki_is_refused(env: Env, pki: Any) -> None:
    with pytest.raises((ssl.SSLError, OSError, imaplib.IMAP4.abort)):
        await asyncio.to_thread(imap_external, env.ports["imaps"], env.client_context(pki.tls_impostor))


async def test_authzid_must_be_the_registered_mailbox(env: Env, certs: AppCerts) -> None:
    await accounts.add_certificate(env.rt, DPI, certs.dpi.cert_pem, "issuer-serial")
    result, _ = await asyncio.to_thread(
        imap_external, env.ports["imaps"], env.client_context(certs.dpi), MARTIN.encode()
    )
    assert "AUTHENTICATIONFAILED" in result
    assert (await last(env, "login-failure")).response == f"certificate not registered for {MARTIN}"
    result, _ = await asyncio.to_thread(
        imap_external, env.ports["imaps"], env.client_context(certs.dpi), DPI.encode()
    )
    assert result == "OK"


async def test_external_needs_a_certificate(env: Env) -> None:
    result, caps = await asyncio.to_thread(imap_external, env.ports["imaps"], env.client_context())
    assert "AUTH=EXTERNAL" not in caps and "CANNOT" in result


async def test_listener_without_client_cert_does_not_ask(
    tmp_path: Path, pki: Any, provider: Provider, certs: AppCerts
) -> None:
    env = await start_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/nocert.db", pki, provider)
    try:
        await accounts.add_certificate(env.rt, DPI, certs.dpi.cert_pem, "issuer-serial")
        result, caps = await asyncio.to_thread(
            imap_external, env.ports["imaps"], env.client_context(certs.dpi)
        )
        assert "AUTH=EXTERNAL" not in caps and "CANNOT" in result
    finally:
        await env.close()


async def test_submission_external(env: Env, certs: AppCerts) -> None:
    await accounts.add_certificate(env.rt, DPI, certs.dpi.cert_pem, "issuer-serial")

    def implicit() -> tuple[str, tuple[int, bytes]]:
        with smtplib.SMTP_SSL(
            "127.0.0.1", env.ports["submissions"], context=env.client_context(certs.dpi), timeout=10
        ) as c:
            c.ehlo("dpi.a.mssante.test")
            return c.esmtp_features["auth"], c.docmd("AUTH", "EXTERNAL =")

    def starttls(identity: Any) -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", env.ports["submission"], timeout=10) as c:
            c.starttls(context=env.client_context(identity))
            c.ehlo("dpi.a.mssante.test")
            return [c.docmd("AUTH", "EXTERNAL"), c.docmd("")]

    mechanisms, reply = await asyncio.to_thread(implicit)
    assert "EXTERNAL" in mechanisms.split() and reply[0] == 235, reply
    assert (await last(env, "login")).request.startswith("smtp login (certificate EXTERNAL")
    replies = await asyncio.to_thread(starttls, certs.renewed)
    # the empty challenge, answered with an empty authzid; the renewal is not registered
    assert [r[0] for r in replies] == [334, 535], replies
    assert (await last(env, "login-failure")).response == "certificate not registered for any mailbox"


def test_cert_commands(tmp_path: Path, pki: Any, certs: AppCerts) -> None:
    """``caducee mailbox cert add|list|remove`` and ``mailbox auth`` through click's runner."""
    from mailserver.db import migrate

    db = tmp_path / "cli.db"
    config = tmp_path / "caducee.toml"
    config.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{db}"\n[tls]\npeer_ca = "{pki.peer_ca}"\n'
        f'[auth]\nclient_crl = ["{certs.crl_path}"]\n',
        encoding="utf-8",
    )
    migrate.upgrade(f"sqlite+aiosqlite:///{db}")

    def run(*args: str, code: int = 0) -> str:
        r = CliRunner().invoke(caducee_cli.main, ["--config", str(config), *args])
        assert r.exit_code == code, r.output
        return r.output

    run("domain", "add", "a.mssante.test")
    run("mailbox", "add", DPI, "--type", "APP")
    run("mailbox", "add", MARTIN, "--type", "PER", "--rpps", "10000000009")
    assert "dpi" in run("mailbox", "cert", "add", DPI, str(certs.dpi.cert_path))
    assert "subject" in run(
        "mailbox", "cert", "add", DPI, str(certs.renewed.chain_path), "--match", "subject"
    )
    assert "revoked" in run("mailbox", "cert", "add", DPI, str(certs.revoked.cert_path), code=1)
    assert "APP" in run("mailbox", "cert", "add", MARTIN, str(certs.dpi.cert_path), code=1)
    import json

    rows = json.loads(run("mailbox", "cert", "list", DPI, "--json"))
    assert [r["match"] for r in rows] == ["issuer-serial", "subject"]
    run("mailbox", "cert", "remove", DPI, str(rows[0]["id"]))
    assert len(json.loads(run("mailbox", "cert", "list", DPI, "--json"))) == 1
    assert "cert" in run("mailbox", "auth", DPI, "--allow", "cert")
    assert json.loads(run("mailbox", "show", DPI, "--json"))["auth_methods"] == ["cert"]
    run("mailbox", "auth", DPI, "--allow", "sms", code=1)
