"""The sending API for applicative software (hospital record systems): ``/api/v1/``.

``POST /api/v1/messages`` takes JSON (attachments in base64) or multipart/form-data (attachments as
files) and runs the submission path: the sender must be one the caller may send as
(``accounts.may_send_as``), every recipient goes through ``submission.check_recipient`` (trust space,
mailbox state and quota, patient conversations, S/MIME), the message through ``check_authors``,
``conversations.check_message``, ``complete_message``, ``large_files.rewrite`` (attachments above
``[large_files] threshold`` sent by link, as uploads named by id are) and ``sign_message``, and is
committed by ``commit_message``,
the function SMTP's handlers use. ``202`` is answered only after that commit, with the API's
per-recipient rows written in the same transaction. Errors are RFC 9457 problem+json naming the
refused recipient. Every call is audited.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import email.policy
import email.utils
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailserver import accounts, conversations, large_files, mdn, quota, xdm
from mailserver.api_models import APIMessage, APIRecipient
from mailserver.db.models import Folder, Message, utcnow
from mailserver.headers import HeaderView
from mailserver.large_file_models import LargeFile
from mailserver.policy import LocalTarget, Refusal
from mailserver.portal import service
from mailserver.portal.api import Unauthenticated, credentials
from mailserver.portal.http import RT, Unsatisfiable, download_response, ranged, remote
from mailserver.queue.models import QueueRecipient
from mailserver.runtime import Runtime
from mailserver.smtp import paths
from mailserver.smtp.server import Recipient
from mailserver.smtp.submission import check_recipient, complete_message, sign_message
from mailserver.store import mime
from mailserver.store.store import DeliveryResult as StoreResult
from mailserver.submit import commit_message

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
_WHO = web.RequestKey("api_actor", str)
RATE = web.AppKey("api_rate", collections.defaultdict)  # type: ignore[type-arg]


class Problem(Exception):
    """An RFC 9457 problem: ``status``, a short ``title``, the ``detail`` and extra members."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        self.headers: dict[str, str] = {}

    def response(self) -> web.Response:
        body = {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail}
        return web.Response(
            text=json.dumps({**body, **self.extra}, ensure_ascii=False),
            status=self.status,
            content_type=PROBLEM,
            headers=self.headers,
        )


def refusal_problem(refusal: Refusal, recipient: str | None = None) -> Problem:
    """The HTTP status for a policy refusal: full mailbox 507, other permanent ones 422 (403 for
    authorisation, 5.7.x), temporary ones 503."""
    if refusal.enhanced.endswith(".2.2"):
        status = 507
    elif refusal.permanent:
        status = 403 if refusal.enhanced.startswith("5.7.") and recipient is None else 422
    else:
        status = 503
    extra: dict[str, Any] = {"smtp": refusal.smtp}
    if recipient is not None:
        extra["recipient"] = recipient
    return Problem(status, "Refusé", refusal.text, **extra)


@dataclass
class Caller:
    address: str
    mailbox_id: int


