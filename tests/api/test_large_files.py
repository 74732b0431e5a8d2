"""Large files by secure link: a resumable tus upload through the API, the link in the message, the
download page for recipients only (patient in headless chromium), expiry and quota."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser
from sqlalchemy import select, update

from directory.patients import add_patient, make_record
from mailserver import accounts, maintenance
from mailserver.db.models import AuditEvent, Mailbox
from mailserver.large_file_models import LargeFile
from mailserver.portal import service
from tests.api.conftest import API, DPI
from tests.api.test_send_api import ranges_answer
from tests.imap.conftest import MARTIN, PASSWORD
from tests.portal.helpers import OTHER_INS, OTHER_PATIENT, PATIENT, PATIENT_INS

README = Path(__file__).resolve().parents[2] / "README.md"
MIB = 1024 * 1024
BIG = 200 * MIB
PATIENT_PASSWORD = "correct horse battery"


class Interrupted(Exception):
    """The client's connection dropped mid-upload (raised by the body generator)."""


def sparse_file(path: Path, size: int) -> str:
    """A sparse file of ``size`` bytes with random blocks here and there; its SHA-256, read streamed."""
    with open(path, "wb") as f:
        f.truncate(size)
        for at in (0, size // 4 + 12345, size // 2 - 7, size - MIB):
            f.seek(at)
            f.write(os.urandom(MIB))
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


async def chunks(path: Path, start: int, stop: int, fail_after: int | None = None) -> AsyncIterator[bytes]:
    """The file's bytes [start, stop) read 1 MiB at a time (never whole in memory); raises
    Interrupted once ``fail_after`` bytes were sent."""
    sent = 0
    f = await asyncio.to_thread(open, path, "rb")
    try:
        f.seek(start)
        while start + sent < stop:
            if fail_after is not None and sent >= fail_after:
                raise Interrupted
            block = await asyncio.to_thread(f.read, min(MIB, stop - start - sent))
            sent += len(block)
            yield block
    finally:
        f.close()


async def patch(
    http: aiohttp.ClientSession, url: str, api: API, path: Path, start: int, stop: int, **kw: Any
) -> aiohttp.ClientResponse:
    headers = {
        **api.auth(),
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": str(start),
        "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(stop - start),
    }
    async with http.patch(url, data=chunks(path, start, stop, **kw), headers=headers) as r:
        await r.read()
        return r


async def offset(http: aiohttp.ClientSession, url: str, api: API) -> int:
    async with http.head(url, headers={**api.auth(), "Tus-Resumable": "1.0.0"}) as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        assert r.headers["Tus-Resumable"] == "1.0.0"
        return int(r.headers["Upload-Offset"])


async def upload(http: aiohttp.ClientSession, api: API, path: Path, name: str, ctype: str) -> str:
    size = (await asyncio.to_thread(path.stat)).st_size
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in (("filename", name), ("content_type", ctype))
    )
    headers = {**api.auth(), "Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Upload-Metadata": meta}
    async with http.post(f"{api.url}/api/v1/uploads", headers=headers) as r:
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
        assert r.headers["Upload-Offset"] == "0"
    return location


async def used_bytes(api: API, address: str) -> int:
    async with api.rt.db.read() as session:
        return (
            await session.execute(select(Mailbox.used_bytes).where(Mailbox.address == address))
        ).scalar_one()


async def audit(api: API, action: str) -> list[AuditEvent]:
    async with api.rt.db.read() as session:
        return list((await session.execute(select(AuditEvent).where(AuditEvent.action == action))).scalars())


@pytest.fixture
async def patients(api: API) -> API:
    """Two activated patients (portal accounts); links point at this test's portal listener."""
    rt = api.rt
    rt.settings.patients.portal_url = api.url + "/"
    for ins, address, first in ((PATIENT_INS, PATIENT, "Pierrette"), (OTHER_INS, OTHER_PATIENT, "Émilie")):
        await accounts.add_mailbox(rt, address, "PAT", display_name=f"PATIENT {first}")
        birth = "1962-11-23" if ins == PATIENT_INS else "1935-03-07"
        await add_patient(rt.db, make_record(ins, "Petit", first, "F", birth))
        _address, code, _expires = await service.invite(rt, ins)
        await service.activate(rt, ins, code, PATIENT_PASSWORD, "127.0.0.1")
    return api


async def portal_token(http: aiohttp.ClientSession, api: API, ins: str) -> str:
    async with http.post(f"{api.url}/api/login", json={"ins": ins, "password": PATIENT_PASSWORD}) as r:
        assert r.status == 200
        return str((await r.json())["token"])


