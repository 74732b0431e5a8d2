"""POST /api/v1/messages and GET /api/v1/messages/{id}: hospital software sends through the submission
path, answered 202 once durable, refusals as RFC 9457 problem+json naming the recipient."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import imaplib
import re
import shlex
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select, update

from mailserver.api_models import APIRecipient
from mailserver.db.models import AuditEvent
from mailserver.queue.models import QueueRecipient, TrustDomain
from tests.api.conftest import API, DPI
from tests.imap.conftest import MARTIN, PASSWORD, SECRETARIAT
from tests.imap.helpers import tls_client

README = Path(__file__).resolve().parents[2] / "README.md"
PDF = b"%PDF-1.4 compte rendu\n" + bytes(range(256))


def fetch_inbox(api: API, user: str) -> list[EmailMessage]:
    """Every message in ``user``'s INBOX, read with imaplib over implicit TLS."""
    conn = imaplib.IMAP4_SSL("127.0.0.1", api.imap.tls_port, ssl_context=tls_client(api.imap.pki), timeout=10)
    try:
        conn.login(user, PASSWORD)
        conn.select("INBOX", readonly=True)
        _typ, [ids] = conn.search(None, "ALL")
        out = []
        for n in ids.split():
            _typ, data = conn.fetch(n, "(RFC822)")
            raw = data[0][1]
            assert isinstance(raw, bytes)
            out.append(email.message_from_bytes(raw, policy=email.policy.default))
        return out
    finally:
        conn.logout()


async def audit_count(api: API, action: str) -> int:
    async with api.rt.db.read() as session:
        return (
            await session.execute(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
            )
        ).scalar_one()


async def test_json_send_is_delivered_and_its_state_reported(api: API) -> None:
    body = {
        "from": DPI,
        "to": [MARTIN],
        "cc": [SECRETARIAT],
        "subject": "Compte rendu d'hospitalisation",
        "text": "Bonjour, voici le compte rendu.",
        "html": "<p>Bonjour, voici le <b>compte rendu</b>.</p>",
        "attachments": [
            {"filename": "cr.pdf", "content_type": "application/pdf", "data": base64.b64encode(PDF).decode()}
        ],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r:
            assert r.status == 202, await r.text()
            sent = await r.json()
        assert {x["address"]: x["state"] for x in sent["recipients"]} == {
            MARTIN: "delivered",
            SECRETARIAT: "delivered",
        }
        async with http.get(f"{api.url}/api/v1/messages/{sent['id']}", headers=api.auth()) as r:
            assert r.status == 200
            state = await r.json()
        assert state["from"] == DPI and [x["state"] for x in state["recipients"]] == ["delivered"] * 2
        # Another mailbox cannot read this message's state.
        async with http.get(
            f"{api.url}/api/v1/messages/{sent['id']}", headers=api.auth(MARTIN, PASSWORD)
        ) as r:
            assert r.status == 404 and r.content_type == "application/problem+json"
    [msg] = await asyncio.to_thread(fetch_inbox, api, MARTIN)
    assert msg["Subject"] == "Compte rendu d'hospitalisation" and msg["From"] == DPI
    assert msg["Message-ID"] and msg["Date"] and msg["Received"]
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "cr.pdf" and att.get_content() == PDF
    assert "compte rendu" in msg.get_body(("plain",)).get_content()
    assert [m["Subject"] for m in await asyncio.to_thread(fetch_inbox, api, SECRETARIAT)] == [msg["Subject"]]
    assert await audit_count(api, "api-send") == 1 and await audit_count(api, "api-read") == 2


async def test_multipart_send_with_a_file(api: API) -> None:
    form = aiohttp.FormData()
    form.add_field("from", DPI)
    form.add_field("to", MARTIN)
    form.add_field("subject", "Résultats")
    form.add_field("text", "Résultats de laboratoire en pièce jointe.")
    form.add_field("attachments", PDF, filename="résultats.pdf", content_type="application/pdf")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/messages", data=form, headers=api.auth()) as r,
    ):
        assert r.status == 202, await r.text()
    [msg] = await asyncio.to_thread(fetch_inbox, api, MARTIN)
    assert msg["Subject"] == "Résultats"
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "résultats.pdf" and att.get_content() == PDF