async def _caller(request: web.Request) -> Caller:
    try:
        outcome = await credentials(request, "api")
    except Unauthenticated as exc:
        problem = Problem(exc.status, "Non authentifié", exc.message)
        if exc.challenge:
            problem.headers["WWW-Authenticate"] = exc.challenge
        raise problem from None
    if outcome is None or outcome.address is None or outcome.mailbox_id is None:
        problem = Problem(401, "Non authentifié", "identifiants attendus (Basic ou Bearer)")
        problem.headers["WWW-Authenticate"] = 'Basic realm="Caducee", charset="UTF-8"'
        raise problem
    request[_WHO] = outcome.address
    return Caller(outcome.address, outcome.mailbox_id)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def audited(action: str) -> Callable[[Handler], Handler]:
    """Every call leaves one audit event (who, what was asked, the status), refusals included; a
    Problem raised by the handler becomes its problem+json answer."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                resp = await handler(request)
                outcome = str(resp.status)
            except Problem as problem:
                resp = problem.response()
                outcome = f"{problem.status} {problem.detail}"[:500]
            except web.HTTPException:
                raise
            except Exception:  # a defect: still a problem+json answer, and still audited
                log.exception("API %s %s failed", request.method, request.path)
                resp = Problem(500, "Erreur interne", "erreur interne du serveur").response()
                outcome = "500 internal error"
            who = request.get(_WHO) or f"client:{remote(request)}"
            await request.app[RT].audit.record(
                who, action, remote(request), f"{request.method} {request.path_qs}"[:500], outcome
            )
            return resp

        return run

    return wrap


def _rate(request: web.Request, caller: Caller) -> None:
    """At most ``[api] messages_per_minute`` sends per mailbox in any 60 s (429 otherwise)."""
    limit = request.app[RT].settings.api.messages_per_minute
    now = time.monotonic()
    stamps: collections.deque[float] = request.app[RATE][caller.mailbox_id]
    while stamps and stamps[0] <= now - 60:
        stamps.popleft()
    if len(stamps) >= limit:
        problem = Problem(429, "Trop de messages", f"au plus {limit} messages par minute pour cette boîte")
        problem.headers["Retry-After"] = str(max(1, int(60 - (now - stamps[0])) + 1))
        raise problem
    stamps.append(now)


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Submission:
    sender: str
    to: list[str]
    cc: list[str]
    subject: str
    text: str | None
    html: str | None
    attachments: list[Upload]
    documents: list[xdm.CDA] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    software: str = ""
    read_receipt: bool = False  # Disposition-Notification-To: the sender (RFC 8098)
    links: list[str] = field(default_factory=list)  # ids of uploads (``/api/v1/uploads``) to send by link


def _address(value: str, name: str) -> str:
    """An address as SMTP's MAIL/RCPT would take it (``paths.syntax_error``): the API writes no
    header that submission would refuse."""
    why = paths.syntax_error(value) if "," not in value else "one address per entry"
    if why:
        raise Problem(400, "Requête invalide", f"adresse invalide dans {name} ({why}): {value[:100]!r}")
    return value


def _addresses(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in (p.strip() for p in value.split(",")) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise Problem(400, "Requête invalide", f"{name} doit être une liste d'adresses")
    return [_address(v.strip(), name) for v in value]


def _text(value: Any, name: str) -> str | None:
    """A body text: any Unicode text but NUL, other C0 controls than tab/CR/LF/FF, and lone
    surrogates (which no charset can encode)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Problem(400, "Requête invalide", f"{name} doit être une chaîne")
    if any((ord(c) < 32 and c not in "\t\r\n\f") or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise Problem(400, "Requête invalide", f"{name}: caractère de contrôle ou de substitution refusé")
    return value


def _header_text(value: Any, name: str, limit: int) -> str:
    """Text for a header (subject, filename, software): one line of printable characters, so no
    line break Python's ``email`` would refuse (U+2028, U+0085, VT, FF...) and no control."""
    text = _text(value, name) or ""
    if not text.replace("\t", " ").isprintable():
        raise Problem(400, "Requête invalide", f"{name}: une ligne de caractères imprimables attendue")
    if len(text) > limit:
        raise Problem(400, "Requête invalide", f"{name}: au plus {limit} caractères")
    return text


def _documents(items: Any) -> tuple[list[xdm.CDA], list[str]]:
    """The ``documents`` of a request: CDA R2 given as ``text`` (XML) or ``data`` (base64), parsed
    safely (DTD and entities refused), each with an optional ``title`` overriding the CDA's own."""
    if items is None:
        return [], []
    if not isinstance(items, list) or len(items) > MAX_DOCUMENTS:
        raise Problem(400, "Requête invalide", f"documents doit être une liste d'au plus {MAX_DOCUMENTS}")
    docs, titles = [], []
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise Problem(400, "Requête invalide", f"document {n} invalide")
        if isinstance(item.get("text"), str):
            raw = item["text"].encode("utf-8")
        elif isinstance(item.get("data"), str):
            try:
                raw = base64.b64decode(item["data"], validate=True)
            except (binascii.Error, ValueError):
                raise Problem(400, "Requête invalide", f"document {n}: base64 attendu") from None
        else:
            raise Problem(400, "Requête invalide", f"document {n}: text (XML) ou data (base64) attendu")
        try:
            doc = xdm.parse_cda(raw)
        except xdm.XDMError as exc:
            raise Problem(400, "Document refusé", f"document {n}: {exc}", document=n) from None
        title = _header_text(item.get("title"), "title", 500) or doc.title or "Document"
        docs.append(doc)
        titles.append(" ".join(title.split())[:500])
    return docs, titles


def _submission(fields: dict[str, Any], uploads: list[Upload], links: list[str] | None = None) -> Submission:
    sender = fields.get("from")
    if not isinstance(sender, str) or not sender.strip():
        raise Problem(400, "Requête invalide", "from doit être une adresse")
    subject = _header_text(fields.get("subject"), "subject", MAX_SUBJECT)
    sub = Submission(
        _address(sender.strip(), "from"),
        _addresses(fields.get("to"), "to"),
        _addresses(fields.get("cc"), "cc"),
        subject,
        _text(fields.get("text"), "text"),
        _text(fields.get("html"), "html"),
        uploads,
    )
    sub.documents, sub.titles = _documents(fields.get("documents"))
    sub.software = _header_text(fields.get("software"), "software", 200).strip()
    receipt = fields.get("read_receipt", False)
    if isinstance(receipt, str):  # a multipart field
        receipt = {"true": True, "false": False, "1": True, "0": False}.get(receipt.strip().lower(), receipt)
    if not isinstance(receipt, bool):
        raise Problem(400, "Requête invalide", "read_receipt doit être un booléen")
    sub.read_receipt = receipt
    sub.links = list(dict.fromkeys(links or []))
    if not sub.to and not sub.cc:
        raise Problem(400, "Requête invalide", "au moins un destinataire (to ou cc) attendu")
    if sub.text is None and sub.html is None and not uploads and not sub.documents and not sub.links:
        raise Problem(400, "Requête invalide", "text, html ou une pièce jointe attendu")
    return sub


def _json_links(items: Any) -> list[str]:
    """The attachments given as ``{"upload": id}``: files uploaded beforehand, sent by link."""
    if not isinstance(items, list):
        return []
    return [
        item["upload"] for item in items if isinstance(item, dict) and isinstance(item.get("upload"), str)
    ]


def _json_uploads(items: Any) -> list[Upload]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise Problem(400, "Requête invalide", "attachments doit être une liste")
    out = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("upload"), str) and "data" not in item:
            continue  # sent by link (``_json_links``)
        if not isinstance(item, dict) or not isinstance(item.get("data"), str):
            raise Problem(400, "Requête invalide", "pièce jointe invalide")
        try:
            data = base64.b64decode(item["data"], validate=True)
        except (binascii.Error, ValueError):
            raise Problem(400, "Requête invalide", "pièce jointe invalide (base64 attendu)") from None
        out.append(_upload(item.get("filename"), item.get("content_type"), data))
    return out


