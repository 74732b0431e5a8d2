"""Bearer tokens of the professionals' identity provider (Pro Santé Connect, OpenID Connect).

A token is a JWT signed by the issuer, checked here with joserfc against the issuer's keys (a JWKS
fetched from ``[oauth] jwks_url`` and cached, or read from ``jwks_file``), or handed to the issuer's
RFC 7662 introspection endpoint. Either way the answer is who the professional is (the
``identity_claim``, for Pro Santé Connect ``8`` + RPPS) or a ``TokenError`` whose reason the audit
trail keeps. Which mailboxes that person may open is the authentication module's business.

- Only the configured asymmetric algorithms are accepted, checked on the header before any key is
  chosen: ``alg: none`` and HMAC (which would let the issuer's public key sign, "key confusion")
  never reach verification, and joserfc refuses an RSA/EC key for an HMAC algorithm anyway.
- A key id missing from the cached JWKS fetches it again (key rotation), at most once per
  ``jwks_refresh_interval``, so forged key ids cannot make us hammer the provider.
- ``iss``, ``aud``, ``exp`` are required, ``nbf``/``iat`` honoured, all with ``clock_skew``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from joserfc import errors as jose_errors
from joserfc import jws, jwt
from joserfc.jwk import KeySet

from config.settings import OAuthSettings

log = logging.getLogger("caducee.oauth")


class TokenError(Exception):
    """A refused token; ``reason`` is for the audit trail, ``temporary`` when the provider could not
    be reached (the client may retry: not a bad credential)."""

    def __init__(self, reason: str, temporary: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary


@dataclass(frozen=True)
class TokenIdentity:
    """Who a valid token names: the identity claim's value and, for an RPPS holder, the RPPS."""

    national_id: str
    rpps: str | None
    claims: dict[str, Any] = field(default_factory=dict, compare=False)


def rpps_of(national_id: str) -> str | None:
    """The RPPS in a national identifier: ``8`` + 11 digits (the RPPS type digit), or the 11 digits."""
    value = national_id.strip()
    if len(value) == 12 and value.startswith("8") and value.isdigit():
        return value[1:]
    if len(value) == 11 and value.isdigit():
        return value
    return None


def _claim_reason(exc: jose_errors.ClaimError) -> str:
    claim = getattr(exc, "claim", "")
    if isinstance(exc, jose_errors.ExpiredTokenError) or claim == "exp":
        return "token expired"
    if claim == "iss":
        return "wrong issuer"
    if claim == "aud":
        return "wrong audience"
    if claim in ("nbf", "iat"):
        return "token not yet valid"
    return f"bad claim {claim}"


