"""``[oauth]`` and ``client_cert`` settings: every mistake is one line naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from config.settings import ConfigError, from_dict

ISSUER = "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"
JWKS = ISSUER + "/protocol/openid-connect/certs"


def oauth(**values: Any) -> Any:
    return from_dict({"oauth": values}).oauth


def test_off_by_default_and_on_with_an_issuer() -> None:
    assert not from_dict({}).oauth.enabled
    s = oauth(issuer=ISSUER, audience="caducee", jwks_url=JWKS)
    assert (
        s.enabled and s.algorithms == ["RS256", "PS256", "ES256"] and s.identity_claim == "preferred_username"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"issuer": ISSUER, "audience": "c", "jwks_url": JWKS, "algorithms": ["HS256"]},
            "algorithms: expected one of",
        ),
        (
            {"issuer": ISSUER, "audience": "c", "jwks_url": JWKS, "algorithms": ["none"]},
            "algorithms: expected one of",
        ),
        ({"issuer": ISSUER, "audience": "c", "jwks_url": JWKS, "algorithms": []}, "at least one"),
        ({"issuer": ISSUER, "audience": "c"}, "exactly one of jwks_url, jwks_file, introspection_url"),
        (
            {"issuer": ISSUER, "audience": "c", "jwks_url": JWKS, "introspection_url": JWKS},
            "exactly one of",
        ),
        ({"jwks_url": JWKS}, "[oauth] issuer: required with jwks_url"),
        ({"issuer": ISSUER, "jwks_url": JWKS}, "[oauth] audience: required"),
        (
            {"issuer": "auth.example.test", "audience": "c", "jwks_url": JWKS},
            "issuer: expected an http(s) URL",
        ),
        ({"issuer": ISSUER, "audience": "c", "jwks_url": JWKS, "clock_skew": "soon"}, "clock_skew"),
        ({"issuer": ISSUER, "audience": "c", "jwks_url": JWKS, "timeout": 0}, "timeout: must be more than 0"),
        ({"issuer": ISSUER, "audience": "c", "jwks_url": JWKS, "claim": "sub"}, "unknown key 'claim'"),
    ],
)
def test_mistakes_are_one_line(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        oauth(**values)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_client_cert_per_listener() -> None:
    s = from_dict({"imap": {"client_cert": "optional"}})
    assert (s.imap.client_cert, s.submission.client_cert) == ("optional", "none")
    with pytest.raises(ConfigError, match=r"\[submission\] client_cert"):
        from_dict({"submission": {"client_cert": "required"}})