def _upload(filename: Any, content_type: Any, data: bytes) -> Upload:
    """An attachment: a one-line name, and a leaf media type (RFC 2045 tokens): a multipart or
    message type given as an attachment's type is sent as ``application/octet-stream``, since its
    bytes are not a MIME structure of this message (RFC 2046 §5 forbids base64 for them)."""
    name = filename if isinstance(filename, str) and filename.strip() else "piece-jointe"
    name = _header_text(name, "filename", 200)
    ctype = content_type.split(";", 1)[0].strip().lower() if isinstance(content_type, str) else ""
    maintype, _, subtype = ctype.partition("/")
    if not (_TOKEN.fullmatch(maintype) and _TOKEN.fullmatch(subtype)) or maintype in ("multipart", "message"):
        ctype = "application/octet-stream"
    return Upload(name, ctype, data)


async def _read(request: web.Request) -> Submission:
    limit = request.app[RT].settings.api.max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, "Message trop volumineux", f"au plus {limit} octets")
    try:
        if request.content_type == "application/json":
            # ``read(n)`` returns what has arrived (up to n): a body larger than a socket read needs a loop.
            raw = bytearray()
            while len(raw) <= limit and (block := await request.content.read(limit + 1 - len(raw))):
                raw += block
            if len(raw) > limit:
                raise Problem(413, "Message trop volumineux", f"au plus {limit} octets")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = None
            if not isinstance(body, dict):
                raise Problem(400, "Requête invalide", "objet JSON attendu")
            items = body.get("attachments")
            return _submission(body, _json_uploads(items), _json_links(items))
        if request.content_type == "multipart/form-data":
            return await _multipart(request, limit)
    except web.HTTPRequestEntityTooLarge:
        raise Problem(413, "Message trop volumineux", f"au plus {limit} octets") from None
    except (ValueError, HttpProcessingError) as exc:  # malformed multipart (bad part headers too)
        raise Problem(400, "Requête invalide", f"multipart invalide: {exc}"[:200]) from None
    raise Problem(415, "Type non pris en charge", "application/json ou multipart/form-data attendu")


