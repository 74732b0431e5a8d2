"""CATENATE (RFC 4469): build an APPENDed message from literals and IMAP URLs (RFC 5092).

Only URLs naming a message, or a part of one, in the authenticated user's own mailboxes are
followed: the absolute-path form ``/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]``
(RFC 4469 §3: relative to ``imap://user@server/``), or the same path under ``imap://user@host/`` when
user and host are this session's. Anything else (another user or server, URLAUTH, a missing message
or body part) is refused with ``NO [BADURL url]`` (§4.1), before anything is stored.

Each referenced message is read once, however many URLs name it; the result is bounded by
``[limits] message_size`` (``NO [TOOBIG]``, §4.2), checked as the pieces are gathered.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from mailserver.imap.base import Fail
from mailserver.store import mime
from mailserver.store.store import FolderNotFound, MessageInfo

if TYPE_CHECKING:
    from mailserver.imap.session import Session

__all__ = ["MessageURL", "catenate", "parse_url"]

_ABSOLUTE = re.compile(
    r"imap://(?P<user>[^@/;]+)(?:;AUTH=[^@/]*)?@(?P<host>[^/:]+)(?::\d+)?(?P<path>/.*)", re.I
)
_PATH = re.compile(
    r"/(?P<mailbox>[^;?#]+?)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9]\d{0,9}))?/;UID=(?P<uid>[1-9]\d{0,9})"
    r"(?:/;SECTION=(?P<section>[^/?#]+))?"
    r"(?:/;PARTIAL=(?P<offset>\d{1,10})(?:\.(?P<length>[1-9]\d{0,9}))?)?",
    re.I,
)
# RFC 9051 §6.4.5 section-spec; "MIME" needs a part, a text after a part follows a ".".
_SECTION = re.compile(
    r"(?P<part>[1-9]\d{0,8}(?:\.[1-9]\d{0,8})*)?"
    r"(?:(?(part)\.)(?P<text>HEADER\.FIELDS(?:\.NOT)? \((?P<fields>[^()]*)\)|HEADER|TEXT|MIME))?",
    re.I,
)


@dataclass(frozen=True, slots=True)
class MessageURL:
    """A parsed IMAP message or message part URL (RFC 5092 §3 ``imessagepart``)."""

    url: str
    mailbox: str
    uidvalidity: int | None
    uid: int
    part: tuple[int, ...]
    text: str | None
    fields: tuple[str, ...]
    partial: tuple[int, int | None] | None


def _bad(url: str, why: str) -> Fail:
    # url-resp-text (RFC 4469 §5) is any TEXT-CHAR but "]".
    return Fail("NO", f"CATENATE {why}", "BADURL " + url.replace("]", "%5D"))


def parse_url(url: str, user: str, host: str) -> MessageURL:
    """The URL as a :class:`MessageURL`, or a ``NO [BADURL]`` :class:`Fail` for anything else."""
    path = url
    if not url.startswith("/"):
        absolute = _ABSOLUTE.fullmatch(url)
        if absolute is None:
            raise _bad(url, "accepts only URLs to this server's messages")
        if unquote(absolute["user"]).lower() != user.lower() or absolute["host"].lower() != host.lower():
            raise _bad(url, "URL names another user or server")
        path = absolute["path"]
    m = _PATH.fullmatch(path)
    if m is None:
        raise _bad(url, "URL is not a message URL")
    try:  # RFC 5092 §3: %-escaped UTF-8
        mailbox = unquote(m["mailbox"], errors="strict")
        section = _SECTION.fullmatch(unquote(m["section"] or "", errors="strict"))
    except UnicodeDecodeError:
        raise _bad(url, "URL is not %-escaped UTF-8") from None
    if section is None or ((section["text"] or "").upper() == "MIME" and not section["part"]):
        raise _bad(url, "URL has an invalid section")
    part = tuple(int(n) for n in section["part"].split(".")) if section["part"] else ()
    text = section["text"].upper().split(" ", 1)[0] if section["text"] else None
    offset, length = m["offset"], m["length"]
    return MessageURL(
        url=url,
        mailbox="INBOX" if mailbox.upper() == "INBOX" else mailbox,
        uidvalidity=int(m["uidvalidity"]) if m["uidvalidity"] else None,
        uid=int(m["uid"]),
        part=part,
        text=text,
        fields=tuple((section["fields"] or "").split()),
        partial=(int(offset), int(length) if length else None) if offset is not None else None,
    )


async def _locate(s: Session, urls: Sequence[MessageURL]) -> dict[MessageURL, MessageInfo]:
    """Find every URL's message (one folder and one message lookup per distinct mailbox)."""
    assert s.mailbox_id is not None
    by_mailbox: dict[str, list[MessageURL]] = {}
    for url in urls:
        by_mailbox.setdefault(url.mailbox, []).append(url)
    found: dict[MessageURL, MessageInfo] = {}
    for name, named in by_mailbox.items():
        try:
            folder = await s.rt.store.folder(s.mailbox_id, name)
        except FolderNotFound:
            raise _bad(named[0].url, "URL names no such mailbox") from None
        messages = {m.uid: m for m in await s.rt.store.messages(folder.id, [u.uid for u in named])}
        for url in named:
            if url.uidvalidity is not None and url.uidvalidity != folder.uidvalidity:
                raise _bad(url.url, "URL has a stale UIDVALIDITY")
            if url.uid not in messages:
                raise _bad(url.url, "URL names no such message")
            found[url] = messages[url.uid]
    return found


def _extract(raw: bytes, meta: dict, url: MessageURL) -> bytes:
    """BODY[section]<partial> of one message, as FETCH would return it (RFC 4469 §3)."""
    if not mime.section_exists(meta, list(url.part), url.text):
        raise _bad(url.url, "URL names no such body part")
    data = mime.section(
        raw, meta, list(url.part), url.text, list(url.fields), url.text == "HEADER.FIELDS.NOT"
    )
    if url.partial is not None:
        offset, length = url.partial
        data = data[offset : None if length is None else offset + length]
    return data


async def catenate(s: Session, parts: Sequence[bytes | str], limit: int) -> bytes:
    """The message made of ``parts`` (literal bytes, or URL strings) in order, at most ``limit``
    octets; refusals are ``NO [BADURL]`` / ``NO [TOOBIG]``."""
    try:
        urls = [parse_url(p, s.address, s.rt.settings.server.hostname) for p in parts if isinstance(p, str)]
        uses = Counter(urls)
        located = await _locate(s, list(uses))
    except Fail as exc:  # A URL to somebody else's data is worth a trace.
        await s.rt.audit.record(s.address, "catenate-refused", s.remote, f"imap APPEND {exc.code}", exc.text)
        raise
    by_blob: dict[int, list[MessageURL]] = {}
    for url, message in located.items():
        by_blob.setdefault(message.blob_id, []).append(url)
    pieces: dict[MessageURL, bytes] = {}
    total = sum(len(p) for p in parts if isinstance(p, bytes))
    for blob_id, named in by_blob.items():
        if total > limit:
            break
        raw = await s.rt.store.read_blob(blob_id)
        meta = await s.rt.store.blob_meta(blob_id)
        for url in named:
            pieces[url] = _extract(raw, meta, url)
            total += len(pieces[url]) * uses[url]
    if total > limit:
        raise Fail("NO", f"catenated message larger than APPENDLIMIT {limit}", "TOOBIG")
    out = iter(urls)
    return b"".join(p if isinstance(p, bytes) else pieces[next(out)] for p in parts)
