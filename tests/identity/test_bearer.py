"""Bearer tokens (issue 15): SASL OAUTHBEARER (RFC 7628) and XOAUTH2 on IMAP and submission, with a
loopback OpenID provider standing in for Pro Santé Connect; clients are imaplib and smtplib."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.identity.conftest import (
    CABINET,
    DURAND_ID,
    MARTIN,
    MARTIN_ID,
    SECRETARIAT,
    Env,
    oauth_section,
    start_env,
)
from tests.identity.provider import Provider, oauthbearer, xoauth2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def imap_raw(port: int, ctx: ssl.SSLContext, *lines: bytes) -> list[bytes]:
    """Send each line (SASL-IR AUTHENTICATE, then any response to a challenge) and collect what the
    server answers, up to the tagged reply of ``a1``."""
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10)
    try:
        answers: list[bytes] = []
        for line in lines:
            if answers and answers[-1].startswith(b"a1 "):
                break
            conn.send(line + b"\r\n")
            while True:
                got = conn.readline().rstrip(b"\r\n")
                answers.append(got)
                if got.startswith((b"+", b"a1 ")) or not got:
                    break
        return answers
    finally:
        conn.shutdown()


def imap_login(port: int, ctx: ssl.SSLContext, mechanism: str, message: bytes) -> tuple[str, list[str]]:
    """imaplib's AUTHENTICATE with a callable (no SASL-IR): the tagged result and the capabilities."""
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10)
    try:
        typ, _ = conn.authenticate(mechanism, lambda challenge: message)
        conn.select("INBOX")
        return typ, [c for c in conn.capabilities]
    finally:
        conn.logout()


async def bearer_imap(env: Env, token: str, authzid: str | None = None) -> list[bytes]:
    ir = _b64(oauthbearer(token, authzid)).encode()
    return await asyncio.to_thread(
        imap_raw, env.ports["imaps"], env.client_context(), b"a1 AUTHENTICATE OAUTHBEARER " + ir, b"AQ=="
    )


async def last_failure(env: Env) -> Any:
    return (await env.audit("login-failure"))[-1]


async def test_valid_token_opens_the_persons_mailbox(env: Env) -> None:
    token = env.provider.token(MARTIN_ID)
    answers = await bearer_imap(env, token)
    assert answers[-1].startswith(b"a1 OK"), answers
    login = (await env.audit("login"))[-1]
    assert login.actor == MARTIN
    assert login.request == f"imap login (bearer token OAUTHBEARER, person {MARTIN_ID})"


async def test_xoauth2_with_imaplib_callable_and_ec_key(env: Env) -> None:
    token = env.provider.token(MARTIN_ID, key=env.provider.ec)
    typ, caps = await asyncio.to_thread(
        imap_login, env.ports["imaps"], env.client_context(), "XOAUTH2", xoauth2(MARTIN, token)
    )
    assert typ == "OK" and "AUTH=XOAUTH2" in caps
    assert (await env.audit("login"))[-1].request == f"imap login (bearer token XOAUTH2, person {MARTIN_ID})"


async def test_token_login_and_lock_out_on_both_engines(
    tmp_path: Path, db_url: str, pki: Any, provider: Provider
) -> None:
    env = await start_env(tmp_path, db_url, pki, provider)
    try:
        assert (await bearer_imap(env, provider.token(MARTIN_ID), SECRETARIAT))[-1].startswith(b"a1 OK")
        for _ in range(3):
            assert (await bearer_imap(env, provider.unsigned(MARTIN_ID), SECRETARIAT))[-1].startswith(
                b"a1 NO"
            )
        answers = await bearer_imap(env, provider.token(MARTIN_ID), SECRETARIAT)
        assert answers[-1].startswith(b"a1 NO [UNAVAILABLE]"), answers
    finally:
        await env.close()


async def test_hmac_is_refused_by_the_library_too(provider: Provider) -> None:
    """Even a validator whose allowed list were to name HS256 would not take the RSA public key as an
    HMAC secret: joserfc refuses an RSA key for an HMAC algorithm."""
    from config.settings import OAuthSettings
    from mailserver.oauth import TokenError, TokenValidator

    settings = OAuthSettings(issuer=provider.issuer, audience="caducee-test", jwks_url=provider.jwks_url)
    settings.algorithms = ["RS256", "HS256"]  # type: ignore[list-item]  # what the settings forbid
    with pytest.raises(TokenError, match="invalid_key_type"):
        await TokenValidator(settings).validate(provider.key_confusion(MARTIN_ID))
    assert (await TokenValidator(settings).validate(provider.token(MARTIN_ID))).rpps == "10000000009"


