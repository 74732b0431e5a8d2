"""Sent copies (issue 16, ``[submission] save_sent``): smtplib submits, imaplib reads the \\Sent
folders; a member sending as the ORG leaves a copy in both, and the client's own APPEND of the same
Message-ID is not stored a second time."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailserver import accounts
from mailserver.store.store import Viewer
from tests.identity.conftest import DURAND, MARTIN, PASSWORD, SECRETARIAT, Env, start_env
from tests.identity.provider import Provider


def message(msgid: str, sender: str = SECRETARIAT) -> bytes:
    return (
        f"From: {sender}\r\nTo: {MARTIN}\r\nSubject: réponse du service\r\nMessage-ID: <{msgid}>\r\n"
        "\r\nBonjour.\r\n"
    ).encode()


def submit(env: Env, login: str, sender: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", env.ports["submission"], timeout=10) as c:
        c.starttls(context=env.client_context())
        c.login(login, PASSWORD)
        c.sendmail(sender, [MARTIN], data)


def sent_ids(env: Env, login: str) -> list[bytes]:
    """The Message-ID lines of ``login``'s Sent folder, over IMAPS."""
    with imaplib.IMAP4_SSL(
        "127.0.0.1", env.ports["imaps"], ssl_context=env.client_context(), timeout=10
    ) as c:
        c.login(login, PASSWORD)
        c.select("Sent", readonly=True)
        _typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        return [part[1].strip() for part in data if isinstance(part, tuple)]


def append_sent(env: Env, login: str, data: bytes) -> bytes:
    """The client's own copy, as Thunderbird keeps one: the APPENDUID response code."""
    with imaplib.IMAP4_SSL(
        "127.0.0.1", env.ports["imaps"], ssl_context=env.client_context(), timeout=10
    ) as c:
        c.login(login, PASSWORD)
        typ, data_ = c.append("Sent", "(\\Seen)", None, data)
        assert typ == "OK", data_
        return data_[0]


async def make_env(tmp_path: Path, pki: Any, provider: Provider, save: bool) -> Env:
    url = f"sqlite+aiosqlite:///{tmp_path}/sent.db"
    return await start_env(tmp_path, url, pki, provider, submission={"save_sent": save})


@pytest.fixture
async def saving(tmp_path: Path, pki: Any, provider: Provider) -> AsyncIterator[Env]:
    e = await make_env(tmp_path, pki, provider, True)
    try:
        await accounts.add_member(e.rt, SECRETARIAT, DURAND, "lrp")
        yield e
    finally:
        await e.close()


async def test_member_sending_as_org_keeps_a_copy_in_both_sent_folders(saving: Env) -> None:
    await asyncio.to_thread(submit, saving, DURAND, SECRETARIAT, message("one@client.test"))
    # The 250 came after the copies were stored: read at once.
    assert await asyncio.to_thread(sent_ids, saving, DURAND) == [b"Message-ID: <one@client.test>"]
    assert await asyncio.to_thread(sent_ids, saving, SECRETARIAT) == [b"Message-ID: <one@client.test>"]
    assert await asyncio.to_thread(sent_ids, saving, MARTIN) == []
    # In the ORG's Sent the copy is read by the member who sent it, not by the other members.
    org, durand = (
        await accounts.get_mailbox(saving.rt, SECRETARIAT),
        await accounts.get_mailbox(saving.rt, DURAND),
    )
    other = await accounts.get_mailbox(saving.rt, MARTIN)
    folder = await saving.rt.store.folder(org.id, "Sent")
    seen = frozenset({"\\Seen"})
    _info, (by_sender,) = await saving.rt.store.snapshot(folder.id, Viewer(durand.id, seen))
    _info, (by_other,) = await saving.rt.store.snapshot(folder.id, Viewer(other.id, seen))
    assert "\\Seen" in by_sender.flags and "\\Seen" not in by_other.flags


async def test_client_append_after_submission_is_not_a_second_copy(saving: Env) -> None:
    data = message("two@client.test", DURAND)
    await asyncio.to_thread(submit, saving, DURAND, DURAND, data)
    code = await asyncio.to_thread(append_sent, saving, DURAND, data)
    assert code.startswith(b"[APPENDUID ") and code.split(b"]")[0].endswith(b" 1")
    assert await asyncio.to_thread(sent_ids, saving, DURAND) == [b"Message-ID: <two@client.test>"]
    assert await asyncio.to_thread(sent_ids, saving, SECRETARIAT) == []  # sent as himself
    other = message("three@client.test", DURAND)  # another message is stored as usual
    assert (await asyncio.to_thread(append_sent, saving, DURAND, other)).split(b"]")[0].endswith(b" 2")
    assert len(await asyncio.to_thread(sent_ids, saving, DURAND)) == 2


