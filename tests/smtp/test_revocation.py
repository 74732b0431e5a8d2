"""Revocation of MTA peers (issue 19): CRL files, CRL distribution points fetched over http and cached,
OCSP, forged CRLs, unreachable sources; inbound refusals at MAIL and outbound temporary failures.

The peers' certificates come from the test PKI's intermediate (``tests/pki.py``); the ones naming a
distribution point or a responder are issued here, with operator B's subject so the trust list
accepts them, pointing at aiohttp servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import smtplib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from mailserver.queue.outbound import Outbound
from mailserver.queue.queue import Batch, QueuedRecipient
from tests.ports import free_port
from tests.smtp.conftest import MARTIN, Raw, SMTPEnv, start_env, tls_client
from tests.smtp.sink import SlowSink

PEER = "b.mssante.test"
SENDER = "dr.durand@b.mssante.test"


def crl_of(
    issuer: Any, serials: list[int], signer: ec.EllipticCurvePrivateKey | None = None
) -> x509.CertificateRevocationList:
    """A CRL in ``issuer``'s name revoking ``serials``, signed by its key (or by ``signer``: forged)."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=7))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(signer or issuer.key, hashes.SHA256())


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> str:
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return str(path)


@dataclass(frozen=True)
class Peer:
    cert: x509.Certificate
    chain_path: Path
    key_path: Path