async def _multipart(request: web.Request, limit: int) -> Submission:
    reader = await request.multipart()
    fields: dict[str, Any] = {}
    uploads: list[Upload] = []
    links: list[str] = []
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise Problem(400, "Requête invalide", "multipart imbriqué non pris en charge")
        data = await part.read(decode=True)
        total += len(data)
        if total > limit:
            raise Problem(413, "Message trop volumineux", f"au plus {limit} octets")
        if part.name == "documents":  # a CDA R2 file: read by the same code as a JSON document
            fields.setdefault("documents", []).append({"data": base64.b64encode(bytes(data)).decode()})
            continue
        if part.name == "attachments" or part.filename is not None:
            # Some clients (aiohttp's, older browsers) percent-encode a non-ASCII filename in quotes.
            try:
                name = urllib.parse.unquote(part.filename, errors="strict") if part.filename else None
            except UnicodeDecodeError:
                raise Problem(400, "Requête invalide", "filename: UTF-8 attendu") from None
            uploads.append(_upload(name, part.headers.get("Content-Type"), bytes(data)))
            continue
        try:
            value = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise Problem(400, "Requête invalide", f"{part.name}: UTF-8 attendu") from None
        if part.name == "upload":
            links.append(value.strip())
        elif part.name in ("to", "cc"):
            fields.setdefault(part.name, []).extend(_addresses(value, part.name))
        elif part.name in ("from", "subject", "text", "html", "software", "read_receipt"):
            fields[part.name] = value
    return _submission(fields, uploads, links)