async def test_append_before_submission_is_not_copied_again(saving: Env) -> None:
    data = message("four@client.test", DURAND)
    await asyncio.to_thread(append_sent, saving, DURAND, data)
    await asyncio.to_thread(submit, saving, DURAND, DURAND, data)
    assert await asyncio.to_thread(sent_ids, saving, DURAND) == [b"Message-ID: <four@client.test>"]


def subjects(env: Env, login: str) -> list[bytes]:
    with imaplib.IMAP4_SSL(
        "127.0.0.1", env.ports["imaps"], ssl_context=env.client_context(), timeout=10
    ) as c:
        c.login(login, PASSWORD)
        c.select("Sent", readonly=True)
        _typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return sorted(part[1].strip() for part in data if isinstance(part, tuple))


async def test_a_reused_message_id_hides_no_message(saving: Env) -> None:
    """Only a copy of the same message stands for the sent one: a different message that reuses its
    Message-ID (put in the ORG's Sent beforehand, or APPENDed afterwards) is kept beside it."""
    forged = message("five@client.test").replace("réponse du service".encode(), b"FORGED")
    await asyncio.to_thread(append_sent, saving, SECRETARIAT, forged)
    await asyncio.to_thread(submit, saving, DURAND, SECRETARIAT, message("five@client.test"))
    assert await asyncio.to_thread(subjects, saving, SECRETARIAT) == [
        b"Subject: FORGED",
        "Subject: réponse du service".encode(),
    ]
    other = message("five@client.test").replace(b"Bonjour.", b"Un autre texte.")
    code = await asyncio.to_thread(append_sent, saving, DURAND, other)
    assert code.split(b"]")[0].endswith(b" 2")  # stored, not "already kept by submission"


async def test_from_field_as_org_keeps_a_copy_in_its_sent(saving: Env) -> None:
    """MAIL FROM the member, From: the ORG (allowed by the ``p`` right): the team sees it too."""
    await asyncio.to_thread(submit, saving, DURAND, DURAND, message("six@client.test"))
    assert await asyncio.to_thread(sent_ids, saving, DURAND) == [b"Message-ID: <six@client.test>"]
    assert await asyncio.to_thread(sent_ids, saving, SECRETARIAT) == [b"Message-ID: <six@client.test>"]


async def test_no_copy_unless_asked(tmp_path: Path, pki: Any, provider: Provider) -> None:
    env = await make_env(tmp_path, pki, provider, False)
    try:
        data = message("five@client.test", MARTIN)
        await asyncio.to_thread(submit, env, MARTIN, MARTIN, data)
        assert await asyncio.to_thread(sent_ids, env, MARTIN) == []
        await asyncio.to_thread(append_sent, env, MARTIN, data)
        await asyncio.to_thread(append_sent, env, MARTIN, data)  # without save_sent, APPEND is APPEND
        assert len(await asyncio.to_thread(sent_ids, env, MARTIN)) == 2
    finally:
        await env.close()


async def test_membership_and_sent_copies_on_both_engines(
    tmp_path: Path, db_url: str, pki: Any, provider: Provider
) -> None:
    env = await start_env(tmp_path, db_url, pki, provider, submission={"save_sent": True})
    try:
        await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lrp")
        assert [m.rights for m in await accounts.list_members(env.rt, SECRETARIAT)] == ["lrp", "lrswipkxte"]
        data = message("six@client.test")
        await asyncio.to_thread(submit, env, DURAND, SECRETARIAT, data)
        await asyncio.to_thread(append_sent, env, SECRETARIAT, data)  # the ORG's own software, same copy
        assert await asyncio.to_thread(sent_ids, env, SECRETARIAT) == [b"Message-ID: <six@client.test>"]
        sent = (await env.audit("send"))[-1]
        assert sent.actor == DURAND and sent.request.endswith(f"as member of {SECRETARIAT}")
        await accounts.remove_member(env.rt, SECRETARIAT, DURAND)
        with pytest.raises(smtplib.SMTPSenderRefused):
            await asyncio.to_thread(submit, env, DURAND, SECRETARIAT, message("seven@client.test"))
    finally:
        await env.close()
