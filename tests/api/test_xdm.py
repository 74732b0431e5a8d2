"""Structured documents: a CDA R2 sent through the API travels as an IHE XDM archive with the MSSanté
headers; arriving archives are checked (zip bombs, paths) and their metadata listed by the receive
API; hostile XML is refused before anything is built."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import xml.etree.ElementTree as ET
import zipfile
from typing import Any

import aiohttp

from config.settings import XDMSettings
from mailserver import xdm
from tests.api.conftest import API, DPI
from tests.api.test_send_api import fetch_inbox, problem
from tests.imap.conftest import MARTIN, PASSWORD, SECRETARIAT

RIM = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"
INS = "1.2.250.1.213.1.4.8"


def cda(ins: bool = True, code: str = "11490-0", extra: str = "") -> str:
    """A small CDA R2 discharge letter (LOINC 11490-0), the patient identified by an INS or a local id."""
    patient = (
        f'<id root="{INS}" extension="279035121518989"/>' if ins else '<id root="1.2.3.4" extension="IPP42"/>'
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
{extra}<ClinicalDocument xmlns="urn:hl7-org:v3">
  <id root="1.2.250.1.999.1" extension="CR-2026-001"/>
  <code code="{code}" codeSystem="2.16.840.1.113883.6.1" displayName="Lettre de liaison"/>
  <title>Lettre de liaison à la sortie</title>
  <effectiveTime value="20261202101500+0100"/>
  <recordTarget><patientRole>{patient}<patient><name>DUPONT</name></patient></patientRole></recordTarget>
  <component><structuredBody><component><section>
    <code code="18776-5" codeSystem="2.16.840.1.113883.6.1" displayName="Plan de soins"/>
    <text>Repos.</text>
  </section></component></structuredBody></component>
</ClinicalDocument>
"""


async def send(api: API, body: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/messages", json=body, headers=api.auth()) as r,
    ):
        assert r.status == 202, await r.text()


async def arrivals(api: API) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{api.url}/api/v1/mailboxes/{MARTIN}/messages", headers=api.auth(MARTIN, PASSWORD)) as r,
    ):
        assert r.status == 200, await r.text()
        return (await r.json())["messages"]


async def test_a_cda_travels_as_an_xdm_archive_with_the_mssante_headers(api: API) -> None:
    text = cda()
    body = {
        "from": DPI,
        "to": [MARTIN],
        "cc": [SECRETARIAT],
        "subject": "Lettre de liaison",
        "text": "Lettre de liaison en pièce jointe.",
        "software": "DPI Hôpital 4.2",
        "documents": [
            {"text": text},
            {"data": base64.b64encode(cda(code="34133-9").encode()).decode(), "title": "Synthèse"},
        ],
    }
    await send(api, body)
    [msg] = await asyncio.to_thread(fetch_inbox, api, MARTIN)
    assert msg.get_all("X-MSS-CODECDA") == [
        "11490-0^Lettre de liaison^2.16.840.1.113883.6.1",
        "34133-9^Lettre de liaison^2.16.840.1.113883.6.1",
    ]
    assert msg["X-MSS-INS"] == "O" and msg["X-MSS-NIL"] == "DPI Hôpital 4.2"
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "IHE_XDM.zip" and att.get_content_type() == "application/zip"
    with zipfile.ZipFile(io.BytesIO(att.get_content())) as zf:
        names = set(zf.namelist())
        assert names == {
            "README.TXT",
            "INDEX.HTM",
            "IHE_XDM/SUBSET01/METADATA.XML",
            "IHE_XDM/SUBSET01/DOC0001.XML",
            "IHE_XDM/SUBSET01/DOC0002.XML",
        }
        doc = zf.read("IHE_XDM/SUBSET01/DOC0001.XML")
        metadata = ET.fromstring(zf.read("IHE_XDM/SUBSET01/METADATA.XML"))
        assert b"DOC0001.XML" in zf.read("INDEX.HTM")
    assert doc == text.encode()
    assert metadata.tag == "{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}SubmitObjectsRequest"
    entries = metadata.findall(f".//{RIM}ExtrinsicObject")
    assert len(entries) == 2
    slots = {s.get("name"): [v.text for v in s.iter(f"{RIM}Value")] for s in entries[0].findall(f"{RIM}Slot")}
    assert slots["hash"] == [hashlib.sha1(doc).hexdigest()] and slots["size"] == [str(len(doc))]
    assert slots["URI"] == ["DOC0001.XML"] and slots["sourcePatientId"] == [f"279035121518989^^^&{INS}&ISO"]
    titles = [e.find(f"{RIM}Name/{RIM}LocalizedString").get("value") for e in entries]
    assert titles == ["Lettre de liaison à la sortie", "Synthèse"]
    [ss] = metadata.findall(f".//{RIM}RegistryPackage")
    members = metadata.findall(f".//{RIM}Association")
    assert {a.get("targetObject") for a in members} == {e.get("id") for e in entries}
    assert {a.get("sourceObject") for a in members} == {ss.get("id")}
    # The receive API reads the archive back: valid, with both entries and matching hashes.
    [item] = await arrivals(api)
    [report] = item["xdm"]
    assert report["valid"] is True and report["error"] is None
    assert [(d["uri"], d["type_code"], d["hash_ok"]) for d in report["documents"]] == [
        ("DOC0001.XML", "11490-0", True),
        ("DOC0002.XML", "34133-9", True),
    ]
    assert report["documents"][0]["patient_id"].startswith("279035121518989^^^")