def build_message(sub: Submission, links: list[LargeFile] | None = None, rt: Runtime | None = None) -> bytes:
    """The RFC 5322 message: text and/or HTML alternatives, then the attachments, then the
    ``IHE_XDM.zip`` of the structured documents with the MSSanté headers that announce it
    (``X-MSS-CODECDA`` per document type code, ``X-MSS-INS``, ``X-MSS-NIL``)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sub.sender
    if sub.to:
        msg["To"] = ", ".join(sub.to)
    if sub.cc:
        msg["Cc"] = ", ".join(sub.cc)
    msg["Subject"] = sub.subject
    if sub.documents:
        for code in dict.fromkeys(d.type_code.header() for d in sub.documents):
            msg["X-MSS-CODECDA"] = code
        msg["X-MSS-INS"] = "O" if any(d.ins for d in sub.documents) else "N"
    if sub.software:
        msg["X-MSS-NIL"] = sub.software
    if sub.read_receipt:
        msg["Disposition-Notification-To"] = sub.sender
    if sub.text is not None:
        msg.set_content(sub.text)
    if sub.html is not None:
        if sub.text is not None:
            msg.add_alternative(sub.html, subtype="html")
        else:
            msg.set_content(sub.html, subtype="html")
    for up in sub.attachments:
        maintype, subtype = up.content_type.split("/", 1)
        msg.add_attachment(up.data, maintype=maintype, subtype=subtype, filename=up.filename)
    if links and rt is not None:
        until = utcnow() + dt.timedelta(seconds=rt.settings.large_files.keep)
        for row in links:
            text = large_files.link_text(rt, row, until)
            msg.add_attachment(text, disposition="inline", headers=[f"{large_files.HEADER}: {row.id}"])
    if sub.documents:
        archive = xdm.build_archive(sub.documents, sub.titles, sub.sender, [*sub.to, *sub.cc])
        if not msg.is_multipart() and msg.get_content_type() == "text/plain" and not msg.get_payload():
            msg.set_content("Documents structurés joints (IHE XDM).")
        msg.add_attachment(archive, maintype="application", subtype="zip", filename=xdm.ARCHIVE_NAME)
    return msg.as_bytes()


async def send_message(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    caller = await _caller(request)
    _rate(request, caller)
    sub = await _read(request)
    addresses = list(dict.fromkeys(a.lower() for a in [*sub.to, *sub.cc]))
    most = min(rt.settings.api.max_recipients, rt.settings.limits.recipients_per_message)
    if len(addresses) > most:
        raise Problem(400, "Trop de destinataires", f"au plus {most} destinataires")
    if not await accounts.may_send_as(rt, caller.mailbox_id, sub.sender):
        raise Problem(403, "Refusé", f"{caller.address} ne peut pas envoyer en tant que {sub.sender}")
    links = await _links(request, caller, sub)
    stored: list[LargeFile] = []
    local = True
    for address in addresses:  # where each goes (policy checked again below with the final size)
        try:
            local &= isinstance(await check_recipient(rt, sub.sender, address, None), LocalTarget)
        except Refusal as refusal:
            raise refusal_problem(refusal, address) from None
    if links and not local:
        raise Problem(
            422, "Refusé", "un fichier envoyé par lien ne peut aller qu'à des destinataires de cet opérateur"
        )
    data = build_message(sub, links, rt)
    written = HeaderView.parse(data)
    for address in addresses:  # one at a time, so that a refusal names its recipient
        try:
            await conversations.check_message(rt, sub.sender, [address], written)
        except Refusal as refusal:
            raise refusal_problem(refusal, address) from None
    try:
        await accounts.check_authors(rt, caller.mailbox_id, caller.address, written)
        data = await complete_message(rt, sub.sender, data)
        if local:  # attachments above [large_files] threshold are kept here and sent by link
            data, stored = await large_files.rewrite(rt, caller.mailbox_id, data, None)
    except Refusal as refusal:
        raise refusal_problem(refusal) from None
    except quota.OverQuota:  # the sender's own storage, for its files sent by link
        raise Problem(413, "Espace de stockage plein", f"{caller.address} : quota dépassé") from None
    try:
        return await _sign_and_commit(request, caller, sub, addresses, data, [*links, *stored])
    finally:  # linked in the commit when it happened; files of a refused message are dropped
        await large_files.discard(rt, [r.id for r in stored])


async def _sign_and_commit(
    request: web.Request,
    caller: Caller,
    sub: Submission,
    addresses: list[str],
    data: bytes,
    links: list[LargeFile],
) -> web.StreamResponse:
    rt = request.app[RT]
    try:
        own = sub.sender.lower() == caller.address.lower()
        data = await sign_message(rt, sub.sender, caller.mailbox_id if own else None, data, addresses)
    except Refusal as refusal:
        raise refusal_problem(refusal) from None
    recipients = []
    for address in addresses:
        try:
            target = await check_recipient(rt, sub.sender, address, len(data))
        except Refusal as refusal:
            raise refusal_problem(refusal, address) from None
        recipients.append(Recipient(target.address, target))
    public_id = os.urandom(16).hex()
    headers = HeaderView.parse(data)
    trace = (
        f"Received: from api ([{remote(request)}])\r\n\tby {rt.settings.server.hostname} (Caducée)"
        f"\r\n\twith HTTP id {public_id};\r\n\t{email.utils.format_datetime(dt.datetime.now(dt.UTC))}\r\n"
    ).encode()

    def record(session: Session, blob_id: int, stored: StoreResult, entry: int | None) -> None:
        large_files.link_rows(
            session, links, addresses, headers.get("Message-ID", ""), rt.settings.large_files.keep
        )
        session.add(
            APIMessage(
                id=public_id,
                mailbox_id=caller.mailbox_id,
                sender=sub.sender,
                message_id=headers.get("Message-ID", "")[:998],
            )
        )
        for r in recipients:
            if isinstance(r.target, LocalTarget):
                ok = r.target.mailbox_id in stored.uids
                state, detail, queued = (
                    ("delivered", "", None) if ok else ("bounced", "452 4.2.2 mailbox full", None)
                )
            else:
                state, detail, queued = "queued", "", entry
            session.add(
                APIRecipient(
                    message_id=public_id,
                    address=r.address,
                    state=state,
                    detail=detail,
                    queue_message_id=queued,
                )
            )

    try:
        result = await commit_message(
            rt,
            rt.queue,
            sub.sender,
            recipients,
            trace + data,
            headers,
            source=f"api:{caller.address}",
            remote_addr=remote(request),
            patients=True,
            on_commit=record,
        )
    except large_files.Conflict as exc:  # a named upload expired (purged) meanwhile: nothing committed
        raise Problem(409, "Envoi indisponible", str(exc)) from None
    if not result.delivered and not result.queued:
        address, refusal = next(iter(result.refused.items()))
        raise refusal_problem(refusal, address)
    return web.json_response({"id": public_id, **await _state(request, caller, public_id)}, status=202)


async def _links(request: web.Request, caller: Caller, sub: Submission) -> list[LargeFile]:
    """The caller's complete uploads the message names (``{"upload": id}``), in order."""
    out = []
    for file_id in sub.links:
        row = await large_files.owned(request.app[RT], caller.mailbox_id, file_id)
        if row is None:
            raise Problem(404, "Introuvable", f"aucun envoi de cette boîte sous l'identifiant {file_id[:40]}")
        if row.state not in ("ready", "sent"):
            raise Problem(409, "Envoi incomplet", f"{row.id} : {row.received} octets reçus sur {row.size}")
        out.append(row)
    return out


