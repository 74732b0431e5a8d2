"""Structured documents as IHE XDM archives (IHE ITI TF-1 §16, TF-3 §4.2.3.2): building the
``IHE_XDM.zip`` a sending software's CDA R2 document travels in, and reading one that arrived.

Both sides parse XML with ``defusedxml`` (no DTD, no entity, no external reference: a CDA or a
METADATA.XML is data from outside) and an archive is opened only after its directory was checked
against the ``[xdm]`` limits (entry count, total uncompressed size, compression ratio) and every
name is a relative path without ``..``: a zip bomb or a path traversal is flagged, never expanded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import io
import posixpath
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from config.settings import XDMSettings

ARCHIVE_NAME = "IHE_XDM.zip"
SUBSET = "IHE_XDM/SUBSET01"
HL7 = "urn:hl7-org:v3"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
# The INS: NIR (1.2.250.1.213.1.4.8), NIA (.4.9) and their test roots (.4.10, .4.11).
INS_ROOTS = {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
# ebXML Registry identification and classification schemes of XDS/XDM (ITI TF-3 §4.2.5).
DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
OPERATOR_OID = "1.2.250.1.213.1.1.1"  # source of submission sets when the software names none


class XDMError(ValueError):
    """A document or archive refused: the reason is fit for a 400 detail or an ``xdm`` flag."""


def parse_xml(data: bytes) -> Element:
    """Parse untrusted XML: a DTD, an entity declaration or an external reference is refused."""
    try:
        return fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise XDMError(f"XML refusé: {type(exc).__name__} (DTD et entités interdites)") from None
    except (ParseError, ValueError) as exc:
        raise XDMError(f"XML invalide: {exc}"[:200]) from None


@dataclass
class Code:
    code: str
    system: str = ""
    display: str = ""

    def header(self) -> str:
        """The ``X-MSS-CODECDA`` value: ``code^libellé^système`` (HL7 CE order, ``^`` stripped inside)."""
        return "^".join(p.replace("^", " ").replace("\r", " ").replace("\n", " ") for p in self.as_tuple())

    def as_tuple(self) -> tuple[str, str, str]:
        return self.code, self.display, self.system


@dataclass
class CDA:
    """What the message and the XDM metadata need from a CDA R2 ``ClinicalDocument``."""

    data: bytes
    type_code: Code
    title: str
    unique_id: str
    effective_time: str
    patient_id: str  # ``extension^^^&root&ISO`` of recordTarget's first id, "" if none
    ins: bool  # the patient is identified by an INS


def _code(el: Element) -> Code | None:
    value = (el.get("code") or "").strip()
    if not value:
        return None
    return Code(
        value[:64], (el.get("codeSystem") or "").strip()[:64], (el.get("displayName") or "").strip()[:200]
    )


def parse_cda(data: bytes) -> CDA:
    """A CDA R2 document, parsed safely; its type code (``ClinicalDocument/code``, the one
    ``X-MSS-CODECDA`` and the DocumentEntry's typeCode carry), title, ids and patient."""
    root = parse_xml(data)
    if root.tag != f"{{{HL7}}}ClinicalDocument":
        raise XDMError("document CDA R2 attendu (ClinicalDocument, espace urn:hl7-org:v3)")
    type_el = root.find(f"{{{HL7}}}code")
    type_code = _code(type_el) if type_el is not None else None
    if type_code is None:
        raise XDMError("le document CDA n'a pas de code (ClinicalDocument/code)")
    title = (root.findtext(f"{{{HL7}}}title") or "").strip()
    doc_id = root.find(f"{{{HL7}}}id")
    unique_id = ""
    if doc_id is not None and doc_id.get("root"):
        ext = doc_id.get("extension")
        unique_id = f"{doc_id.get('root')}^{ext}" if ext else str(doc_id.get("root"))
    time_el = root.find(f"{{{HL7}}}effectiveTime")
    effective = (time_el.get("value") or "") if time_el is not None else ""
    ids = root.findall(f"{{{HL7}}}recordTarget/{{{HL7}}}patientRole/{{{HL7}}}id")
    ins_ids = [i for i in ids if i.get("root") in INS_ROOTS and i.get("extension")]
    chosen = (ins_ids or [i for i in ids if i.get("root") and i.get("extension")] or [None])[0]
    patient = f"{chosen.get('extension')}^^^&{chosen.get('root')}&ISO" if chosen is not None else ""
    return CDA(data, type_code, title[:500], unique_id[:128], effective[:32], patient, bool(ins_ids))


def _slot(parent: Element, name: str, *values: str) -> None:
    slot = SubElement(parent, f"{{{RIM}}}Slot", name=name)
    vl = SubElement(slot, f"{{{RIM}}}ValueList")
    for v in values:
        SubElement(vl, f"{{{RIM}}}Value").text = v


def _name(parent: Element, value: str) -> None:
    SubElement(SubElement(parent, f"{{{RIM}}}Name"), f"{{{RIM}}}LocalizedString", value=value)


def _classify(parent: Element, scheme: str, obj: str, code: Code) -> None:
    c = SubElement(
        parent,
        f"{{{RIM}}}Classification",
        id=f"urn:uuid:{uuid.uuid4()}",
        classificationScheme=scheme,
        classifiedObject=obj,
        nodeRepresentation=code.code,
    )
    _slot(c, "codingScheme", code.system)
    _name(c, code.display or code.code)


def _identify(parent: Element, scheme: str, obj: str, value: str, name: str) -> None:
    e = SubElement(
        parent,
        f"{{{RIM}}}ExternalIdentifier",
        id=f"urn:uuid:{uuid.uuid4()}",
        identificationScheme=scheme,
        registryObject=obj,
        value=value,
    )
    _name(e, name)


def metadata(docs: list[CDA], titles: list[str], author: str, recipients: list[str], source: str) -> bytes:
    """METADATA.XML: an ebRIM SubmitObjectsRequest with one DocumentEntry per document (hash, size,
    URI in the subset) and the SubmissionSet that holds them."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    req = Element(f"{{{LCM}}}SubmitObjectsRequest")
    objects = SubElement(req, f"{{{RIM}}}RegistryObjectList")
    ss_id = "urn:uuid:" + str(uuid.uuid4())
    patient = next((d.patient_id for d in docs if d.ins), "") or next((d.patient_id for d in docs), "")
    entries = []
    for n, (doc, title) in enumerate(zip(docs, titles, strict=True), start=1):
        de_id = "urn:uuid:" + str(uuid.uuid4())
        entries.append(de_id)
        eo = SubElement(
            objects,
            f"{{{RIM}}}ExtrinsicObject",
            id=de_id,
            mimeType="text/xml",
            objectType=DOCUMENT_ENTRY,
            status="urn:oasis:names:tc:ebxml-regrep:StatusType:Approved",
        )
        _slot(eo, "creationTime", (doc.effective_time or now)[:14])
        _slot(eo, "hash", hashlib.sha1(doc.data).hexdigest())  # SHA-1: the hash XDS metadata defines
        _slot(eo, "size", str(len(doc.data)))
        _slot(eo, "URI", f"DOC{n:04d}.XML")
        _slot(eo, "languageCode", "fr-FR")
        if doc.patient_id:
            _slot(eo, "sourcePatientId", doc.patient_id)
        _slot(eo, "authorPerson", author)
        _name(eo, title)
        _classify(eo, DE_TYPE_CODE, de_id, doc.type_code)
        _classify(eo, DE_FORMAT_CODE, de_id, Code("urn:ihe:iti:xds-sd:text:2008", "1.3.6.1.4.1.19376.1.2.3"))
        if doc.patient_id:
            _identify(eo, DE_PATIENT_ID, de_id, doc.patient_id, "XDSDocumentEntry.patientId")
        _identify(
            eo, DE_UNIQUE_ID, de_id, doc.unique_id or f"2.25.{uuid.uuid4().int}", "XDSDocumentEntry.uniqueId"
        )
    ss = SubElement(objects, f"{{{RIM}}}RegistryPackage", id=ss_id)
    _slot(ss, "submissionTime", now)
    _slot(ss, "intendedRecipient", *[f"|{r}^^Internet" for r in recipients])
    _slot(ss, "authorTelecommunication", f"^^Internet^{author}")
    _name(ss, "Envoi " + ", ".join(t for t in titles if t)[:200])
    SubElement(
        objects,
        f"{{{RIM}}}Classification",
        id=f"urn:uuid:{uuid.uuid4()}",
        classifiedObject=ss_id,
        classificationNode=SUBMISSION_SET,
    )
    _classify(ss, SS_CONTENT_TYPE, ss_id, docs[0].type_code)
    _identify(ss, SS_UNIQUE_ID, ss_id, f"2.25.{uuid.uuid4().int}", "XDSSubmissionSet.uniqueId")
    _identify(ss, SS_SOURCE_ID, ss_id, source, "XDSSubmissionSet.sourceId")
    if patient:
        _identify(ss, SS_PATIENT_ID, ss_id, patient, "XDSSubmissionSet.patientId")
    for de_id in entries:
        SubElement(
            objects,
            f"{{{RIM}}}Association",
            id=f"urn:uuid:{uuid.uuid4()}",
            associationType="urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember",
            sourceObject=ss_id,
            targetObject=de_id,
        )
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(
        req, encoding="utf-8", xml_declaration=False
    )


def build_archive(
    docs: list[CDA], titles: list[str], author: str, recipients: list[str], source: str = OPERATOR_OID
) -> bytes:
    """The ``IHE_XDM.zip`` of ITI TF-1 §16.1: README.TXT and INDEX.HTM at the root, the subset's
    METADATA.XML and documents (DOC0001.XML, ...) under IHE_XDM/SUBSET01/."""
    items = "".join(
        f'<li><a href="{SUBSET}/DOC{n:04d}.XML">{html.escape(t or "document")}</a></li>'
        for n, t in enumerate(titles, start=1)
    )
    index = (
        '<!DOCTYPE html><html lang="fr"><head><meta charset="utf-8"><title>IHE XDM</title></head>'
        f"<body><h1>Documents transmis par {html.escape(author)}</h1><ul>{items}</ul></body></html>\n"
    )
    readme = (
        "Archive IHE XDM (IHE ITI TF-1 16) envoyee par la messagerie MSSante Caducee.\r\n"
        f"Expediteur : {author}\r\n"
        f"Contenu : {SUBSET}/METADATA.XML et {len(docs)} document(s) CDA R2.\r\n"
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.TXT", readme)
        zf.writestr("INDEX.HTM", index)
        zf.writestr(f"{SUBSET}/METADATA.XML", metadata(docs, titles, author, recipients, source))
        for n, doc in enumerate(docs, start=1):
            zf.writestr(f"{SUBSET}/DOC{n:04d}.XML", doc.data)
    return buf.getvalue()


@dataclass
class DocumentEntry:
    uri: str
    title: str
    mime_type: str
    type_code: str
    type_code_system: str
    patient_id: str
    unique_id: str
    hash: str
    size: int | None
    hash_ok: bool | None  # the document in the subset matches the metadata's hash and size


@dataclass
class Report:
    """What the receive API says of one ``IHE_XDM.zip``: ``valid`` false with the ``error`` when the
    archive was refused (limits, paths) or its metadata unreadable."""

    filename: str
    valid: bool
    error: str | None = None
    documents: list[DocumentEntry] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_archive(filename: str) -> bool:
    return filename.strip().lower() == ARCHIVE_NAME.lower()


def _safe_name(name: str) -> bool:
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name or ":" in name:
        return False
    return ".." not in name.split("/") and posixpath.normpath(name) == name.rstrip("/")


def check_archive(zf: zipfile.ZipFile, limits: XDMSettings) -> None:
    """Refuse, from the central directory alone, too many entries, too large or too compressed a
    content, and any absolute or ``..`` path (the declared sizes are enforced again when reading)."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise XDMError(f"archive refusée: {len(infos)} entrées (au plus {limits.max_entries})")
    total = 0
    for info in infos:
        if not _safe_name(info.filename):
            raise XDMError(f"archive refusée: chemin interdit {info.filename[:100]!r}")
        total += info.file_size
        if total > limits.max_uncompressed:
            raise XDMError(f"archive refusée: plus de {limits.max_uncompressed} octets décompressés")
        if info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise XDMError(f"archive refusée: taux de compression de {info.filename[:100]!r} excessif")


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """An entry's bytes, never more than its declared size (a lying header is refused)."""
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise XDMError(f"archive refusée: taille de {info.filename[:100]!r} incohérente")
    return data


def _slots(el: Element) -> dict[str, list[str]]:
    return {
        s.get("name", ""): [v.text or "" for v in s.iter(f"{{{RIM}}}Value")]
        for s in el.findall(f"{{{RIM}}}Slot")
    }


def read_archive(data: bytes, limits: XDMSettings, filename: str = ARCHIVE_NAME) -> Report:
    """Check an arrived ``IHE_XDM.zip`` and list its document entries; never raises."""
    try:
        return Report(filename, True, None, _entries(data, limits))
    except XDMError as exc:
        return Report(filename, False, str(exc))
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        EOFError,
        OSError,
        RuntimeError,
    ) as exc:
        return Report(filename, False, f"archive illisible: {exc}"[:200])