async def test_a_cda_file_in_a_multipart_send_is_a_structured_document(api: API) -> None:
    """Software posting files (``curl -F documents=@cr.xml``) gets the same archive and headers."""
    form = aiohttp.FormData()
    for name, value in [("from", DPI), ("to", MARTIN), ("subject", "CR"), ("text", "Compte rendu joint.")]:
        form.add_field(name, value)
    form.add_field("documents", cda().encode(), filename="cr.xml", content_type="text/xml")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/messages", data=form, headers=api.auth()) as r,
    ):
        assert r.status == 202, await r.text()
    [msg] = await asyncio.to_thread(fetch_inbox, api, MARTIN)
    assert msg.get_all("X-MSS-CODECDA") == ["11490-0^Lettre de liaison^2.16.840.1.113883.6.1"]
    assert msg["X-MSS-INS"] == "O"
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "IHE_XDM.zip"
    form = aiohttp.FormData()
    for name, value in [("from", DPI), ("to", MARTIN), ("subject", "CR")]:
        form.add_field(name, value)
    form.add_field("documents", b"<html>pas un CDA</html>", filename="x.xml", content_type="text/xml")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/messages", data=form, headers=api.auth()) as r,
    ):
        assert r.status == 400 and r.content_type == "application/problem+json"


async def test_without_ins_the_header_says_n_and_no_document_no_header(api: API) -> None:
    await send(api, {"from": DPI, "to": [MARTIN], "subject": "a", "documents": [{"text": cda(ins=False)}]})
    await send(api, {"from": DPI, "to": [MARTIN], "subject": "b", "text": "sans document"})
    first, second = await asyncio.to_thread(fetch_inbox, api, MARTIN)
    assert first["X-MSS-INS"] == "N" and first["X-MSS-CODECDA"].startswith("11490-0^")
    assert first["X-MSS-NIL"] is None
    assert [a.get_filename() for a in first.iter_attachments()] == ["IHE_XDM.zip"]
    assert second["X-MSS-CODECDA"] is None and second["X-MSS-INS"] is None
    assert [i["xdm"] for i in await arrivals(api)][1] == []


async def test_hostile_cda_is_refused_with_a_problem(api: API) -> None:
    xxe = '<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    laughs = '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>\n'
    ok = {"from": DPI, "to": [MARTIN], "subject": "s"}
    async with aiohttp.ClientSession() as http:
        for bad in (cda(extra=xxe).replace("Repos.", "&xxe;"), cda(extra=laughs), "<pas du xml", "<a/>"):
            status, doc = await problem(http, api, {**ok, "documents": [{"text": bad}]})
            assert status == 400 and doc["document"] == 1, doc
        status, doc = await problem(http, api, {**ok, "documents": [{"data": "pas du base64!"}]})
        assert status == 400
        status, doc = await problem(http, api, {**ok, "documents": [{"title": "sans contenu"}]})
        assert status == 400
    assert await asyncio.to_thread(fetch_inbox, api, MARTIN) == []


def archive(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


async def test_hostile_archives_are_flagged_not_opened(api: API) -> None:
    api.rt.settings.xdm.max_uncompressed = 100_000
    meta = b"<SubmitObjectsRequest/>"
    xxe_meta = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    hostile = {
        "bomb": archive(
            [("IHE_XDM/SUBSET01/METADATA.XML", meta), ("IHE_XDM/SUBSET01/DOC0001.XML", bytes(90_000))]
        ),
        "too large": archive([(f"IHE_XDM/SUBSET01/DOC{n:04d}.XML", os.urandom(30_000)) for n in range(4)]),
        "traversal": archive([("IHE_XDM/SUBSET01/METADATA.XML", meta), ("IHE_XDM/../../evil.sh", b"x")]),
        "absolute": archive([("/etc/cron.d/evil", b"x")]),
        "entries": archive([(f"f{n}.txt", b"x") for n in range(101)]),
        "xxe metadata": archive([("IHE_XDM/SUBSET01/METADATA.XML", xxe_meta)]),
        "not a zip": b"PK\x03\x04 broken",
    }
    for label, data in hostile.items():
        att = {
            "filename": "IHE_XDM.zip",
            "content_type": "application/zip",
            "data": base64.b64encode(data).decode(),
        }
        await send(api, {"from": DPI, "to": [MARTIN], "subject": label, "attachments": [att]})
    items = await arrivals(api)
    flags = {i["subject"]: i["xdm"] for i in items}
    assert set(flags) == set(hostile)
    for label, reports in flags.items():
        [report] = reports
        assert report["valid"] is False and report["documents"] == [], (label, report)
    assert "compression" in flags["bomb"][0]["error"]
    assert "décompressés" in flags["too large"][0]["error"]
    assert "chemin interdit" in flags["traversal"][0]["error"]
    assert "chemin interdit" in flags["absolute"][0]["error"]
    assert "101 entrées" in flags["entries"][0]["error"]
    assert "DTD" in flags["xxe metadata"][0]["error"]
    assert "illisible" in flags["not a zip"][0]["error"]


def test_a_document_changed_after_its_metadata_is_reported() -> None:
    """Read back with the module alone: a document whose bytes no longer match METADATA.XML's hash."""
    doc = xdm.parse_cda(cda().encode())
    built = xdm.build_archive([doc], ["Lettre"], DPI, [MARTIN])
    with zipfile.ZipFile(io.BytesIO(built)) as zf:
        entries = [(n, zf.read(n)) for n in zf.namelist()]
    tampered = archive(
        [(n, d.replace(b"Repos.", b"Sport.") if n.endswith("DOC0001.XML") else d) for n, d in entries]
    )
    limits = XDMSettings()
    [good] = xdm.read_archive(built, limits).documents
    [bad] = xdm.read_archive(tampered, limits).documents
    assert good.hash_ok is True and bad.hash_ok is False and bad.type_code == "11490-0"