def peer_cert(pki: Any, directory: Path, name: str, cdp: str = "", ocsp_url: str = "") -> Peer:
    """Operator B's subject, issued by the intermediate, naming a distribution point and/or responder."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(pki.tls[PEER].cert.subject)
        .issuer_name(pki.intermediate.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if cdp:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(cdp)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ocsp_url:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    cert = builder.sign(pki.intermediate.key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    chain_path, key_path = directory / f"{name}.chain.pem", directory / f"{name}.key"
    chain_path.write_bytes(cert.public_bytes(pem) + pki.intermediate.cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Peer(cert, chain_path, key_path)


def context_of(pki: Any, peer: Peer) -> ssl.SSLContext:
    ctx = tls_client(pki)
    ctx.load_cert_chain(str(peer.chain_path), str(peer.key_path))
    return ctx


@dataclass
class HTTP:
    """An aiohttp server on loopback: ``/crl`` serves ``crl`` (DER), ``/ocsp`` answers for ``status``."""

    pki: Any
    crl: bytes = b""
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD
    signer: Any = None  # another CA than the intermediate (tests/pki.py CA): forged answers
    certs: dict[int, x509.Certificate] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=lambda: {"/crl": 0, "/ocsp": 0, "/hang": 0})
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the /hang requests
    port: int = 0
    runner: web.AppRunner | None = None

    async def serve_crl(self, request: web.Request) -> web.Response:
        self.hits["/crl"] += 1
        return web.Response(body=self.crl, content_type="application/pkix-crl")

    async def hang(self, request: web.Request) -> web.Response:
        self.hits["/hang"] += 1
        await self.release.wait()
        return web.Response(body=self.crl)

    async def serve_ocsp(self, request: web.Request) -> web.Response:
        self.hits["/ocsp"] += 1
        req = ocsp.load_der_ocsp_request(await request.read())
        now = dt.datetime.now(dt.UTC)
        revoked = self.status == ocsp.OCSPCertStatus.REVOKED
        answer = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=self.certs[req.serial_number],
                issuer=self.pki.intermediate.cert,
                algorithm=hashes.SHA1(),
                cert_status=self.status,
                this_update=now - dt.timedelta(minutes=1),
                next_update=now + dt.timedelta(hours=1),
                revocation_time=now - dt.timedelta(hours=1) if revoked else None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, (self.signer or self.pki.intermediate).cert)
            .sign((self.signer or self.pki.intermediate).key, hashes.SHA256())
        )
        return web.Response(
            body=answer.public_bytes(serialization.Encoding.DER), content_type="application/ocsp-response"
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/crl", self.serve_crl)
        app.router.add_post("/ocsp", self.serve_ocsp)
        app.router.add_get("/hang", self.hang)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def http(pki: Any) -> AsyncIterator[HTTP]:
    server = HTTP(pki)
    await server.start()
    try:
        yield server
    finally:
        assert server.runner is not None
        server.release.set()
        await server.runner.cleanup()


async def env_with(tmp_path: Path, pki: Any, **tls: Any) -> SMTPEnv:
    return await start_env(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path}/caducee.db", pki, tls={"peer_ca": str(pki.peer_ca), **tls}
    )


async def mail_from(env: SMTPEnv, ctx: ssl.SSLContext) -> str:
    raw = await Raw.connect(env.ports["smtp"])
    try:
        await raw.cmd("EHLO mx.b.mssante.test")
        await raw.starttls(ctx)
        await raw.cmd("EHLO mx.b.mssante.test")
        return await raw.cmd(f"MAIL FROM:<{SENDER}>")
    finally:
        await raw.close()


def checks(env: SMTPEnv, result: str) -> float:
    return env.rt.metrics.peer_revocation_checks.labels(result)._value.get()


async def test_crl_file_revoking_the_peer_refuses_it_at_mail(tmp_path: Path, pki: Any) -> None:
    peer = pki.tls[PEER]
    crl = write_crl(tmp_path / "intermediate.crl", crl_of(pki.intermediate, [peer.cert.serial_number]))
    env = await env_with(tmp_path, pki, crl=[crl])
    try:

        def send() -> smtplib.SMTPSenderRefused | None:
            with smtplib.SMTP("127.0.0.1", env.ports["smtp"], timeout=10) as s:
                s.starttls(context=env.peer())
                try:
                    s.sendmail(SENDER, [MARTIN], b"Subject: x\r\n\r\nbody\r\n")
                except smtplib.SMTPSenderRefused as exc:
                    return exc
            return None

        refused = await asyncio.to_thread(send)
        assert refused is not None and refused.smtp_code == 550
        expected = f"5.7.1 certificate of {peer.subject} revoked (serial {peer.cert.serial_number:x})"
        assert refused.smtp_error.decode() == expected
        (event,) = await env.rt.audit.events(action="peer-revoked")
        assert event.response == expected.removeprefix("5.7.1 ") and event.remote == "127.0.0.1"
        assert checks(env, "revoked") == 1
        assert await env.inbox(MARTIN) == []
    finally:
        await env.close()


async def test_crl_file_without_the_peer_accepts_it(tmp_path: Path, pki: Any) -> None:
    other = pki.tls["a.mssante.test"].cert.serial_number
    crl = write_crl(tmp_path / "intermediate.crl", crl_of(pki.intermediate, [other]))
    env = await env_with(tmp_path, pki, crl=[crl])
    try:
        assert (await mail_from(env, env.peer())).startswith("250")
        assert checks(env, "good") == 1
    finally:
        await env.close()


async def test_forged_crl_file_is_ignored_and_audited(tmp_path: Path, pki: Any) -> None:
    peer = pki.tls[PEER]
    forged = crl_of(pki.intermediate, [peer.cert.serial_number], signer=pki.unknown_ca.key)
    env = await env_with(tmp_path, pki, crl=[write_crl(tmp_path / "forged.crl", forged)])
    try:
        assert (await mail_from(env, env.peer())).startswith("250")
        (event,) = await env.rt.audit.events(action="crl-forged")
        assert "forged.crl" in event.response and pki.intermediate.subject in event.response
        assert await env.rt.audit.events(action="peer-revoked") == []
    finally:
        await env.close()


async def test_distribution_point_is_fetched_cached_and_revokes(tmp_path: Path, pki: Any, http: HTTP) -> None:
    peer = peer_cert(pki, tmp_path, "cdp-peer", cdp=http.url("/crl"))
    http.crl = crl_of(pki.intermediate, []).public_bytes(serialization.Encoding.DER)
    env = await env_with(tmp_path, pki, crl_fetch=True)
    try:
        for _ in range(3):
            assert (await mail_from(env, context_of(pki, peer))).startswith("250")
        assert http.hits["/crl"] == 1  # cached for crl_fetch_retry
        # a new CRL is published: seen once the cached one is dropped (a restart, or crl_fetch_retry later)
        http.crl = crl_of(pki.intermediate, [peer.cert.serial_number]).public_bytes(
            serialization.Encoding.DER
        )
        env.rt.revocation._fetched.clear()
        reply = await mail_from(env, context_of(pki, peer))
        assert reply.startswith("550 5.7.1 certificate of") and f"serial {peer.cert.serial_number:x}" in reply
        assert http.hits["/crl"] == 2
    finally:
        await env.close()


async def test_the_distribution_point_cache_keeps_at_most_crl_cache_entries(
    tmp_path: Path, pki: Any, http: HTTP
) -> None:
    """Peers' certificates name the URLs: the cache drops its oldest entry rather than grow."""
    http.crl = crl_of(pki.intermediate, []).public_bytes(serialization.Encoding.DER)
    first = peer_cert(pki, tmp_path, "cdp-first", cdp=http.url("/crl") + "?first")
    second = peer_cert(pki, tmp_path, "cdp-second", cdp=http.url("/crl") + "?second")
    env = await env_with(tmp_path, pki, crl_fetch=True, crl_cache_entries=1)
    try:
        for peer in (first, second, first):
            assert (await mail_from(env, context_of(pki, peer))).startswith("250")
        assert http.hits["/crl"] == 3  # the first URL was dropped to keep the second
        assert len(env.rt.revocation._fetched) == 1
    finally:
        await env.close()