def _entries(data: bytes, limits: XDMSettings) -> list[DocumentEntry]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        check_archive(zf, limits)
        by_name = {i.filename.upper(): i for i in zf.infolist()}
        metas = sorted(n for n in by_name if n.startswith("IHE_XDM/") and n.endswith("/METADATA.XML"))
        if not metas:
            raise XDMError("archive sans IHE_XDM/<subset>/METADATA.XML")
        out = []
        for meta_name in metas:
            subset = meta_name.rsplit("/", 1)[0]
            root = parse_xml(_read_entry(zf, by_name[meta_name]))
            for eo in root.iter(f"{{{RIM}}}ExtrinsicObject"):
                out.append(_entry(zf, by_name, subset, eo))
        return out


def _entry(
    zf: zipfile.ZipFile, by_name: dict[str, zipfile.ZipInfo], subset: str, eo: Element
) -> DocumentEntry:
    slots = _slots(eo)
    one = {k: (v[0] if v else "") for k, v in slots.items()}
    title_el = eo.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString")
    type_code, type_system = "", ""
    for c in eo.findall(f"{{{RIM}}}Classification"):
        if c.get("classificationScheme") == DE_TYPE_CODE:
            type_code = c.get("nodeRepresentation", "")
            type_system = next(iter(_slots(c).get("codingScheme") or []), "")
    ids = {
        e.get("identificationScheme"): e.get("value", "") for e in eo.findall(f"{{{RIM}}}ExternalIdentifier")
    }
    try:
        size: int | None = int(one.get("size", ""))
    except ValueError:
        size = None
    uri = one.get("URI", "")
    hash_ok = None
    target = by_name.get(f"{subset}/{uri}".upper()) if uri and _safe_name(uri) else None
    if target is not None:
        body = _read_entry(zf, target)
        digest = hashlib.sha1(body).hexdigest()  # SHA-1: the hash XDS metadata defines
        hash_ok = digest == one.get("hash", "").lower() and (size is None or size == len(body))
    return DocumentEntry(
        uri=uri[:200],
        title=(title_el.get("value", "") if title_el is not None else "")[:500],
        mime_type=eo.get("mimeType", "")[:100],
        type_code=type_code[:64],
        type_code_system=type_system[:64],
        patient_id=(ids.get(DE_PATIENT_ID) or one.get("sourcePatientId", ""))[:200],
        unique_id=(ids.get(DE_UNIQUE_ID) or "")[:200],
        hash=one.get("hash", "")[:64],
        size=size,
        hash_ok=hash_ok,
    )