async def test_200_mib_resumable_upload_sent_to_a_patient_downloaded_in_chromium(
    patients: API, browser: Browser, tmp_path: Path
) -> None:
    api = patients
    source = tmp_path / "irm.mp4"
    digest = await asyncio.to_thread(sparse_file, source, BIG)
    before = await used_bytes(api, DPI)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.options(f"{api.url}/api/v1/uploads") as r:
            assert r.status == 204 and r.headers["Tus-Version"] == "1.0.0"
            assert "creation" in r.headers["Tus-Extension"] and int(r.headers["Tus-Max-Size"]) >= BIG
        location = await upload(http, api, source, "IRM cérébrale.mp4", "video/mp4")
        url = api.url + location
        file_id = location.rsplit("/", 1)[1]
        # The size counts for the sender as soon as the upload exists.
        assert await used_bytes(api, DPI) == before + BIG
        # First PATCH: the connection drops after 70 MiB.
        with pytest.raises((Interrupted, aiohttp.ClientError)):
            await patch(http, url, api, source, 0, BIG, fail_after=70 * MIB)
        # A client resumes from what the server holds (HEAD); it may still be recording: 409, HEAD again.
        for _attempt in range(5):
            held = await offset(http, url, api)
            assert 0 < held <= 70 * MIB
            middle = min(BIG, held + 60 * MIB)
            r = await patch(http, url, api, source, held, middle)
            if r.status != 409:
                break
        assert r.status == 204 and int(r.headers["Upload-Offset"]) == middle
        # A stale offset is refused with the right one.
        r = await patch(http, url, api, source, held, held + MIB)
        assert r.status == 409 and r.headers["Upload-Offset"] == str(middle)
        assert r.content_type == "application/problem+json"
        r = await patch(http, url, api, source, middle, BIG)
        assert r.status == 204 and int(r.headers["Upload-Offset"]) == BIG
        async with http.get(url, headers=api.auth()) as r:
            state = await r.json()
        assert state["state"] == "ready" and state["sha256"] == digest and state["offset"] == BIG
        # Another mailbox does not see the upload.
        async with http.head(url, headers={**api.auth(MARTIN, PASSWORD), "Tus-Resumable": "1.0.0"}) as r:
            assert r.status == 404
        body = {
            "from": DPI,
            "to": [PATIENT],
            "subject": "Votre IRM",
            "text": "Bonjour, voici les images de votre IRM.",
            "attachments": [{"upload": file_id}],
        }
        async with http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r:
            assert r.status == 202, await r.text()
        link = f"{api.url}/fichiers/{file_id}"

        # Not a recipient: the same 404 as for a file that does not exist; no credentials: 401.
        unknown = f"{api.url}/fichiers/{'0' * 32}/telecharger"
        for who in (
            api.auth(MARTIN, PASSWORD),
            {"Authorization": f"Bearer {await portal_token(http, api, OTHER_INS)}"},
        ):
            async with http.get(link + "/telecharger", headers=who) as r:
                refused = (r.status, await r.text())
            async with http.get(unknown, headers=who) as r:
                assert refused == (404, await r.text())
        async with http.get(link + "/telecharger") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        # The recipient patient, with the portal's bearer token: a Range request.
        token = await portal_token(http, api, PATIENT_INS)
        async with http.get(
            link + "/telecharger", headers={"Authorization": f"Bearer {token}", "Range": "bytes=0-99"}
        ) as r:
            assert r.status == 206 and len(await r.read()) == 100

    # The message the patient got carries the link in place of the file.
    folder = await api.rt.store.folder((await accounts.get_mailbox(api.rt, PATIENT)).id, "INBOX")
    _info, [stored] = await api.rt.store.snapshot(folder.id)
    msg = email.message_from_bytes(await api.rt.store.read_blob(stored.blob_id), policy=email.policy.default)
    assert not [p for p in msg.iter_attachments() if p.get_content_type() == "video/mp4"]
    [part] = [p for p in msg.walk() if p["X-Caducee-Large-File"] == file_id]
    assert link in part.get_content() and digest in part.get_content()

    # The patient signs in to the portal in chromium, follows the link and downloads the file.
    page = await browser.new_page(accept_downloads=True)
    await page.goto(f"{api.url}/connexion")
    await page.get_by_label("Identifiant national de santé").fill(PATIENT_INS)
    await page.get_by_label("Mot de passe").fill(PATIENT_PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(re.compile(r".*/conversations$"))
    await page.goto(link)
    assert "IRM cérébrale.mp4" in await page.content()
    async with page.expect_download(timeout=120_000) as info:
        await page.get_by_role("link", name=re.compile("Télécharger")).click()
    download = await info.value
    saved = tmp_path / "downloaded.mp4"
    await download.save_as(saved)
    assert download.suggested_filename == "IRM cérébrale.mp4"
    assert await asyncio.to_thread(file_sha256, saved) == digest
    await page.close()

    # The dropped PATCH was answered (to nobody) and audited as interrupted, not a server error.
    assert [e.response for e in await audit(api, "api-upload") if "reprenez à cet offset" in e.response]
    downloads = await audit(api, "large-file-download")
    assert {e.actor for e in downloads} == {PATIENT}
    assert all(file_id in e.request and "message <" in e.request for e in downloads)
    assert len(await audit(api, "large-file-refused")) == 4


async def test_inline_attachment_above_threshold_goes_by_link_and_expiry_releases_quota(api: API) -> None:
    api.rt.settings.large_files.threshold = MIB
    api.rt.settings.patients.portal_url = api.url + "/"
    scan = os.urandom(2 * MIB)
    small = b"%PDF-1.4 ordonnance"
    body = {
        "from": DPI,
        "to": [MARTIN],
        "subject": "Scanner",
        "text": "Le scanner et l'ordonnance.",
        "attachments": [
            {
                "filename": "scanner.dcm",
                "content_type": "application/dicom",
                "data": base64.b64encode(scan).decode(),
            },
            {
                "filename": "ordonnance.pdf",
                "content_type": "application/pdf",
                "data": base64.b64encode(small).decode(),
            },
        ],
    }
    before = await used_bytes(api, DPI)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r:
            assert r.status == 202, await r.text()
        async with api.rt.db.read() as session:
            [row] = list((await session.execute(select(LargeFile))).scalars())
        assert row.size == len(scan) and row.state == "sent" and row.filename == "scanner.dcm"
        assert row.sha256 == hashlib.sha256(scan).hexdigest()
        assert await used_bytes(api, DPI) == before + len(scan)
        # ``caducee quota recalc`` counts the file still kept: no drift.
        dpi = await accounts.get_mailbox(api.rt, DPI)
        stored_usage, recounted = await api.rt.store.recount(dpi.id)
        assert recounted.bytes == stored_usage.bytes == before + len(scan)
        folder = await api.rt.store.folder((await accounts.get_mailbox(api.rt, MARTIN)).id, "INBOX")
        _info, [stored] = await api.rt.store.snapshot(folder.id)
        raw = await api.rt.store.read_blob(stored.blob_id)
        assert len(raw) < MIB
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert [p.get_filename() for p in msg.iter_attachments() if p.get_filename()] == ["ordonnance.pdf"]
        assert [p for p in msg.walk() if p["X-Caducee-Large-File"] == row.id]
        link = f"{api.url}/fichiers/{row.id}/telecharger"
        async with http.get(link, headers=api.auth(MARTIN, PASSWORD)) as r:
            assert r.status == 200 and await r.read() == scan
            assert r.headers["Content-Length"] == str(len(scan))
            assert r.headers["Content-Disposition"].startswith('attachment; filename="scanner.dcm"')
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Content-Type"] == "application/dicom"
        await ranges_answer(http, link, scan, api.auth(MARTIN, PASSWORD))

        # The link expires: the daily maintenance task deletes the file and gives the quota back.
        async with api.rt.db.write() as session:
            await session.execute(
                update(LargeFile).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
            )
        async with http.get(link, headers=api.auth(MARTIN, PASSWORD)) as r:
            assert r.status == 404  # expired, even before the daily purge
        assert maintenance.purge_large_files in maintenance.TASKS
        assert await maintenance.purge_large_files(api.rt) == 1
        assert await used_bytes(api, DPI) == before
        assert not await asyncio.to_thread(lambda: any(Path(api.rt.settings.large_files.path).rglob(row.id)))
        async with http.get(link, headers=api.auth(MARTIN, PASSWORD)) as r:
            assert r.status == 404
    assert len(await audit(api, "large-file-purge")) == 1


async def test_upload_limits_quota_and_termination(api: API) -> None:
    rt = api.rt
    rt.settings.large_files.max_size = 10 * MIB
    tus = {**api.auth(), "Tus-Resumable": "1.0.0"}
    async with aiohttp.ClientSession() as http:
        headers = {**tus, "Upload-Length": str(10 * MIB + 1)}
        async with http.post(f"{api.url}/api/v1/uploads", headers=headers) as r:
            assert r.status == 413 and r.content_type == "application/problem+json"
        async with http.post(
            f"{api.url}/api/v1/uploads",
            headers={**api.auth(), "Tus-Resumable": "0.2.2", "Upload-Length": "1"},
        ) as r:
            assert r.status == 412
        async with http.post(
            f"{api.url}/api/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"}
        ) as r:
            assert r.status == 401
        # An empty file is complete at once; a mailbox holds at most max_uploads unsent files.
        rt.settings.large_files.max_uploads = 1
        async with http.post(f"{api.url}/api/v1/uploads", headers={**tus, "Upload-Length": "0"}) as r:
            assert r.status == 201 and (await r.json())["state"] == "ready"
            empty = api.url + r.headers["Location"]
        async with http.post(f"{api.url}/api/v1/uploads", headers={**tus, "Upload-Length": "1"}) as r:
            assert r.status == 429 and r.content_type == "application/problem+json"
        async with http.delete(empty, headers=tus) as r:
            assert r.status == 204
        rt.settings.large_files.max_uploads = 100
        # The sender's quota: what uploads declare counts.
        async with rt.db.write() as session:
            await session.execute(update(Mailbox).where(Mailbox.address == DPI).values(quota_storage=3 * MIB))
        async with http.post(
            f"{api.url}/api/v1/uploads", headers={**tus, "Upload-Length": str(2 * MIB)}
        ) as r:
            assert r.status == 201
            location = api.url + r.headers["Location"]
        async with http.post(
            f"{api.url}/api/v1/uploads", headers={**tus, "Upload-Length": str(2 * MIB)}
        ) as r:
            assert r.status == 413 and "quota" in await r.text()
        # More bytes than declared, or another content type, are refused.
        too_many = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        async with http.patch(location, data=b"x" * (2 * MIB + 1), headers=too_many) as r:
            assert r.status == 413
        async with http.patch(location, data=b"x", headers={**too_many, "Content-Type": "text/plain"}) as r:
            assert r.status == 415
        # An unfinished upload cannot be sent; terminated, its quota is released.
        file_id = location.rsplit("/", 1)[1]
        body = {"from": DPI, "to": [MARTIN], "text": "x", "attachments": [{"upload": file_id}]}
        async with http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r:
            assert r.status == 409 and r.content_type == "application/problem+json"
        async with http.delete(location, headers=tus) as r:
            assert r.status == 204
        async with http.head(location, headers=tus) as r:
            assert r.status == 404
        async with http.post(
            f"{api.url}/api/v1/uploads", headers={**tus, "Upload-Length": str(2 * MIB)}
        ) as r:
            assert r.status == 201