async def test_forged_distribution_point_crl_is_ignored(tmp_path: Path, pki: Any, http: HTTP) -> None:
    peer = peer_cert(pki, tmp_path, "cdp-peer", cdp=http.url("/crl"))
    forged = crl_of(pki.intermediate, [peer.cert.serial_number], signer=pki.unknown_ca.key)
    http.crl = forged.public_bytes(serialization.Encoding.DER)
    env = await env_with(tmp_path, pki, crl_fetch=True, crl_unreachable="accept")
    try:
        assert (await mail_from(env, context_of(pki, peer))).startswith("250")
        (event,) = await env.rt.audit.events(action="crl-forged")
        assert http.url("/crl") in event.response
        assert checks(env, "unknown") == 1
    finally:
        await env.close()


@pytest.mark.parametrize("policy", ["accept", "refuse"])
async def test_unreachable_distribution_point(tmp_path: Path, pki: Any, policy: str) -> None:
    peer = peer_cert(pki, tmp_path, "lost-peer", cdp=f"http://127.0.0.1:{free_port()}/crl")
    env = await env_with(tmp_path, pki, crl_fetch=True, crl_unreachable=policy)
    try:
        reply = await mail_from(env, context_of(pki, peer))
        if policy == "accept":
            assert reply.startswith("250")
        else:
            assert reply.startswith("451 4.7.0 revocation status of the certificate unknown")
            (event,) = await env.rt.audit.events(action="peer-revocation-unknown")
            assert "unreachable" in event.response
        assert checks(env, "unknown") == 1
    finally:
        await env.close()


@pytest.mark.parametrize(
    ("status", "expected"), [(ocsp.OCSPCertStatus.GOOD, "250"), (ocsp.OCSPCertStatus.REVOKED, "550 5.7.1")]
)
async def test_ocsp_responder(
    tmp_path: Path, pki: Any, http: HTTP, status: ocsp.OCSPCertStatus, expected: str
) -> None:
    peer = peer_cert(pki, tmp_path, "ocsp-peer", ocsp_url=http.url("/ocsp"))
    http.certs[peer.cert.serial_number] = peer.cert
    http.status = status
    env = await env_with(tmp_path, pki, ocsp=True, crl_unreachable="refuse")
    try:
        for _ in range(2):
            assert (await mail_from(env, context_of(pki, peer))).startswith(expected)
        assert http.hits["/ocsp"] == 1  # the answer is cached
    finally:
        await env.close()