@pytest.mark.parametrize("shared", [SECRETARIAT, CABINET])
async def test_authzid_selects_an_org_or_cab_mailbox_of_the_person(env: Env, shared: str) -> None:
    answers = await bearer_imap(env, env.provider.token(MARTIN_ID), shared)
    assert answers[-1].startswith(b"a1 OK"), answers
    assert (await env.audit("login"))[-1].actor == shared


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "token expired"),
        ("audience", "wrong audience"),
        ("issuer", "wrong issuer"),
        ("signature", "bad signature"),
        ("none", "algorithm 'none' not allowed"),
        ("hs256", "algorithm 'HS256' not allowed"),
        ("not-yet", "token not yet valid"),
        ("no-claim", "no preferred_username claim"),
    ],
)
async def test_refused_tokens_get_the_json_challenge_then_no(env: Env, case: str, reason: str) -> None:
    p = env.provider
    token = {
        "expired": lambda: p.token(MARTIN_ID, exp=1_700_000_000, iat=1_699_999_000),
        "audience": lambda: p.token(MARTIN_ID, aud="another-service"),
        "issuer": lambda: p.token(MARTIN_ID, iss="https://evil.test/realms/esante-wallet"),
        "signature": lambda: p.token(MARTIN_ID, key=p.stranger),
        "none": lambda: p.unsigned(MARTIN_ID),
        "hs256": lambda: p.key_confusion(MARTIN_ID),
        "not-yet": lambda: p.token(MARTIN_ID, nbf=2_000_000_000),
        "no-claim": lambda: p.token(MARTIN_ID, preferred_username=None),
    }[case]()
    answers = await bearer_imap(env, token)
    challenge = json.loads(base64.b64decode(answers[0].removeprefix(b"+ ")))
    assert challenge["status"] == "invalid_token"
    assert challenge["openid-configuration"] == p.issuer + "/.well-known/openid-configuration"
    assert answers[-1].startswith(b"a1 NO [AUTHENTICATIONFAILED]"), answers
    failure = await last_failure(env)
    assert failure.response == reason
    assert failure.request.startswith("imap login (bearer token OAUTHBEARER")


async def test_person_without_that_mailbox(env: Env) -> None:
    answers = await bearer_imap(env, env.provider.token(DURAND_ID), SECRETARIAT)
    assert answers[-1].startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    failure = await last_failure(env)
    assert (failure.actor, failure.response) == (
        SECRETARIAT,
        f"{SECRETARIAT} is not a mailbox of this person",
    )
    answers = await bearer_imap(env, env.provider.token("810000000025"))
    assert answers[-1].startswith(b"a1 NO")
    assert (await last_failure(env)).response == "no mailbox for this person"
    # and the other way round: martin's token cannot open durand's mailbox
    answers = await bearer_imap(env, env.provider.token(MARTIN_ID), "dr.durand@a.mssante.test")
    assert answers[-1].startswith(b"a1 NO")


async def test_unknown_key_id_fetches_the_jwks_again(tmp_path: Path, pki: Any, provider: Provider) -> None:
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/rotation.db",
        pki,
        provider,
        oauth=oauth_section(provider, jwks_refresh_interval="0s"),
    )
    try:
        assert (await bearer_imap(env, provider.token(MARTIN_ID)))[-1].startswith(b"a1 OK")
        assert provider.jwks_fetches == 1
        assert (await bearer_imap(env, provider.token(MARTIN_ID)))[-1].startswith(b"a1 OK")
        assert provider.jwks_fetches == 1  # cached
        provider.rotate()
        assert (await bearer_imap(env, provider.token(MARTIN_ID, key=provider.next_key)))[-1].startswith(
            b"a1 OK"
        )
        assert provider.jwks_fetches == 2
    finally:
        await env.close()


async def test_unknown_key_ids_do_not_hammer_the_provider(env: Env) -> None:
    """Within ``jwks_refresh_interval`` (30s by default) an unknown kid is refused without a fetch."""
    p = env.provider
    assert (await bearer_imap(env, p.token(MARTIN_ID)))[-1].startswith(b"a1 OK")
    p.rotate()
    answers = await bearer_imap(env, p.token(MARTIN_ID, key=p.next_key))
    assert answers[-1].startswith(b"a1 NO")
    assert (await last_failure(env)).response == "unknown key id 'rsa-2'"
    assert p.jwks_fetches == 1