async def problem(http: aiohttp.ClientSession, api: API, body: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    headers = kw.pop("headers", api.auth())
    async with http.post(f"{api.url}/api/v1/messages", json=body, headers=headers, **kw) as r:
        assert r.content_type == "application/problem+json", await r.text()
        doc = await r.json()
        assert doc["status"] == r.status and doc["title"] and doc["detail"]
        return r.status, doc


async def test_refusals_are_problems_naming_the_recipient(api: API) -> None:
    ok = {"from": DPI, "to": [MARTIN], "subject": "s", "text": "t"}
    async with aiohttp.ClientSession() as http:
        status, doc = await problem(http, api, ok, headers={})
        assert status == 401
        status, doc = await problem(http, api, ok, headers=api.auth(password="wrong"))
        assert status == 401
        status, doc = await problem(http, api, {**ok, "to": [MARTIN, "nobody@a.mssante.test"]})
        assert status == 422 and doc["recipient"] == "nobody@a.mssante.test"
        assert doc["smtp"].startswith("550 5.1.1")
        status, doc = await problem(http, api, {**ok, "to": ["someone@elsewhere.test"]})
        assert status == 422 and doc["recipient"] == "someone@elsewhere.test"
        assert "trust space" in doc["detail"]
        status, doc = await problem(http, api, {**ok, "from": MARTIN})
        assert status == 403
        status, doc = await problem(http, api, {**ok, "to": "not a list"})
        assert status == 400
        # A NUL in a refused address is quoted in the audit trace (PostgreSQL text holds none).
        status, doc = await problem(http, api, {**ok, "cc": ["a\x00b@a.mssante.test"]})
        assert status == 400
        status, doc = await problem(http, api, {**ok, "to": [f"r{i}@a.mssante.test" for i in range(101)]})
        assert status == 400
        async with http.post(
            f"{api.url}/api/v1/messages", data=b"to=x", headers={**api.auth(), "Content-Type": "text/plain"}
        ) as r:
            assert r.status == 415 and r.content_type == "application/problem+json"
    # Nothing was delivered by any refused request, and each one is in the audit trail.
    assert await asyncio.to_thread(fetch_inbox, api, MARTIN) == []
    assert await audit_count(api, "api-send") == 9


async def test_full_mailbox_refused_before_anything_is_kept(api: API) -> None:
    from mailserver.db.models import Mailbox

    async with api.rt.db.write() as session:
        await session.execute(update(Mailbox).where(Mailbox.address == MARTIN).values(quota_storage=10))
    async with aiohttp.ClientSession() as http:
        status, doc = await problem(http, api, {"from": DPI, "to": [MARTIN], "subject": "s", "text": "t"})
    assert status == 507 and doc["recipient"] == MARTIN


async def test_rate_limit_per_mailbox(api: API) -> None:
    api.rt.settings.api.messages_per_minute = 2
    ok = {"from": DPI, "to": [MARTIN], "subject": "s", "text": "t"}
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(f"{api.url}/api/v1/messages", json=ok, headers=api.auth()) as r:
                assert r.status == 202
        status, _doc = await problem(http, api, ok)
        assert status == 429
    assert len(await asyncio.to_thread(fetch_inbox, api, MARTIN)) == 2


async def test_remote_recipient_queued_then_bounced_with_its_reply(api: API) -> None:
    async with api.rt.db.write() as session:
        session.add(TrustDomain(name="b.mssante.test", dn="CN=b.mssante.test"))
    body = {"from": DPI, "to": ["dr.bernard@b.mssante.test", MARTIN], "subject": "s", "text": "t"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r:
            assert r.status == 202
            sent = await r.json()
        url = f"{api.url}/api/v1/messages/{sent['id']}"
        async with http.get(url, headers=api.auth()) as r:
            state = {x["address"]: x for x in (await r.json())["recipients"]}
        assert state[MARTIN]["state"] == "delivered"
        remote = state["dr.bernard@b.mssante.test"]
        assert remote["state"] == "queued" and remote["next_attempt"]
        # The peer refuses it for good: the queue closes the entry, the API keeps the outcome.
        async with api.rt.db.write() as session:
            qid = (
                (
                    await session.execute(
                        select(APIRecipient.queue_message_id).where(APIRecipient.message_id == sent["id"])
                    )
                )
                .scalars()
                .first()
            )
            assert qid is not None
            await session.execute(
                update(QueueRecipient)
                .where(QueueRecipient.message_id == qid)
                .values(status="failed", last_reply="550 5.1.1 <dr.bernard@b.mssante.test>: unknown user")
            )
        assert await api.rt.queue.finish(qid)
        async with api.rt.db.read() as session:
            assert (await session.execute(select(func.count()).select_from(QueueRecipient))).scalar_one() == 0
        async with http.get(url, headers=api.auth()) as r:
            state = {x["address"]: x for x in (await r.json())["recipients"]}
    assert state["dr.bernard@b.mssante.test"]["state"] == "bounced"
    assert "unknown user" in state["dr.bernard@b.mssante.test"]["detail"]


async def test_the_readme_curl_example_sends(api: API, tmp_path: Path) -> None:
    """The README's curl command, as written, with this listener's address and DPI's password."""
    section = README.read_text(encoding="utf-8").split("### Sending API for hospital software", 1)[1]
    command = re.search(r"```sh\n(.*?)```", section, re.S)
    assert command is not None
    line = command[1].replace("\\\n", " ").replace("APP-PASSWORD", api.secret)
    line = line.replace("http://127.0.0.1:8080", api.url)
    await asyncio.to_thread((tmp_path / "cr.pdf").write_bytes, PDF)
    proc = await asyncio.create_subprocess_exec(
        *shlex.split(line), "-sS", "-w", "\n%{http_code}", cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().rsplit("\n", 1)[1] == "202", out
    [msg] = await asyncio.to_thread(fetch_inbox, api, MARTIN)
    assert msg["Subject"] == "Compte rendu"
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "cr.pdf" and att.get_content() == PDF


async def test_malformed_multipart_part_headers_are_a_problem_not_a_crash(api: API) -> None:
    """Found by the fuzzer: a part header aiohttp cannot parse (a raw control byte) was a 500."""
    body = b'--XX\r\nContent-Disposition: form-data; name="\xc2\xb4\x15"\r\n\r\nv\r\n--XX--\r\n'
    headers = {**api.auth(), "Content-Type": "multipart/form-data; boundary=XX"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/messages", data=body, headers=headers) as r,
    ):
        assert r.status == 400 and r.content_type == "application/problem+json"


def results_with_pdf() -> dict[str, Any]:
    """DPI's results for MARTIN, a PDF attached."""
    return {
        "from": DPI,
        "to": [MARTIN],
        "subject": "Résultats",
        "text": "t",
        "attachments": [
            {"filename": "r.pdf", "content_type": "application/pdf", "data": base64.b64encode(PDF).decode()}
        ],
    }


async def test_arrivals_listed_by_cursor_with_raw_and_attachment_downloads(api: API) -> None:
    """MARTIN's software, without IMAP: what arrived since its cursor, then the raw message and the file."""
    martin = api.auth(MARTIN, PASSWORD)
    base = f"{api.url}/api/v1/mailboxes/{MARTIN}/messages"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.url}/api/v1/messages", json=results_with_pdf(), headers=api.auth()) as r:
            assert r.status == 202
        async with http.get(base, headers=martin) as r:
            assert r.status == 200
            listing = await r.json()
        [item] = listing["messages"]
        assert item["subject"] == "Résultats" and item["attachments"][0]["filename"] == "r.pdf"
        async with http.get(base, params={"since": listing["cursor"]}, headers=martin) as r:
            assert (await r.json())["messages"] == []
        async with http.get(f"{base}/{item['uid']}/raw", headers=martin) as r:
            assert r.status == 200 and r.content_type == "message/rfc822"
            raw = await r.read()
        assert email.message_from_bytes(raw, policy=email.policy.default)["Subject"] == "Résultats"
        async with http.get(f"{base}/{item['uid']}/attachments/1", headers=martin) as r:
            assert r.status == 200 and await r.read() == PDF
        async with http.get(f"{base}/{item['uid']}/attachments/2", headers=martin) as r:
            assert r.status == 404 and r.content_type == "application/problem+json"
        # Another mailbox's arrivals are not DPI's to read.
        async with http.get(base, headers=api.auth()) as r:
            assert r.status == 403 and r.content_type == "application/problem+json"
    async with api.rt.db.read() as session:
        reads = (
            (
                await session.execute(
                    select(AuditEvent.request).where(AuditEvent.action == "read", AuditEvent.actor == MARTIN)
                )
            )
            .scalars()
            .all()
        )
    assert any("attachment 1" in r for r in reads) and any(r.startswith("api INBOX message") for r in reads)


async def test_what_email_cannot_write_is_a_problem_not_a_crash(api: API) -> None:
    """Found by a new user: line breaks Python's ``email`` refuses (U+2028, U+0085, VT, FF, FS), a lone
    surrogate, a NUL, an address submission would refuse, and numbers past SQLite's integers were 500s
    (not audited); each is now a 400 problem+json, audited. Nothing is delivered."""
    ok = {"from": DPI, "to": [MARTIN], "subject": "s", "text": "t"}
    pdf = base64.b64encode(PDF).decode()
    refused: list[dict[str, Any]] = [
        *({**ok, "subject": f"a{c}b"} for c in ("\u2028", "\u0085", "\x0b", "\x0c", "\x1c", "\x00")),
        {**ok, "to": [f"{MARTIN}\u2028Bcc: x@a.mssante.test"]},
        {**ok, "software": "DPI\u2028v2"},
        {**ok, "subject": "\ud800"},
        {**ok, "text": "a\x00b"},
        {**ok, "from": DPI + "."},
        {**ok, "attachments": [{"filename": "a\x0bb.pdf", "content_type": "application/pdf", "data": pdf}]},
    ]
    async with aiohttp.ClientSession() as http:
        for body in refused:
            status, doc = await problem(http, api, body)
            assert status == 400, (body, doc)
        base = f"{api.url}/api/v1/mailboxes/{MARTIN}/messages"
        martin = api.auth(MARTIN, PASSWORD)
        for url, params in [(base, {"since": "9" * 23}), (f"{base}/{'9' * 23}/raw", {})]:
            async with http.get(url, params=params, headers=martin) as r:
                assert r.status in (400, 404) and r.content_type == "application/problem+json"
    assert await asyncio.to_thread(fetch_inbox, api, MARTIN) == []
    assert await audit_count(api, "api-send") == len(refused)


async def test_attachment_types_are_leaf_media_types(api: API) -> None:
    """A multipart or message type given for an attachment, or no type at all ("/"), is sent as
    application/octet-stream: the message stays well formed (RFC 2046 §5.1, §5.2)."""
    pdf = base64.b64encode(PDF).decode()
    body = {
        "from": DPI,
        "to": [MARTIN],
        "subject": "types",
        "text": "t",
        "attachments": [
            {"filename": f"f{n}", "content_type": ctype, "data": pdf}
            for n, ctype in enumerate(["/", "multipart/mixed", "message/rfc822", "Application/PDF; x=1"])
        ],
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r,
    ):
        assert r.status == 202, await r.text()
    [msg] = await asyncio.to_thread(fetch_inbox, api, MARTIN)
    types = [a.get_content_type() for a in msg.iter_attachments()]
    assert types == ["application/octet-stream"] * 3 + ["application/pdf"]
    assert all(a.get_content() == PDF for a in msg.iter_attachments())


async def ranges_answer(http: aiohttp.ClientSession, url: str, whole: bytes, headers: dict[str, str]) -> None:
    """RFC 9110 §14: a satisfiable range is 206 with its Content-Range; ``bytes=-0`` or a range past the
    end 416 with ``bytes */SIZE``; a Range header that does not parse, of another unit or with several
    ranges is ignored (200, the whole body)."""
    size = len(whole)
    for rng, part in (("bytes=0-9", whole[:10]), ("bytes=10-", whole[10:]), ("bytes=-5", whole[-5:])):
        async with http.get(url, headers={**headers, "Range": rng}) as r:
            assert r.status == 206, (rng, r.status)
            assert await r.read() == part and r.headers["Accept-Ranges"] == "bytes"
            first = size - len(part) if rng.startswith("bytes=-") else int(rng[6:].split("-")[0])
            assert r.headers["Content-Range"] == f"bytes {first}-{first + len(part) - 1}/{size}"
    for rng in ("bytes=-0", f"bytes={size}-", f"bytes={size + 10}-{size + 20}"):
        async with http.get(url, headers={**headers, "Range": rng}) as r:
            assert (r.status, r.headers.get("Content-Range")) == (416, f"bytes */{size}"), rng
    for rng in ("bytes=abc", "bytes=9-3", "items=0-9", "bytes=0-1,5-6", "bytes 0-9"):
        async with http.get(url, headers={**headers, "Range": rng}) as r:
            assert r.status == 200, (rng, r.status)
            assert await r.read() == whole and "Content-Range" not in r.headers


async def test_raw_and_attachment_downloads_honour_ranges(api: API) -> None:
    martin = api.auth(MARTIN, PASSWORD)
    base = f"{api.url}/api/v1/mailboxes/{MARTIN}/messages"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.url}/api/v1/messages", json=results_with_pdf(), headers=api.auth()) as r:
            assert r.status == 202
        async with http.get(base, headers=martin) as r:
            [item] = (await r.json())["messages"]
        async with http.get(f"{base}/{item['uid']}/raw", headers=martin) as r:
            raw = await r.read()
        await ranges_answer(http, f"{base}/{item['uid']}/raw", raw, martin)
        await ranges_answer(http, f"{base}/{item['uid']}/attachments/1", PDF, martin)
        async with http.get(
            f"{base}/{item['uid']}/raw", headers={**martin, "Range": "bytes=-0"}
        ) as r:  # an API error like the others
            assert r.content_type == "application/problem+json"