async def test_outbound_to_a_revoked_peer_is_a_temporary_failure(tmp_path: Path, pki: Any) -> None:
    sink = SlowSink(pki)
    sink.start()
    peer = pki.tls[PEER]
    crl = write_crl(tmp_path / "intermediate.crl", crl_of(pki.intermediate, [peer.cert.serial_number]))
    env = await start_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/caducee.db",
        pki,
        tls={"crl": [crl]},
        delivery={"routes": {PEER: f"127.0.0.1:{sink.port}"}},
    )
    try:
        now = dt.datetime.now(dt.UTC)
        batch = Batch(
            1, 1, MARTIN, None, None, False, now, now, PEER, (QueuedRecipient(1, SENDER, "", None),)
        )
        outcomes = await Outbound(env.rt).send(batch, b"Subject: x\r\n\r\nbody\r\n")
        assert outcomes[1].kind == "temporary"
        assert outcomes[1].reply.startswith("451 4.7.0 peer 127.0.0.1 refused: certificate of")
        (event,) = await env.rt.audit.events(action="peer-revoked")
        assert event.actor == PEER and f"serial {peer.cert.serial_number:x}" in event.response
        assert sink.snapshot() == ([], [])  # nothing was sent to it
        # the same peer, not revoked: delivered
        write_crl(Path(crl), crl_of(pki.intermediate, []))
        outcomes = await Outbound(env.rt).send(batch, b"Subject: x\r\n\r\nbody\r\n")
        assert outcomes[1].kind != "temporary", outcomes
        assert len(sink.snapshot()[1]) == 1
    finally:
        await env.close()
        sink.stop()


async def test_a_distribution_point_that_never_answers_is_given_up_after_the_timeout(
    tmp_path: Path, pki: Any, http: HTTP
) -> None:
    peer = peer_cert(pki, tmp_path, "slow-peer", cdp=http.url("/hang"))
    env = await env_with(tmp_path, pki, crl_fetch=True, crl_fetch_timeout="0.2s", crl_unreachable="refuse")
    try:
        reply = await mail_from(env, context_of(pki, peer))
        assert reply.startswith("451 4.7.0") and "timed out" in reply, reply
        assert http.hits["/hang"] == 1
    finally:
        await env.close()


async def test_a_crl_larger_than_crl_max_size_is_not_used(tmp_path: Path, pki: Any, http: HTTP) -> None:
    peer = peer_cert(pki, tmp_path, "big-peer", cdp=http.url("/crl"))
    serials = [peer.cert.serial_number, *range(1, 200)]
    http.crl = crl_of(pki.intermediate, serials).public_bytes(serialization.Encoding.DER)
    env = await env_with(tmp_path, pki, crl_fetch=True, crl_max_size="1KiB", crl_unreachable="refuse")
    try:
        reply = await mail_from(env, context_of(pki, peer))
        assert reply.startswith("451 4.7.0") and "larger than crl_max_size" in reply, reply
    finally:
        await env.close()


async def test_an_unreadable_crl_file_refuses_with_a_reply_not_a_traceback(tmp_path: Path, pki: Any) -> None:
    broken = tmp_path / "broken.crl"
    broken.write_bytes(b"not a CRL")
    env = await env_with(tmp_path, pki, crl=[str(broken)])
    try:
        reply = await mail_from(env, env.peer())
        assert reply.startswith("451 4.7.0") and "cannot read the PKI files" in reply, reply
        assert str(tmp_path) not in reply, "the peer is not told where the operator keeps its files"
        assert checks(env, "error") == 1
    finally:
        await env.close()


async def test_forged_ocsp_answer_is_ignored_and_audited(tmp_path: Path, pki: Any, http: HTTP) -> None:
    peer = peer_cert(pki, tmp_path, "ocsp-peer", ocsp_url=http.url("/ocsp"))
    http.certs[peer.cert.serial_number] = peer.cert
    http.signer = pki.unknown_ca  # says "good", but not the intermediate's signature
    env = await env_with(tmp_path, pki, ocsp=True, crl_unreachable="refuse")
    try:
        reply = await mail_from(env, context_of(pki, peer))
        assert reply.startswith("451 4.7.0") and "answer forged" in reply, reply
        (event,) = await env.rt.audit.events(action="crl-forged")
        assert http.url("/ocsp") in event.response
    finally:
        await env.close()