async def test_failures_count_toward_the_lock_out(env: Env) -> None:
    """``auth.max_failures`` is 3 here: three refused tokens naming the mailbox lock it, even for a
    valid token afterwards."""
    for _ in range(3):
        answers = await bearer_imap(env, env.provider.token(MARTIN_ID, aud="x"), MARTIN)
        assert answers[-1].startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    answers = await asyncio.to_thread(
        imap_raw,
        env.ports["imaps"],
        env.client_context(),
        b"a1 AUTHENTICATE OAUTHBEARER " + _b64(oauthbearer(env.provider.token(MARTIN_ID), MARTIN)).encode(),
    )
    assert answers[-1].startswith(b"a1 NO [UNAVAILABLE]"), answers
    assert (await last_failure(env)).response == "locked"


async def test_provider_unreachable_is_a_temporary_failure(env: Env) -> None:
    await env.provider.stop()
    answers = await asyncio.to_thread(
        imap_raw,
        env.ports["imaps"],
        env.client_context(),
        b"a1 AUTHENTICATE XOAUTH2 " + _b64(xoauth2(MARTIN, env.provider.token(MARTIN_ID))).encode(),
    )
    assert answers[-1].startswith(b"a1 NO [UNAVAILABLE]"), answers
    assert (await last_failure(env)).response.startswith("issuer keys unreachable")


async def test_capabilities_offer_tokens_only_inside_tls(env: Env) -> None:
    def caps(port: int, tls: bool) -> tuple[str, ...]:
        cls = imaplib.IMAP4_SSL if tls else imaplib.IMAP4
        kwargs = {"ssl_context": env.client_context()} if tls else {}
        conn = cls("127.0.0.1", port, **kwargs)
        try:
            return conn.capabilities
        finally:
            conn.logout()

    assert {"AUTH=OAUTHBEARER", "AUTH=XOAUTH2"} <= set(
        await asyncio.to_thread(caps, env.ports["imaps"], True)
    )
    plain = await asyncio.to_thread(caps, env.ports["imap"], False)
    assert "AUTH=OAUTHBEARER" not in plain and "STARTTLS" in plain


async def test_not_offered_without_oauth_settings(tmp_path: Path, pki: Any, provider: Provider) -> None:
    env = await start_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/off.db", pki, provider, oauth={})
    try:
        ir = _b64(oauthbearer(provider.token(MARTIN_ID))).encode()
        answers = await asyncio.to_thread(
            imap_raw, env.ports["imaps"], env.client_context(), b"a1 AUTHENTICATE OAUTHBEARER " + ir
        )
        assert answers[-1].startswith(b"a1 NO [CANNOT]")

        def ehlo() -> tuple[str, tuple[int, bytes]]:
            with smtplib.SMTP_SSL(
                "127.0.0.1", env.ports["submissions"], context=env.client_context(), timeout=10
            ) as c:
                c.ehlo("client.a.mssante.test")
                return c.esmtp_features.get("auth", ""), c.docmd("AUTH", "OAUTHBEARER " + ir.decode())

        mechanisms, reply = await asyncio.to_thread(ehlo)
        assert mechanisms.split() == ["PLAIN", "LOGIN"]
        assert reply[0] == 504
    finally:
        await env.close()


# ---------------------------------------------------------------------------------------------- SMTP


