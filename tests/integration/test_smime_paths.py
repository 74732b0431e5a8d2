"""S/MIME through the SMTP listeners: submission signs and encrypts per ``[smime]`` (checked with
``openssl cms``), the MTA verifies what peers send and owns its ``Authentication-Results`` verdict."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from smime.service import service_for
from smime.sign import sign_message
from tests.integration.conftest import parsed, peer_b, send_data, submitter
from tests.smtp.conftest import MARTIN, SECRETARIAT, SMTPEnv

DURAND = "dr.durand@b.mssante.test"
HOST = "mx.a.mssante.test"


def letter(sender: str, recipient: str, body: str = "Compte rendu de consultation.\r\n") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: compte rendu\r\n"
        f"Date: Mon, 9 Feb 2026 10:00:00 +0100\r\nMessage-ID: <cr-{abs(hash(body))}@test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body
    ).encode()


async def openssl_cms(*args: str | Path, data: bytes) -> bytes:
    """``openssl cms`` off the event loop; fails the test with its stderr on a non-zero exit."""
    proc = await asyncio.to_thread(
        subprocess.run, ["openssl", "cms", *map(str, args)], input=data, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


async def import_martin(env: SMTPEnv) -> None:
    svc = await service_for(env.rt)
    await svc.import_identity(MARTIN, env.pki.p12_path.read_bytes(), password=env.pki.p12_password)


async def submit(env: SMTPEnv, recipient: str, data: bytes) -> str:
    raw = await submitter(env, MARTIN)
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{recipient}>")).startswith("250")
    reply = await send_data(raw, data)
    await raw.close()
    return reply


async def from_peer(env: SMTPEnv, data: bytes) -> bytes:
    """Deliver ``data`` from operator B to dr.martin; the stored copy."""
    raw = await peer_b(env)
    assert (await raw.cmd(f"MAIL FROM:<{DURAND}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{MARTIN}>")).startswith("250")
    assert (await send_data(raw, data)).startswith("250")
    await raw.close()
    (stored,) = await env.inbox(MARTIN)
    return stored


def our_results(stored: bytes) -> list[str]:
    """Every Authentication-Results field of the stored copy that claims to come from us, unfolded."""
    values = parsed(stored).get_all("Authentication-Results") or []
    return [re.sub(r"\s+", " ", v) for v in values if v.strip().lower().startswith(HOST + ";")]


def durand_signed(env: SMTPEnv, body: str = "Compte rendu de consultation.\r\n") -> bytes:
    """A letter from operator B's dr.durand, signed as its client would (our signer, B's identity)."""
    durand = env.pki.smime[DURAND]
    signed = sign_message(letter(DURAND, MARTIN, body), durand.key, durand.cert, durand.chain)
    assert signed.signed
    return signed.message


async def import_recipient(env: SMTPEnv, address: str) -> None:
    identity = env.pki.smime[address]
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in identity.chain)
    await (await service_for(env.rt)).import_recipient(identity.cert_pem + chain)


async def test_submission_signs_and_openssl_verifies(sqlite_env: SMTPEnv) -> None:
    sqlite_env.rt.settings.smime.sign = "if-certificate"
    await import_martin(sqlite_env)
    assert (await submit(sqlite_env, SECRETARIAT, letter(MARTIN, SECRETARIAT))).startswith("250")
    (stored,) = await sqlite_env.inbox(SECRETARIAT)
    msg = parsed(stored)
    assert msg.get_content_type() == "multipart/signed"
    assert msg.get_param("protocol") == "application/pkcs7-signature"
    content = await openssl_cms(
        "-verify", "-CAfile", sqlite_env.pki.root.cert_path, "-purpose", "smimesign", data=stored
    )
    assert b"Compte rendu de consultation." in content


async def test_without_identity_submission_leaves_the_message_alone(sqlite_env: SMTPEnv) -> None:
    sent = letter(MARTIN, SECRETARIAT)
    assert (await submit(sqlite_env, SECRETARIAT, sent)).startswith("250")
    (stored,) = await sqlite_env.inbox(SECRETARIAT)
    assert stored.endswith(sent) and parsed(stored).get_content_type() == "text/plain"


async def test_mta_passes_a_valid_peer_signature(sqlite_env: SMTPEnv) -> None:
    stored = await from_peer(sqlite_env, durand_signed(sqlite_env))
    (verdict,) = our_results(stored)
    assert verdict.startswith(f"{HOST}; smime=pass header.from={DURAND}"), verdict
    learned = await (await service_for(sqlite_env.rt)).recipients()
    assert [c.source for c in learned if c.owner == DURAND] == ["learned"]


async def test_mta_signature_survives_dot_stuffing_and_from_lines(sqlite_env: SMTPEnv) -> None:
    """SMTP transparency (RFC 5321 §4.5.2) must give the verifier the exact signed bytes back."""
    body = ".ligne qui commence par un point\r\n..\r\nFrom the desk of dr. Durand\r\n\r\n.\r\n"
    stored = await from_peer(sqlite_env, durand_signed(sqlite_env, body))
    (verdict,) = our_results(stored)
    assert verdict.startswith(f"{HOST}; smime=pass"), verdict


async def test_mta_fails_a_tampered_peer_signature(sqlite_env: SMTPEnv) -> None:
    tampered = durand_signed(sqlite_env).replace(b"consultation.", b"consultation!")
    stored = await from_peer(sqlite_env, tampered)
    (verdict,) = our_results(stored)
    assert verdict.startswith(f"{HOST}; smime=fail"), verdict
    assert b"consultation!" in stored


async def test_mta_replaces_a_forged_verdict(sqlite_env: SMTPEnv) -> None:
    other = "Authentication-Results: mx.b.mssante.test; smime=pass header.from=dr.durand@b.mssante.test\r\n"
    forged = (
        f"Authentication-Results: {HOST}; smime=pass header.from={DURAND}\r\n"
        f"Authentication-Results: MX.A.MSSANTE.TEST (forged) ;\r\n smime=pass\r\n{other}"
    ).encode() + letter(DURAND, MARTIN)
    stored = await from_peer(sqlite_env, forged)
    (verdict,) = our_results(stored)
    assert verdict.startswith(f"{HOST}; smime=none"), verdict
    assert b"(forged)" not in stored
    assert other.encode() in stored, "another host's results are not ours to remove"


async def test_encrypt_required_refuses_a_recipient_without_certificate(sqlite_env: SMTPEnv) -> None:
    sqlite_env.rt.settings.smime.encrypt = "required"
    raw = await submitter(sqlite_env, MARTIN)
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{SECRETARIAT}>")).startswith("550 5.7.1")
    await import_recipient(sqlite_env, SECRETARIAT)
    assert (await raw.cmd(f"RCPT TO:<{SECRETARIAT}>")).startswith("250")
    assert (await send_data(raw, letter(MARTIN, SECRETARIAT))).startswith("250")
    await raw.close()
    (stored,) = await sqlite_env.inbox(SECRETARIAT)
    assert parsed(stored).get_content_type() == "application/pkcs7-mime"


async def test_encrypt_if_certificate_openssl_decrypts(sqlite_env: SMTPEnv) -> None:
    sqlite_env.rt.settings.smime.encrypt = "if-certificate"
    await import_martin(sqlite_env)
    await import_recipient(sqlite_env, SECRETARIAT)
    assert (await submit(sqlite_env, SECRETARIAT, letter(MARTIN, SECRETARIAT))).startswith("250")
    (stored,) = await sqlite_env.inbox(SECRETARIAT)
    msg = parsed(stored)
    assert msg.get_content_type() == "application/pkcs7-mime"
    assert msg.get_param("smime-type") == "enveloped-data"
    assert b"Compte rendu de consultation." not in stored
    secretariat = sqlite_env.pki.smime[SECRETARIAT]
    inner = await openssl_cms(
        "-decrypt", "-recip", secretariat.cert_path, "-inkey", secretariat.key_path, data=stored
    )
    assert parsed(inner).get_content_type() == "multipart/signed", "signed first, then encrypted"
    content = await openssl_cms(
        "-verify", "-CAfile", sqlite_env.pki.root.cert_path, "-purpose", "smimesign", data=inner
    )
    assert b"Compte rendu de consultation." in content
