"""Submission keeps an attachment above ``[large_files] threshold`` and sends a link in its place;
S/MIME messages pass unchanged (rewriting would break the signature)."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import os
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from mailserver import accounts, large_files
from mailserver.db.models import AuditEvent, Mailbox
from mailserver.large_file_models import LargeFile
from mailserver.portal import web
from tests.smtp.conftest import MARTIN, PASSWORD, RPPS, SECRETARIAT, SMTPEnv, start_env

MIB = 1024 * 1024
AUTRE = "dr.autre@a.mssante.test"
VOISIN = "dr.voisin@a.mssante.test"


@pytest.fixture
async def env(tmp_path: Path, db_url: str, pki: Any) -> AsyncIterator[SMTPEnv]:
    env = await start_env(
        tmp_path,
        db_url,
        pki,
        large_files={"threshold": "1MiB"},
        patients={"portal_url": "https://portail.a.mssante.test/"},
        portal={"listen": ["127.0.0.1:0"], "secure_cookies": False},
    )
    try:
        yield env
    finally:
        await env.close()


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The header a browser sends after the portal's Basic challenge."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def submit(env: SMTPEnv, msg: EmailMessage | bytes, to: list[str]) -> None:
    """smtplib over implicit TLS, as a mail client sends."""
    with smtplib.SMTP_SSL("127.0.0.1", env.ports["submissions"], context=env.user(), timeout=30) as s:
        s.login(MARTIN, PASSWORD)
        s.sendmail(MARTIN, to, msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP))


async def test_a_large_attachment_is_replaced_by_a_link(env: SMTPEnv) -> None:
    video = os.urandom(3 * MIB)
    msg = EmailMessage()
    msg["From"] = MARTIN
    msg["To"] = AUTRE
    msg["Subject"] = "Échographie du 2 décembre"
    msg.set_content("Bonjour,\n\nvoici l'échographie et le compte rendu.\n")
    msg.add_attachment(video, maintype="video", subtype="mp4", filename="échographie.mp4")
    msg.add_attachment(b"%PDF-1.4 cr", maintype="application", subtype="pdf", filename="cr.pdf")
    async with env.rt.db.read() as session:
        before = (
            await session.execute(select(Mailbox.used_bytes).where(Mailbox.address == MARTIN))
        ).scalar_one()

    await asyncio.to_thread(submit, env, msg, [AUTRE])

    [raw] = await env.inbox(AUTRE)
    assert len(raw) < MIB
    got = email.message_from_bytes(raw, policy=email.policy.default)
    assert got["Subject"] == "Échographie du 2 décembre"
    assert "voici l'échographie" in got.get_body(("plain",)).get_content()
    assert [p.get_filename() for p in got.iter_attachments() if p.get_filename()] == ["cr.pdf"]
    [link] = [p for p in got.walk() if p["X-Caducee-Large-File"]]
    file_id = link["X-Caducee-Large-File"]
    text = link.get_content()
    assert f"https://portail.a.mssante.test/fichiers/{file_id}" in text and "échographie.mp4" in text
    # Durable before the 250: the file is complete on disk, its row names the message and recipient.
    async with env.rt.db.read() as session:
        row = await session.get(LargeFile, file_id)
        after = (
            await session.execute(select(Mailbox.used_bytes).where(Mailbox.address == MARTIN))
        ).scalar_one()
    assert row is not None and row.state == "sent" and row.sha256 == hashlib.sha256(video).hexdigest()
    path = large_files.file_path(env.rt, file_id)
    assert await asyncio.to_thread(path.read_bytes) == video
    assert after == before + len(video)  # the sender's quota counts the file
    found = await large_files.may_download(env.rt, file_id, AUTRE)
    assert found is not None and found[1:] == (got["Message-ID"], "")
    assert await large_files.may_download(env.rt, file_id, SECRETARIAT) is None


async def test_smime_signed_messages_pass_unchanged(env: SMTPEnv) -> None:
    video = os.urandom(2 * MIB)
    inner = EmailMessage()
    inner.set_content("Compte rendu signé.\n")
    inner.add_attachment(video, maintype="video", subtype="mp4", filename="video.mp4")
    body = inner.as_bytes(policy=email.policy.SMTP)
    signed = (
        (
            f"From: {MARTIN}\r\nTo: {AUTRE}\r\nSubject: signé\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;'
            ' boundary="sig"\r\n\r\n--sig\r\n'
        ).encode()
        + body.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
        + (
            b"\r\n--sig\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nMIIB\r\n--sig--\r\n"
        )
    )
    await asyncio.to_thread(submit, env, signed, [AUTRE])
    [raw] = await env.inbox(AUTRE)
    got = email.message_from_bytes(raw, policy=email.policy.default)
    assert got.get_content_type() == "multipart/signed"
    assert [p.get_content() for p in got.walk() if p.get_filename() == "video.mp4"] == [video]
    async with env.rt.db.read() as session:
        assert list((await session.execute(select(LargeFile))).scalars()) == []


async def test_a_peer_recipient_gets_the_attachment_itself(env: SMTPEnv) -> None:
    """A recipient at another operator could not sign in here: the message is not rewritten."""
    msg = EmailMessage()
    msg["From"] = MARTIN
    msg["To"] = "dr.loin@b.mssante.test"
    msg["Subject"] = "Pour un confrère"
    msg.set_content("Ci-joint.\n")
    msg.add_attachment(os.urandom(2 * MIB), maintype="application", subtype="octet-stream", filename="x.bin")
    await asyncio.to_thread(submit, env, msg, ["dr.loin@b.mssante.test"])
    async with env.rt.db.read() as session:
        assert list((await session.execute(select(LargeFile))).scalars()) == []


async def test_members_of_the_org_download_its_links_as_themselves(env: SMTPEnv) -> None:
    """A link the ORG received is the team's: a member holding ``r`` downloads it with their own
    credentials (audited as themselves, naming the ORG); a member without ``r`` is told nothing."""
    [portal] = await web.start(env.rt)
    env.started.append(portal)
    await accounts.add_member(env.rt, SECRETARIAT, AUTRE, "lr")
    await accounts.add_mailbox(env.rt, VOISIN, "PER", rpps=RPPS, password=PASSWORD)
    await accounts.add_member(env.rt, SECRETARIAT, VOISIN, "l")
    video = os.urandom(2 * MIB)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = MARTIN, SECRETARIAT, "Vidéo pour le service"
    msg.set_content("Ci-joint.\n")
    msg.add_attachment(video, maintype="video", subtype="mp4", filename="video.mp4")
    await asyncio.to_thread(submit, env, msg, [SECRETARIAT])
    [raw] = await env.inbox(SECRETARIAT)
    got = email.message_from_bytes(raw, policy=email.policy.default)
    [link] = [p for p in got.walk() if p["X-Caducee-Large-File"]]
    url = f"http://{portal.address}/fichiers/{link['X-Caducee-Large-File']}/telecharger"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=basic_auth(AUTRE, PASSWORD)) as r:
            assert r.status == 200 and await r.read() == video
        async with http.get(url, headers=basic_auth(VOISIN, PASSWORD)) as r:
            assert r.status == 404
    async with env.rt.db.read() as session:
        rows = (
            await session.execute(
                select(AuditEvent.actor, AuditEvent.action, AuditEvent.request).where(
                    AuditEvent.action.like("large-file-%")
                )
            )
        ).all()
    [(actor, _, request)] = [row for row in rows if row[1] == "large-file-download"]
    assert actor == AUTRE and f"as member of {SECRETARIAT}" in request
    assert [row[0] for row in rows if row[1] == "large-file-refused"] == [VOISIN]