def smtp_auth(port: int, ctx: ssl.SSLContext, *lines: str, starttls: bool = True) -> list[tuple[int, bytes]]:
    """Raw AUTH lines over submission (STARTTLS first unless told), each reply collected."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("client.a.mssante.test")
        if starttls:
            c.starttls(context=ctx)
            c.ehlo("client.a.mssante.test")
        return [c.docmd(*line.split(" ", 1)) for line in lines]


async def test_submission_oauthbearer_and_xoauth2(env: Env) -> None:
    token = env.provider.token(MARTIN_ID)
    ctx = env.client_context()
    port = env.ports["submission"]
    replies = await asyncio.to_thread(smtp_auth, port, ctx, "AUTH OAUTHBEARER " + _b64(oauthbearer(token)))
    assert replies[0][0] == 235, replies
    replies = await asyncio.to_thread(
        smtp_auth, port, ctx, "AUTH XOAUTH2 " + _b64(xoauth2(SECRETARIAT, token))
    )
    assert replies[0][0] == 235, replies
    login = (await env.audit("login"))[-1]
    assert (login.actor, login.request) == (
        SECRETARIAT,
        f"smtp login (bearer token XOAUTH2, person {MARTIN_ID} {MARTIN} as member of {SECRETARIAT})",
    )


async def test_submission_refusal_is_a_challenge_then_535(env: Env) -> None:
    bad = env.provider.key_confusion(MARTIN_ID)
    replies = await asyncio.to_thread(
        smtp_auth,
        env.ports["submission"],
        env.client_context(),
        "AUTH OAUTHBEARER " + _b64(oauthbearer(bad)),
        "AQ==",
    )
    assert replies[0][0] == 334
    assert json.loads(base64.b64decode(replies[0][1]))["status"] == "invalid_token"
    assert replies[1][0] == 535 and replies[1][1].startswith(b"5.7.8"), replies
    replies = await asyncio.to_thread(
        smtp_auth,
        env.ports["submission"],
        env.client_context(),
        "AUTH XOAUTH2 " + _b64(xoauth2(MARTIN, bad)),
        "",
    )
    assert replies[0][0] == 334
    assert json.loads(base64.b64decode(replies[0][1])) == {
        "status": "401",
        "schemes": "bearer",
        "scope": "openid",
    }
    assert replies[1][0] == 535


async def test_submission_tokens_only_inside_tls(env: Env) -> None:
    token = env.provider.token(MARTIN_ID)
    replies = await asyncio.to_thread(
        smtp_auth,
        env.ports["submission"],
        env.client_context(),
        "AUTH OAUTHBEARER " + _b64(oauthbearer(token)),
        starttls=False,
    )
    assert replies[0][0] == 530  # RFC 3207: STARTTLS first

    def features() -> str:
        with smtplib.SMTP_SSL(
            "127.0.0.1", env.ports["submissions"], context=env.client_context(), timeout=10
        ) as c:
            c.ehlo("client.a.mssante.test")
            return c.esmtp_features.get("auth", "")

    assert (await asyncio.to_thread(features)).split() == ["PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"]


async def test_introspection_endpoint(tmp_path: Path, pki: Any, provider: Provider) -> None:
    from tests.identity.provider import CLIENT_ID, CLIENT_SECRET

    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    section = oauth_section(
        provider,
        jwks_url=None,
        introspection_url=provider.introspection_url,
        client_id=CLIENT_ID,
        client_secret_file=str(secret),
    )
    env = await start_env(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path}/introspect.db", pki, provider, oauth=section
    )
    try:
        token = provider.token(MARTIN_ID)
        assert (await bearer_imap(env, token))[-1].startswith(b"a1 OK")
        assert provider.introspections[-1]["token"] == token
        provider.revoked.add(token)
        assert (await bearer_imap(env, token))[-1].startswith(b"a1 NO [AUTHENTICATIONFAILED]")
        assert (await last_failure(env)).response == "token not active"
        assert provider.jwks_fetches == 0
    finally:
        await env.close()


async def test_jwks_file(tmp_path: Path, provider: Provider) -> None:
    """Keys from a file (``jwks_file``), for a provider whose keys are distributed out of band."""
    from joserfc.jwk import KeySet

    from config.settings import from_dict
    from mailserver.oauth import TokenError, TokenValidator

    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(KeySet([provider.rsa]).as_dict(private=False)))
    settings = from_dict(
        {"oauth": {"issuer": provider.issuer, "audience": "caducee-test", "jwks_file": str(keys)}}
    ).oauth
    validator = TokenValidator(settings)
    identity = await validator.validate(provider.token(MARTIN_ID))
    assert (identity.national_id, identity.rpps) == (MARTIN_ID, "10000000009")
    with pytest.raises(TokenError, match="unknown key id 'ec-1'"):
        await validator.validate(provider.token(MARTIN_ID, key=provider.ec))
    assert provider.jwks_fetches == 0


async def test_submission_takes_a_large_token(env: Env) -> None:
    """RFC 4954 §4: an AUTH line may be 12,288 octets, more than ``smtp_line_length``; Pro Santé
    Connect's tokens, with their claims, come close to 4 KiB once in base64."""
    token = env.provider.token(MARTIN_ID, SubjectRefPro={"exercices": ["x" * 60] * 60})
    line = "AUTH OAUTHBEARER " + _b64(oauthbearer(token))
    assert 6000 < len(line) < 12288
    replies = await asyncio.to_thread(smtp_auth, env.ports["submission"], env.client_context(), line)
    assert replies[0][0] == 235, replies
    replies = await asyncio.to_thread(
        smtp_auth, env.ports["submission"], env.client_context(), "NOOP " + "x" * 5000
    )
    assert replies[0][0] == 500  # other commands keep smtp_line_length

    def long_data_line() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", env.ports["submission"], timeout=10) as c:
            c.starttls(context=env.client_context())
            c.ehlo("client.a.mssante.test")
            assert c.docmd("AUTH", "OAUTHBEARER " + _b64(oauthbearer(token)))[0] == 235
            c.mail(MARTIN)
            c.rcpt(SECRETARIAT)
            return c.data(b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n")

    code, text = await asyncio.to_thread(long_data_line)
    assert (code, text[:5]) == (500, b"5.5.2")  # and message lines too