class TokenValidator:
    """Validates bearer tokens for one ``[oauth]`` configuration; one per process (the JWKS cache)."""

    def __init__(self, settings: OAuthSettings) -> None:
        self.settings = settings
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")  # monotonic time of the last fetch attempt
        self._loaded_at = float("-inf")  # ... of the last successful one
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ keys

    def _load(self, data: bytes) -> KeySet:
        try:
            keys = KeySet.import_key_set(json.loads(data))
        except (ValueError, TypeError, KeyError, jose_errors.JoseError) as exc:
            raise TokenError(f"issuer keys unusable: {exc}", temporary=True) from None
        return keys

    async def _fetch(self) -> KeySet:
        s = self.settings
        if s.jwks_file:
            return self._load(await asyncio.to_thread(Path(s.jwks_file).read_bytes))
        timeout = aiohttp.ClientTimeout(total=s.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(s.jwks_url, headers={"Accept": "application/json"}) as resp,
            ):
                if resp.status != 200:
                    raise TokenError(f"issuer keys: HTTP {resp.status}", temporary=True)
                return self._load(await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            why = str(exc) or type(exc).__name__
            raise TokenError(f"issuer keys unreachable: {why}", temporary=True) from None

    async def keys(self, kid: str | None = None) -> KeySet:
        """The issuer's keys: cached for ``jwks_cache``; fetched again for an unknown ``kid`` when the
        last fetch is older than ``jwks_refresh_interval``. A failed fetch keeps the keys we had."""
        s = self.settings
        async with self._lock:
            now = time.monotonic()
            stale = now - self._loaded_at > s.jwks_cache
            unknown = kid is not None and self._keys is not None and not _has_kid(self._keys, kid)
            if self._keys is None or stale or (unknown and now - self._fetched_at >= s.jwks_refresh_interval):
                self._fetched_at = now
                try:
                    self._keys = await self._fetch()
                    self._loaded_at = time.monotonic()
                except TokenError as exc:
                    if self._keys is None:
                        raise
                    log.warning("keeping the cached issuer keys: %s", exc.reason)
            assert self._keys is not None
            return self._keys

    # ------------------------------------------------------------------ tokens

    async def validate(self, token: str) -> TokenIdentity:
        """Who ``token`` names, or TokenError with the reason."""
        if len(token) > self.settings.token_size:
            raise TokenError("token too large")
        if self.settings.introspection_url:
            claims = await self._introspect(token)
        else:
            claims = await self._verify_jwt(token)
        return self._identity(claims)

    async def _verify_jwt(self, token: str) -> dict[str, Any]:
        s = self.settings
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (UnicodeEncodeError, ValueError, jose_errors.JoseError):
            raise TokenError("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in s.algorithms:  # before any key is looked at: none, HS*, or not configured
            raise TokenError(f"algorithm {alg!r} not allowed")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed token")
        keys = await self.keys(kid)
        if kid is not None and not _has_kid(keys, kid):
            raise TokenError(f"unknown key id {kid!r}")
        try:
            decoded = jwt.decode(token, keys, algorithms=list(s.algorithms))
        except jose_errors.BadSignatureError:
            raise TokenError("bad signature") from None
        except (jose_errors.JoseError, ValueError) as exc:
            raise TokenError(f"token refused: {exc}") from None
        registry = jwt.JWTClaimsRegistry(
            leeway=int(s.clock_skew),
            iss={"essential": True, "value": s.issuer},
            aud={"essential": True, "value": s.audience},
            exp={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except jose_errors.ClaimError as exc:
            raise TokenError(_claim_reason(exc)) from None
        return dict(decoded.claims)

    async def _introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662: the issuer says whether the token is active and whose it is."""
        s = self.settings
        headers = {"Accept": "application/json"}
        if s.client_id:
            secret = ""
            if s.client_secret_file:
                secret = (await asyncio.to_thread(Path(s.client_secret_file).read_text)).strip()
            basic = base64.b64encode(f"{s.client_id}:{secret}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {basic}"
        timeout = aiohttp.ClientTimeout(total=s.timeout)
        form = {"token": token, "token_type_hint": "access_token"}
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(s.introspection_url, data=form, headers=headers) as resp,
            ):
                if resp.status != 200:
                    raise TokenError(f"introspection: HTTP {resp.status}", temporary=True)
                claims = json.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            why = str(exc) or type(exc).__name__
            raise TokenError(f"introspection unreachable: {why}", temporary=True) from None
        except ValueError:
            raise TokenError("introspection: not JSON", temporary=True) from None
        if not isinstance(claims, dict) or claims.get("active") is not True:
            raise TokenError("token not active")
        if claims.get("iss", s.issuer) != s.issuer:
            raise TokenError("wrong issuer")
        aud = claims.get("aud")
        if s.audience and aud is not None and s.audience not in (aud if isinstance(aud, list) else [aud]):
            raise TokenError("wrong audience")
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp + s.clock_skew < time.time():
            raise TokenError("token expired")
        return claims

    def _identity(self, claims: dict[str, Any]) -> TokenIdentity:
        value = claims.get(self.settings.identity_claim)
        if not isinstance(value, str) or not value.strip():
            raise TokenError(f"no {self.settings.identity_claim} claim")
        return TokenIdentity(value.strip(), rpps_of(value), claims)


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)
