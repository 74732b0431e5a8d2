"""SASL messages shared by IMAP AUTHENTICATE and SMTP AUTH: OAUTHBEARER (RFC 7628), XOAUTH2 (as
Gmail and Outlook clients send it) and EXTERNAL (RFC 4422 appendix A).

Only the parsing and the error challenge live here; the protocols converse, ``mailserver.auth``
decides. A bearer failure is answered with a JSON challenge (RFC 7628 §3.2.2), the client's dummy
response (``%x01``, or empty for XOAUTH2) is read, then the protocol's failure reply follows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from config.settings import OAuthSettings

BEARER_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


class SASLError(Exception):
    """A client message that does not parse; the text is the reply's."""


@dataclass(frozen=True)
class BearerResponse:
    token: str
    authzid: str | None  # the mailbox asked for (gs2 ``a=`` or XOAUTH2 ``user=``), None when absent


def _saslname(value: str) -> str:
    """RFC 5801 §4 ``saslname``: ``=2C`` is a comma, ``=3D`` an equals sign, nothing else escaped."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "=":
            code = value[i + 1 : i + 3]
            if code not in ("2C", "3D"):
                raise SASLError("malformed authorization identity")
            out.append("," if code == "2C" else "=")
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _token(kvpairs: list[str]) -> str:
    """The bearer token of ``auth=Bearer <token>`` among ``key=value`` pairs."""
    for pair in kvpairs:
        key, sep, value = pair.partition("=")
        if sep and key == "auth":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise SASLError("expected auth=Bearer <token>")
            return token.strip()
    raise SASLError("no auth=Bearer <token>")


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("SASL response is not UTF-8") from None


def parse_oauthbearer(data: bytes) -> BearerResponse:
    """RFC 7628 §3.1: ``gs2-header %x01 *(key=value %x01) %x01``; channel binding is not offered."""
    text = _text(data)
    head, sep, rest = text.partition("\x01")
    if not sep or not rest.endswith("\x01"):
        raise SASLError("malformed OAUTHBEARER response")
    parts = head.split(",")
    if len(parts) != 3 or parts[2] != "" or parts[0] not in ("n", "y"):
        raise SASLError("malformed OAUTHBEARER gs2 header")
    authzid: str | None = None
    if parts[1]:
        if not parts[1].startswith("a="):
            raise SASLError("malformed OAUTHBEARER gs2 header")
        authzid = _saslname(parts[1][2:]) or None
    return BearerResponse(_token([p for p in rest.split("\x01") if p]), authzid)


def parse_xoauth2(data: bytes) -> BearerResponse:
    """``user=ADDRESS %x01 auth=Bearer TOKEN %x01 %x01`` (Google's and Microsoft's XOAUTH2)."""
    text = _text(data)
    if not text.endswith("\x01\x01"):
        raise SASLError("malformed XOAUTH2 response")
    pairs = [p for p in text.split("\x01") if p]
    user = next((p[5:] for p in pairs if p.startswith("user=")), "")
    return BearerResponse(_token(pairs), user or None)


def parse_bearer(mechanism: str, data: bytes) -> BearerResponse:
    return parse_oauthbearer(data) if mechanism == "OAUTHBEARER" else parse_xoauth2(data)


def bearer_challenge(mechanism: str, settings: OAuthSettings) -> bytes:
    """The JSON error sent as a challenge after a refused token (RFC 7628 §3.2.2; XOAUTH2's form)."""
    if mechanism == "XOAUTH2":
        body: dict[str, str] = {"status": "401", "schemes": "bearer", "scope": settings.scope}
    else:
        body = {
            "status": "invalid_token",
            "scope": settings.scope,
            "openid-configuration": settings.issuer.rstrip("/") + "/.well-known/openid-configuration",
        }
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def parse_external(data: bytes) -> str | None:
    """RFC 4422 appendix A: the message is the authorization identity, empty for "the one my
    certificate names"."""
    return _text(data).strip() or None
