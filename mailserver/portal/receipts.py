"""Read receipts in the patient portal (RFC 8098): the portal asks, the patient decides, once.

A message of the professional that asks for a receipt (``mdn.requested``: ``Disposition-Notification-To``
naming its author) shows, under it, the question "send a read receipt?" (RFC 8098 §2.1: a user agent
must not send one without the user's consent). "Oui" sends a ``displayed`` MDN
(``manual-action/MDN-sent-manually``) from the patient's address with a null envelope sender through
the ordinary delivery path (a local mailbox, or a peer of the trust space through the outbound queue);
"Non" records the refusal. Either answer is one ``mdn_decision`` row per mailbox and message (its
Message-ID), written in the very transaction that stores or queues the MDN: a receipt leaves at most
once, and a declined message is never asked about again. Both are audited (``mdn-sent``,
``mdn-declined``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailserver import mdn
from mailserver.conversation_models import Conversation, ConversationMessage
from mailserver.db.models import Folder, Message, utcnow
from mailserver.delivery import Delivery, EnqueueHook
from mailserver.headers import HeaderView
from mailserver.mdn_models import MDNDecision
from mailserver.policy import LocalTarget, Refusal, route_recipient
from mailserver.portal import service
from mailserver.portal.http import ENQUEUE, RT, csrf_ok, current_session, remote, row_id
from mailserver.runtime import Runtime


class _Decided(Exception):
    """The patient already answered for this message (another tab, a double click)."""


@dataclass(frozen=True)
class Asked:
    """One message's receipt request as the page shows it: ``state`` is ``ask``, ``sent`` or
    ``declined``."""

    state: str
    to: str


@dataclass(frozen=True)
class _Found:
    conversation: str
    blob_id: int
    request: mdn.Request
    raw: bytes

    @property
    def key(self) -> str:
        return self.request.message_id[:998] or f"blob:{self.blob_id}"


async def _find(rt: Runtime, mailbox_id: int, message_id: int) -> _Found | None:
    """The professional's message ``message_id`` of one of the patient's conversations, still in
    their mailbox, when it asks for a receipt."""
    async with rt.db.read() as session:
        row = (
            await session.execute(
                select(ConversationMessage.blob_id, Conversation.public_id)
                .join(Conversation, Conversation.id == ConversationMessage.conversation_id)
                .where(
                    ConversationMessage.id == message_id,
                    ConversationMessage.direction == "in",
                    ConversationMessage.kind != "notice",
                    Conversation.patient_mailbox_id == mailbox_id,
                )
            )
        ).first()
        if row is None or row.blob_id is None:
            return None
        held = (
            await session.execute(
                select(Message.id)
                .join(Folder, Folder.id == Message.folder_id)
                .where(Folder.mailbox_id == mailbox_id, Message.blob_id == row.blob_id)
                .limit(1)
            )
        ).first()
    if held is None:
        return None
    raw = await rt.store.read_blob(row.blob_id)
    request = mdn.requested(HeaderView.parse(raw))
    return None if request is None else _Found(row.public_id, row.blob_id, request, raw)


async def states(rt: Runtime, mailbox_id: int, messages: Iterable[service.MessageView]) -> dict[int, Asked]:
    """For the conversation page: the messages shown that ask for a receipt, with the patient's answer."""
    found = {}
    for m in messages:
        if m.direction == "in" and m.kind != "notice":
            hit = await _find(rt, mailbox_id, m.id)
            if hit is not None:
                found[m.id] = hit
    if not found:
        return {}
    async with rt.db.read() as session:
        decided = dict(
            (
                await session.execute(
                    select(MDNDecision.message_key, MDNDecision.decision).where(
                        MDNDecision.mailbox_id == mailbox_id,
                        MDNDecision.message_key.in_([f.key for f in found.values()]),
                    )
                )
            ).all()
        )
    return {mid: Asked(decided.get(f.key, "ask"), f.request.to) for mid, f in found.items()}


def _decide(session: Session, mailbox_id: int, key: str, decision: str) -> None:
    """Record the answer, or raise _Decided when there already is one (nothing is sent twice)."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(MDNDecision).values(
        mailbox_id=mailbox_id, message_key=key, decision=decision, decided_at=utcnow()
    )
    if not session.execute(stmt.on_conflict_do_nothing()).rowcount:
        raise _Decided


async def answer(
    rt: Runtime,
    info: service.SessionInfo,
    message_id: int,
    send: bool,
    remote_addr: str,
    enqueue: EnqueueHook | None,
) -> str:
    """The patient's answer for message ``message_id``; returns the conversation's public id."""
    found = await _find(rt, info.mailbox_id, message_id)
    if found is None:
        raise service.PortalError(404, "Aucun accusé de lecture n'est demandé pour ce message.")
    key = found.key
    if not send:
        try:
            await rt.db.run_write(lambda session: _decide(session, info.mailbox_id, key, "declined"))
        except _Decided:
            return found.conversation
        await rt.audit.record(info.address, "mdn-declined", remote_addr, "portal", f"message {key}"[:500])
        return found.conversation
    try:
        async with rt.db.read() as session:
            target = await route_recipient(session, found.request.to, authenticated=True)
    except Refusal as refusal:
        await rt.audit.record(info.address, "mdn-refused", remote_addr, f"message {key}"[:500], refusal.smtp)
        raise service.PortalError(
            422, "L'accusé de lecture ne peut pas être envoyé à cette adresse."
        ) from None
    data = mdn.build(rt.settings.server.hostname, info.address, found.request, found.raw)
    delivery = Delivery(
        rt,
        "",  # RFC 8098 §3: the MDN's envelope sender is null
        source="portal-mdn",
        remote_addr=remote_addr,
        enqueue=enqueue,
        on_commit=lambda session, *_: _decide(session, info.mailbox_id, key, "sent"),
    )
    try:
        if isinstance(target, LocalTarget):
            delivery.add_local(target)
        else:
            delivery.add_remote(target, {"notify": "NEVER"})
        await delivery.body(data)
        result = await delivery.commit()
    except _Decided:
        await delivery.abort()
        return found.conversation
    except BaseException:
        await delivery.abort()
        raise
    if not result.delivered and not result.queued:
        raise service.PortalError(503, "L'accusé de lecture n'a pas pu être remis ; réessayez plus tard.")
    if result.queued:
        rt.queue.wake()
    await rt.audit.record(
        info.address, "mdn-sent", remote_addr, f"message {key}"[:500], f"displayed to <{found.request.to}>"
    )
    return found.conversation


async def receipt_post(request: web.Request) -> web.StreamResponse:
    from mailserver.portal.web import render  # the page renderer (web also mounts this route)

    rt = request.app[RT]
    info = await current_session(request)
    if info is None:
        raise web.HTTPSeeOther("/connexion")
    form = await request.post()
    if not csrf_ok(info.csrf, form.get("csrf")):
        raise web.HTTPForbidden(text="Jeton CSRF invalide.")
    choice = form.get("accuse")
    try:
        message_id = row_id(request.match_info["mid"])
    except ValueError:
        raise web.HTTPNotFound() from None
    if choice not in ("oui", "non"):
        return render(request, "error.html", 400, session=info, error="Réponse attendue : oui ou non.")
    try:
        public_id = await answer(rt, info, message_id, choice == "oui", remote(request), request.app[ENQUEUE])
    except service.PortalError as exc:
        return render(request, "error.html", exc.status, session=info, error=exc.message)
    raise web.HTTPSeeOther(f"/conversations/{public_id}#m-{message_id}")


def setup(app: web.Application) -> None:
    app.router.add_post("/messages/{mid}/accuse-lecture", receipt_post)
