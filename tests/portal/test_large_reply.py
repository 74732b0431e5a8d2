"""A patient's portal reply with an attachment above ``[large_files] threshold``: the professional
receives a link, downloads with their mailbox's credentials; the patient's quota counts the file."""

from __future__ import annotations

import base64
import email
import email.policy
import os

import aiohttp

from mailserver import accounts
from tests.portal.conftest import PASSWORD, Portal
from tests.portal.helpers import DOCTOR, PATIENT, PATIENT_INS, build, send

MIB = 1024 * 1024
OTHER = "dr.autre@a.mssante.test"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_large_reply_attachment_goes_by_link(portal: Portal) -> None:
    rt = portal.rt
    rt.settings.large_files.threshold = MIB
    rt.settings.patients.portal_url = portal.url
    [conv_id] = await send(
        rt, build(DOCTOR, PATIENT, "Photos de la plaie", "Envoyez-moi une vidéo.", name="Dr Martin")
    )
    video = os.urandom(2 * MIB)
    await accounts.add_mailbox(rt, OTHER, "PER", rpps="10000000017", password="y" * 12)
    patient = await accounts.get_mailbox(rt, PATIENT)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{portal.url}/api/login", json={"ins": PATIENT_INS, "password": PASSWORD}) as r:
            auth = {"Authorization": f"Bearer {(await r.json())['token']}"}
        body = {
            "text": "Voici la vidéo.",
            "attachments": [
                {
                    "filename": "plaie.mp4",
                    "content_type": "video/mp4",
                    "data": base64.b64encode(video).decode(),
                }
            ],
        }
        async with http.post(
            f"{portal.url}/api/conversations/{conv_id}/messages", json=body, headers=auth
        ) as r:
            assert r.status == 201, await r.text()
        doctor = await accounts.get_mailbox(rt, DOCTOR)
        folder = await rt.store.folder(doctor.id, "INBOX")
        _info, [stored] = await rt.store.snapshot(folder.id)
        msg = email.message_from_bytes(await rt.store.read_blob(stored.blob_id), policy=email.policy.default)
        [link] = [p for p in msg.walk() if p["X-Caducee-Large-File"]]
        url = f"{portal.url}/fichiers/{link['X-Caducee-Large-File']}"
        assert url in link.get_content()
        assert not [p for p in msg.walk() if p.get_content_type() == "video/mp4"]
        async with http.get(url + "/telecharger", headers=basic(DOCTOR, "x" * 12)) as r:
            assert r.status == 200 and await r.read() == video
        async with http.get(url + "/telecharger", headers=basic(OTHER, "y" * 12)) as r:
            assert r.status == 404
        # The patient, owner of the file, may fetch it back (the Sent copy shows the link too).
        async with http.get(url + "/telecharger", headers=auth) as r:
            assert r.status == 200
    assert (await accounts.get_mailbox(rt, PATIENT)).used_bytes >= patient.used_bytes + len(video)