async def _state(request: web.Request, caller: Caller, public_id: str) -> dict[str, Any]:
    async with request.app[RT].db.read() as session:
        msg = await session.get(APIMessage, public_id)
        if msg is None or msg.mailbox_id != caller.mailbox_id:
            raise Problem(404, "Introuvable", "aucun message de cette boîte sous cet identifiant")
        rows = (
            await session.execute(
                select(APIRecipient, QueueRecipient)
                .outerjoin(
                    QueueRecipient,
                    (QueueRecipient.message_id == APIRecipient.queue_message_id)
                    & (QueueRecipient.address == APIRecipient.address),
                )
                .where(APIRecipient.message_id == public_id)
                .order_by(APIRecipient.id)
            )
        ).all()
        receipts = await mdn.received(session, public_id)
    out = []
    for r, q in rows:
        item: dict[str, Any] = {"address": r.address, "state": r.state, "detail": r.detail}
        if q is not None and r.state == "queued":
            final = {"failed": "bounced"}.get(q.status, q.status)
            item.update(state=final, detail=q.last_reply, attempts=q.attempts)
            if q.status == "queued":
                item["next_attempt"] = q.next_attempt.isoformat()
                if q.delay_notified_at is not None:  # past [delivery] delay_warning (DELAY DSN)
                    item.update(delayed=True, delay_notified_at=q.delay_notified_at.isoformat())
        if r.address.lower() in receipts:  # read receipts (MDN, RFC 8098) that came back
            item["receipts"] = receipts[r.address.lower()]
        out.append(item)
    return {"from": msg.sender, "created_at": msg.created_at.isoformat(), "recipients": out}


async def message_state(request: web.Request) -> web.StreamResponse:
    caller = await _caller(request)
    public_id = request.match_info["id"]
    return web.json_response({"id": public_id, **await _state(request, caller, public_id)})


LIST_LIMIT = 100
MAX_DOCUMENTS = 20
MAX_SUBJECT = 998  # RFC 5322 §2.1.1's line limit; folding makes longer subjects legal but unusual
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,127}")  # RFC 2045 token, of a bounded length


