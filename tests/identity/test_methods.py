"""Per-mailbox login methods (``caducee mailbox auth ADDRESS --allow ...``), enforced by the one
authentication path every protocol calls: IMAP, submission (and the portal, LDAP, the API alike)."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest

from mailserver import accounts
from mailserver.accounts import AccountError
from tests.identity.certs import make_app_certs
from tests.identity.conftest import DPI, MARTIN, MARTIN_ID, PASSWORD, Env, start_env
from tests.identity.provider import Provider, oauthbearer


def imap_password(port: int, ctx: ssl.SSLContext, user: str, password: str) -> str:
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10)
    try:
        conn.login(user, password)
    except imaplib.IMAP4.error as exc:
        return str(exc)
    finally:
        conn.shutdown()
    return "OK"


def imap_bearer(port: int, ctx: ssl.SSLContext, token: str) -> str:
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10)
    try:
        conn.authenticate("OAUTHBEARER", lambda challenge: oauthbearer(token) if not challenge else b"\x01")
    except imaplib.IMAP4.error as exc:
        return str(exc)
    finally:
        conn.shutdown()
    return "OK"


def smtp_plain(port: int, ctx: ssl.SSLContext, user: str, password: str) -> int:
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=10) as c:
        c.ehlo("client.a.mssante.test")
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return c.docmd("AUTH", "PLAIN " + blob)[0]


async def test_password_refused_once_only_tokens_are_allowed(env: Env) -> None:
    ctx, port = env.client_context(), env.ports["imaps"]
    assert await asyncio.to_thread(imap_password, port, ctx, MARTIN, PASSWORD) == "OK"
    login = (await env.audit("login"))[-1]
    assert login.request == f"imap login (password, person {MARTIN_ID})"  # a PER mailbox names its RPPS
    view = await accounts.set_auth_methods(env.rt, MARTIN, ["oauth"])
    assert view.auth_methods == ["oauth"]
    refused = await asyncio.to_thread(imap_password, port, ctx, MARTIN, PASSWORD)
    assert "AUTHENTICATIONFAILED" in refused  # the reply of a wrong password: no oracle
    failure = (await env.audit("login-failure"))[-1]
    assert (failure.actor, failure.response) == (MARTIN, "password not allowed for this mailbox")
    assert await asyncio.to_thread(smtp_plain, env.ports["submissions"], ctx, MARTIN, PASSWORD) == 535
    assert await asyncio.to_thread(imap_bearer, port, ctx, env.provider.token(MARTIN_ID)) == "OK"


async def test_application_passwords_apart_from_the_password(env: Env) -> None:
    ctx, port = env.client_context(), env.ports["imaps"]
    _, secret = await accounts.add_app_password(env.rt, MARTIN, "Thunderbird")
    await accounts.set_auth_methods(env.rt, MARTIN, ["app-password", "oauth"])
    assert "AUTHENTICATIONFAILED" in await asyncio.to_thread(imap_password, port, ctx, MARTIN, PASSWORD)
    assert await asyncio.to_thread(imap_password, port, ctx, MARTIN, secret) == "OK"
    await accounts.set_auth_methods(env.rt, MARTIN, ["password"])
    assert "AUTHENTICATIONFAILED" in await asyncio.to_thread(imap_password, port, ctx, MARTIN, secret)
    assert "AUTHENTICATIONFAILED" in await asyncio.to_thread(
        imap_bearer, port, ctx, env.provider.token(MARTIN_ID)
    )
    assert (await env.audit("login-failure"))[-1].response == "oauth not allowed for this mailbox"
    # every method again: no restriction stored
    view = await accounts.set_auth_methods(env.rt, MARTIN, ["oauth", "cert", "app-password", "password"])
    assert view.auth_methods is None
    assert await asyncio.to_thread(imap_password, port, ctx, MARTIN, PASSWORD) == "OK"


async def test_certificate_only_software_mailbox(tmp_path: Path, pki: Any, provider: Provider) -> None:
    certs = make_app_certs(pki, tmp_path / "app-pki")
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/methods.db",
        pki,
        provider,
        imap={"client_cert": "optional"},
    )
    try:
        await accounts.set_password(env.rt, DPI, PASSWORD)
        await accounts.add_certificate(env.rt, DPI, certs.dpi.cert_pem, "issuer-serial")
        await accounts.set_auth_methods(env.rt, DPI, ["cert"])
        ctx = env.client_context(certs.dpi)
        refused = await asyncio.to_thread(imap_password, env.ports["imaps"], ctx, DPI, PASSWORD)
        assert "AUTHENTICATIONFAILED" in refused

        def external() -> str:
            conn = imaplib.IMAP4_SSL("127.0.0.1", env.ports["imaps"], ssl_context=ctx, timeout=10)
            try:
                return conn.authenticate("EXTERNAL", lambda challenge: b"")[0]
            finally:
                conn.shutdown()

        assert await asyncio.to_thread(external) == "OK"
    finally:
        await env.close()


async def test_unknown_method_is_refused(env: Env) -> None:
    with pytest.raises(AccountError, match="methods must be among"):
        await accounts.set_auth_methods(env.rt, MARTIN, ["sms"])