async def test_the_readme_upload_commands_run(api: API, tmp_path: Path) -> None:
    """The README's curl commands for a resumable upload and its sending, as written."""
    section = README.read_text(encoding="utf-8").split("#### Large files by secure link", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands = [c for c in block[1].replace("\\\n", " ").splitlines() if c.strip()]
    assert len(commands) == 4
    await asyncio.to_thread((tmp_path / "irm.mp4").write_bytes, os.urandom(3 * MIB))
    file_id = ""
    outputs = []
    for command in commands:
        line = command.replace("APP-PASSWORD", api.secret).replace("http://127.0.0.1:8080", api.url)
        line = line.replace("uploads/ID", f"uploads/{file_id}").replace('"ID"', f'"{file_id}"')
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", line, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        outputs.append(out.decode())
        if not file_id:
            found = re.search(r"(?im)^location: /api/v1/uploads/([0-9a-f]{32})", outputs[0])
            assert found is not None and outputs[0].startswith("HTTP/1.1 201"), outputs[0]
            file_id = found[1]
    assert re.search(rf"(?im)^upload-offset: {3 * MIB}\r?$", outputs[2])
    assert '"state": "delivered"' in outputs[3], outputs[3]
    folder = await api.rt.store.folder((await accounts.get_mailbox(api.rt, MARTIN)).id, "INBOX")
    _info, [stored] = await api.rt.store.snapshot(folder.id)
    assert file_id.encode() in await api.rt.store.read_blob(stored.blob_id)


async def test_files_of_a_refused_message_are_dropped(api: API) -> None:
    """The inline file was stored before the recipient, checked with the message's final size, was
    found full: nothing is kept, the sender's quota is as before."""
    api.rt.settings.large_files.threshold = MIB
    async with api.rt.db.write() as session:
        await session.execute(update(Mailbox).where(Mailbox.address == MARTIN).values(quota_storage=1))
    before = await used_bytes(api, DPI)
    data = base64.b64encode(os.urandom(2 * MIB)).decode()
    body = {"from": DPI, "to": [MARTIN], "text": "t", "attachments": [{"filename": "a.bin", "data": data}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r,
    ):
        assert r.status == 507 and (await r.json())["recipient"] == MARTIN
    async with api.rt.db.read() as session:
        assert list((await session.execute(select(LargeFile))).scalars()) == []
    assert await used_bytes(api, DPI) == before
    assert not await asyncio.to_thread(lambda: any(Path(api.rt.settings.large_files.path).rglob("*/*")))


async def test_tus_requests_must_name_the_protocol_version(api: API) -> None:
    """tus 1.0.0: every request but OPTIONS carries ``Tus-Resumable``; without it, or with another
    version, 412 Precondition Failed naming the versions served (``Tus-Version``)."""
    tus = {**api.auth(), "Tus-Resumable": "1.0.0"}
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{api.url}/api/v1/uploads") as r:
            assert r.status == 204
        for version in (None, "0.2.2"):
            headers = {**api.auth(), "Upload-Length": "3"}
            if version:
                headers["Tus-Resumable"] = version
            async with http.post(f"{api.url}/api/v1/uploads", headers=headers) as r:
                assert r.status == 412 and r.headers["Tus-Version"] == "1.0.0", version
                assert r.content_type == "application/problem+json"
        async with http.post(f"{api.url}/api/v1/uploads", headers={**tus, "Upload-Length": "3"}) as r:
            assert r.status == 201
            location = api.url + r.headers["Location"]
        patch = {**api.auth(), "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        for method, headers in (("HEAD", api.auth()), ("PATCH", patch), ("DELETE", api.auth())):
            async with http.request(method, location, headers=headers, data=b"abc") as r:
                assert r.status == 412 and r.headers["Tus-Version"] == "1.0.0", method
        async with http.head(location, headers=tus) as r:
            assert r.status == 200 and r.headers["Upload-Offset"] == "0"  # nothing was written
        async with http.patch(location, headers={**patch, "Tus-Resumable": "1.0.0"}, data=b"abc") as r:
            assert r.status == 204 and r.headers["Upload-Offset"] == "3"


async def test_a_patch_racing_one_in_flight_is_a_conflict_not_a_corrupted_file(api: API) -> None:
    """While a PATCH is being written, another on the same upload, at a stale offset or at the offset
    recorded so far, gets 409 at once with the current Upload-Offset; the file ends as the first sent."""
    size = 20 * MIB
    data = os.urandom(size)
    paused = 18 * MIB  # past one checkpoint (16 MiB): recorded, so HEAD shows the first one writing
    go_on = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for at in range(0, size, MIB):
            if at == paused:
                await go_on.wait()
            yield data[at : at + MIB]

    tus = {**api.auth(), "Tus-Resumable": "1.0.0"}
    patch = {**tus, "Content-Type": "application/offset+octet-stream"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.url}/api/v1/uploads", headers={**tus, "Upload-Length": str(size)}) as r:
            assert r.status == 201
            location = api.url + r.headers["Location"]

        async def first() -> tuple[int, str]:
            headers = {**patch, "Upload-Offset": "0", "Content-Length": str(size)}
            async with http.patch(location, data=slow(), headers=headers) as r:
                return r.status, r.headers.get("Upload-Offset", "")

        writing = asyncio.create_task(first())
        for _ in range(600):  # until the first PATCH has recorded its first checkpoint
            async with http.head(location, headers=tus) as r:
                if r.headers["Upload-Offset"] != "0":
                    break
            await asyncio.sleep(0.05)
        held = int(r.headers["Upload-Offset"])
        assert 16 * MIB <= held <= paused
        for start in (0, held):  # stale, and the offset recorded while the first still writes
            other = os.urandom(MIB)
            headers = {**patch, "Upload-Offset": str(start)}
            async with http.patch(location, data=other, headers=headers) as r:
                assert r.status == 409, (start, r.status)
                assert r.content_type == "application/problem+json"
                assert r.headers["Upload-Offset"] == str(held)
        go_on.set()
        assert await writing == (204, str(size))
        async with http.patch(location, data=b"x", headers={**patch, "Upload-Offset": "0"}) as r:
            assert r.status == 409 and r.headers["Upload-Offset"] == str(size)
        async with http.get(location, headers=api.auth()) as r:
            state = await r.json()
    assert state["state"] == "ready" and state["sha256"] == hashlib.sha256(data).hexdigest()
