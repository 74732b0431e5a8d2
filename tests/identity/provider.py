"""A small OpenID provider standing in for Pro Santé Connect, on loopback, for the identity tests.

It has its own RSA and EC keys (joserfc), publishes the public ones as a JWKS over aiohttp (counting
the fetches, so a test can see a refresh), answers RFC 7662 introspection, and issues tokens with the
claims a test chooses. Forged tokens (``alg: none``, HS256 keyed with the public key) are built by hand,
since no library signs them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

AUDIENCE = "caducee-test"
CLIENT_ID = "caducee-introspection"
CLIENT_SECRET = "introspection-secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Provider:
    rsa: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, {"kid": "rsa-1"}, private=True))
    ec: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", {"kid": "ec-1"}, private=True))
    # Signed later by a key rotation: published only once ``rotate`` is called.
    next_key: RSAKey = field(
        default_factory=lambda: RSAKey.generate_key(2048, {"kid": "rsa-2"}, private=True)
    )
    stranger: RSAKey = field(
        default_factory=lambda: RSAKey.generate_key(2048, {"kid": "rsa-1"}, private=True)
    )
    published: list[Any] = field(default_factory=list)
    jwks_fetches: int = 0
    introspections: list[dict[str, str]] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/esante-wallet"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    @property
    def introspection_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token/introspect"

    async def start(self) -> None:
        self.published = [self.rsa, self.ec]
        app = web.Application()
        app.router.add_get("/realms/esante-wallet/protocol/openid-connect/certs", self._jwks)
        app.router.add_post(
            "/realms/esante-wallet/protocol/openid-connect/token/introspect", self._introspect
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def rotate(self) -> None:
        """The provider starts signing with ``next_key`` and publishes it."""
        self.published.append(self.next_key)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        keys = KeySet(self.published).as_dict(private=False)
        return web.json_response(keys)

    async def _introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = str(form.get("token", ""))
        self.introspections.append({"token": token})
        try:
            claims = dict(jwt.decode(token, KeySet(self.published)).claims)
        except Exception:
            return web.json_response({"active": False})
        if token in self.revoked or claims.get("exp", 0) < time.time():
            return web.json_response({"active": False})
        return web.json_response({"active": True, **claims})

    # ------------------------------------------------------------------ tokens

    def claims(self, national_id: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": hashlib.sha256(national_id.encode()).hexdigest()[:16],
            "iat": now,
            "exp": now + 300,
            "preferred_username": national_id,
            "scope": "openid scope_all",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, national_id: str, key: Any = None, alg: str | None = None, **overrides: Any) -> str:
        """A token signed by ``key`` (default the RSA key) with the claims of ``claims``."""
        key = key or self.rsa
        alg = alg or ("ES256" if isinstance(key, ECKey) else "RS256")
        header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
        return jwt.encode(header, self.claims(national_id, **overrides), key)

    def unsigned(self, national_id: str) -> str:
        """``alg: none`` (RFC 7519 §6): no signature at all."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(national_id)).encode())}."

    def key_confusion(self, national_id: str) -> str:
        """HS256 with the provider's *public* RSA key as the HMAC secret: what a validator that picks
        the algorithm from the header would accept."""
        secret = self.rsa.as_pem(private=False)
        header = _b64(json.dumps({"alg": "HS256", "kid": self.rsa.kid, "typ": "JWT"}).encode())
        payload = _b64(json.dumps(self.claims(national_id)).encode())
        signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"


def oauthbearer(token: str, authzid: str | None = None, port: int = 993) -> bytes:
    """An RFC 7628 §3.1 client response, as Thunderbird sends it (host and port included)."""
    gs2 = f"n,a={authzid.replace('=', '=3D').replace(',', '=2C')}," if authzid else "n,,"
    return f"{gs2}\x01host=127.0.0.1\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