async def _xdm_reports(rt: Runtime, blob_id: int, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ``IHE_XDM.zip`` attached to a message, checked and read (refused ones flagged)."""
    parts = [p for p in service.attachment_parts(meta) if xdm.is_archive(p[0].filename)]
    if not parts:
        return []
    raw = await rt.store.read_blob(blob_id)
    out = []
    for info, path, node in parts:
        data = mime.binary_section(raw, meta, path)
        body = raw[node["part"][2] : node["part"][3]] if data is None else data
        out.append(xdm.read_archive(body, rt.settings.xdm, info.filename).as_dict())
    return out


async def _inbox_message(request: web.Request, caller: Caller) -> tuple[int, dict[str, Any]] | None:
    """(blob id, meta) of INBOX message ``uid`` of the caller's own mailbox."""
    uid = _uid(request.match_info["uid"])
    if uid is None:
        return None
    async with request.app[RT].db.read() as session:
        blob_id = (
            await session.execute(
                select(Message.blob_id)
                .join(Folder, Folder.id == Message.folder_id)
                .where(Folder.mailbox_id == caller.mailbox_id, Folder.name == "INBOX", Message.uid == uid)
            )
        ).scalar_one_or_none()
    if blob_id is None:
        return None
    return blob_id, await request.app[RT].store.blob_meta(blob_id)


def _uid(text: str) -> int | None:
    """A UID as IMAP bounds it (RFC 9051 §2.3.1.1: 32 bits), or None: a larger number is no
    message, not a database error."""
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if value < 2**32 else None


def _own(request: web.Request, caller: Caller) -> None:
    if request.match_info["address"].strip().lower() != caller.address.lower():
        raise Problem(403, "Refusé", f"{caller.address} ne lit que sa propre boîte")


async def list_messages(request: web.Request) -> web.StreamResponse:
    """What arrived in INBOX after the ``since`` cursor (a UID), oldest first, at most 100 per call."""
    caller = await _caller(request)
    _own(request, caller)
    since = _uid(request.query.get("since", "0"))
    if since is None:
        raise Problem(400, "Requête invalide", "since doit être un curseur rendu par cette liste")
    rt = request.app[RT]
    async with rt.db.read() as session:
        rows = (
            await session.execute(
                select(Message.uid, Message.blob_id, Message.internal_date, Message.size)
                .join(Folder, Folder.id == Message.folder_id)
                .where(Folder.mailbox_id == caller.mailbox_id, Folder.name == "INBOX", Message.uid > since)
                .order_by(Message.uid)
                .limit(LIST_LIMIT)
            )
        ).all()
    metas = await rt.store.blob_metas(r.blob_id for r in rows)
    out = []
    for r in rows:
        meta = metas[r.blob_id]
        fields = meta.get("headers", {})
        out.append(
            {
                "uid": r.uid,
                "received_at": r.internal_date.isoformat(),
                "size": r.size,
                "from": fields.get("from") or "",
                "subject": fields.get("subject") or "",
                "message_id": fields.get("message_id") or "",
                "attachments": [info.as_dict() for info, _p, _n in service.attachment_parts(meta)],
                "xdm": await _xdm_reports(rt, r.blob_id, meta),
            }
        )
    await rt.audit.read(caller.address, remote(request), "api", f"INBOX list since {since}")
    return web.json_response({"messages": out, "cursor": str(rows[-1].uid if rows else since)})


async def raw_message(request: web.Request) -> web.StreamResponse:
    caller = await _caller(request)
    _own(request, caller)
    found = await _inbox_message(request, caller)
    if found is None:
        raise Problem(404, "Introuvable", "aucun message sous cet identifiant")
    raw = await request.app[RT].store.read_blob(found[0])
    await request.app[RT].audit.read(
        caller.address, remote(request), "api", f"INBOX message {request.match_info['uid']}"
    )
    return _download(
        request, service.Download(f"message-{request.match_info['uid']}.eml", "message/rfc822", raw)
    )


async def message_attachment(request: web.Request) -> web.StreamResponse:
    caller = await _caller(request)
    _own(request, caller)
    found = await _inbox_message(request, caller)
    parts = service.attachment_parts(found[1]) if found else []
    wanted = [p for p in parts if str(p[0].n) == request.match_info["n"]]
    if found is None or not wanted:
        raise Problem(404, "Introuvable", "aucune pièce jointe sous ce numéro")
    info, path, node = wanted[0]
    rt = request.app[RT]
    raw = await rt.store.read_blob(found[0])
    data = mime.binary_section(raw, found[1], path)
    await rt.audit.read(
        caller.address,
        remote(request),
        "api download",
        f"INBOX message {request.match_info['uid']} attachment {info.n}",
    )
    body = raw[node["part"][2] : node["part"][3]] if data is None else data
    return _download(request, service.Download(info.filename, info.content_type, body))


def _download(request: web.Request, d: service.Download) -> web.Response:
    """A download, or the byte range it asks (``http.byte_range``); 416 as a problem like any error."""
    try:
        return ranged(request, download_response(d), d.data)
    except Unsatisfiable as exc:
        problem = Problem(
            416, "Plage non satisfaisable", f"{len(d.data)} octets, aucun dans la plage demandée"
        )
        problem.headers["Content-Range"] = exc.content_range
        raise problem from None


def setup(app: web.Application) -> None:
    app[RATE] = collections.defaultdict(collections.deque)
    app.router.add_post("/api/v1/messages", audited("api-send")(send_message))
    app.router.add_get("/api/v1/messages/{id}", audited("api-read")(message_state))
    mailbox = "/api/v1/mailboxes/{address}/messages"
    app.router.add_get(mailbox, audited("api-read")(list_messages))
    app.router.add_get(mailbox + "/{uid}/raw", audited("api-read")(raw_message))
    app.router.add_get(mailbox + "/{uid}/attachments/{n}", audited("api-read")(message_attachment))
