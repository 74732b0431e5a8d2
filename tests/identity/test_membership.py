"""Membership of ORG/CAB mailboxes (issue 16): RFC 4314 rights decide who opens a shared mailbox with
their own token (the authorization identity) and who sends as it (``p``); the audit names both.

On SQLite and PostgreSQL (``env`` below), but for the refusals ``add_member`` makes before writing."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import imaplib
import smtplib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aioimaplib
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from mailserver import accounts
from mailserver.accounts import AccountError
from mailserver.db import migrate
from mailserver.imap.protocol import mutf7
from tests.identity.conftest import (
    CABINET,
    DURAND,
    DURAND_ID,
    MARTIN,
    MARTIN_ID,
    PASSWORD,
    SECRETARIAT,
    Env,
    start_env,
)
from tests.identity.provider import Provider, oauthbearer
from tests.identity.test_bearer import bearer_imap

MESSAGE = "From: {sender}\r\nTo: {to}\r\nSubject: membre\r\n\r\nBonjour.\r\n"


@pytest.fixture
async def env(tmp_path: Path, db_url: str, pki: Any, provider: Provider) -> AsyncIterator[Env]:
    """The listeners on SQLite and on PostgreSQL (removal and rights re-read across sessions, IDLE
    woken through NOTIFY)."""
    e = await start_env(tmp_path, db_url, pki, provider)
    try:
        yield e
    finally:
        await e.close()


@pytest.fixture
async def sqlite_env(tmp_path: Path, pki: Any, provider: Provider) -> AsyncIterator[Env]:
    """Checks made before anything is written: one engine is enough."""
    e = await start_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/identity.db", pki, provider)
    try:
        yield e
    finally:
        await e.close()


def submit(port: int, ctx: ssl.SSLContext, login: str, sender: str, to: str) -> tuple[int, bytes]:
    """smtplib over STARTTLS: AUTH PLAIN as ``login``, then MAIL FROM and From both ``sender``."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.starttls(context=ctx)
        c.login(login, PASSWORD)
        try:
            c.sendmail(sender, [to], MESSAGE.format(sender=sender, to=to).encode())
        except smtplib.SMTPSenderRefused as exc:
            return exc.smtp_code, exc.smtp_error
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
        return 250, b""


async def test_members_are_listed_with_canonical_rights(env: Env) -> None:
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "rl")
    members = await accounts.list_members(env.rt, SECRETARIAT)
    assert [(m.member, m.rights) for m in members] == [(DURAND, "lr"), (MARTIN, "lrswipkxte")]
    assert {m.org for m in await accounts.list_members(env.rt)} == {SECRETARIAT, CABINET}


@pytest.mark.parametrize(
    ("org", "person", "rights", "why"),
    [
        (DURAND, MARTIN, "lr", "is not an ORG or CAB mailbox"),
        (SECRETARIAT, CABINET, "lr", "members are people's mailboxes"),
        (SECRETARIAT, DURAND, "lrz", "unknown right(s) 'z'"),
        (SECRETARIAT, DURAND, "", "no rights given"),
    ],
)
async def test_refused_memberships(sqlite_env: Env, org: str, person: str, rights: str, why: str) -> None:
    with pytest.raises(AccountError, match=why.replace("(", r"\(").replace(")", r"\)")):
        await accounts.add_member(sqlite_env.rt, org, person, rights)


async def test_a_patient_is_never_a_member(env: Env) -> None:
    """A patient's mailbox would read the service's mail over IMAP: refused by the CLI's function and
    by SETACL alike (both call ``accounts.add_member``)."""
    await accounts.add_domain(env.rt, "patient.a.mssante.test", patients=True)
    patient = "262112b82955335@patient.a.mssante.test"
    await accounts.add_mailbox(env.rt, patient, "PAT", password=PASSWORD)
    with pytest.raises(AccountError, match="is a PAT mailbox"):
        await accounts.add_member(env.rt, SECRETARIAT, patient, "lr")

    def setacl() -> tuple[str, list[bytes]]:
        with imaplib.IMAP4_SSL("127.0.0.1", env.ports["imaps"], ssl_context=env.client_context()) as c:
            c.login(SECRETARIAT, PASSWORD)
            return c.setacl("INBOX", patient, "lr")

    typ, data = await asyncio.to_thread(setacl)
    assert typ == "NO" and b"PAT mailbox" in data[0]
    assert [m.member for m in await accounts.list_members(env.rt, SECRETARIAT)] == [MARTIN]


async def test_send_as_follows_the_post_right(env: Env) -> None:
    port, ctx = env.ports["submission"], env.client_context()
    assert (await asyncio.to_thread(submit, port, ctx, DURAND, SECRETARIAT, MARTIN))[0] == 550
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lr")  # reading is not sending
    code, text = await asyncio.to_thread(submit, port, ctx, DURAND, SECRETARIAT, MARTIN)
    assert code == 550 and b"may send as" in text
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lrp")
    assert (await asyncio.to_thread(submit, port, ctx, DURAND, SECRETARIAT, MARTIN))[0] == 250
    sent = (await env.audit("send"))[-1]
    assert sent.actor == DURAND and sent.request.endswith(f" as member of {SECRETARIAT}")
    await accounts.remove_member(env.rt, SECRETARIAT, DURAND)
    assert (await asyncio.to_thread(submit, port, ctx, DURAND, SECRETARIAT, MARTIN))[0] == 550
    with pytest.raises(AccountError, match="is not a member"):
        await accounts.remove_member(env.rt, SECRETARIAT, DURAND)


async def test_header_from_follows_membership(env: Env) -> None:
    """MAIL FROM as oneself, From: as the ORG: the header is checked against the same membership."""
    port, ctx = env.ports["submission"], env.client_context()

    def header_only() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.starttls(context=ctx)
            c.login(DURAND, PASSWORD)
            try:
                c.sendmail(DURAND, [MARTIN], MESSAGE.format(sender=SECRETARIAT, to=MARTIN).encode())
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error
            return 250, b""

    assert (await asyncio.to_thread(header_only))[0] == 550
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "p")
    assert (await asyncio.to_thread(header_only))[0] == 250


async def test_authzid_needs_the_read_right(env: Env) -> None:
    token = env.provider.token(DURAND_ID)
    assert (await bearer_imap(env, token, SECRETARIAT))[-1].startswith(b"a1 NO")
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "p")
    assert (await bearer_imap(env, token, SECRETARIAT))[-1].startswith(b"a1 NO")
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lr")
    assert (await bearer_imap(env, token, SECRETARIAT))[-1].startswith(b"a1 OK")
    login = (await env.audit("login"))[-1]
    assert login.actor == SECRETARIAT and login.request.endswith(
        f"person {DURAND_ID} {DURAND} as member of {SECRETARIAT})"
    )


def opened_as_member(port: int, ctx: ssl.SSLContext, token: str, org: str) -> list[tuple[str, list[bytes]]]:
    """imaplib: a bearer token naming ``org`` as authorization identity, then what that session may do."""
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10)
    try:
        conn.authenticate("OAUTHBEARER", lambda _: oauthbearer(token, org))
        answers = [conn.myrights("INBOX"), conn.append("INBOX", None, None, b"Subject: x\r\n\r\nx\r\n")]
        # lr is READ-ONLY (RFC 4314 §4), which imaplib wants asked for (EXAMINE)
        return [*answers, conn.create("Archives"), conn.select("INBOX", readonly=True)]
    finally:
        conn.logout()


async def test_a_session_opened_through_a_membership_holds_its_rights(env: Env) -> None:
    """RFC 4314 on the ORG's own folders too: a member with ``lr`` reads, but neither appends nor creates."""
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lr")
    token = env.provider.token(DURAND_ID)
    rights, append, create, select = await asyncio.to_thread(
        opened_as_member, env.ports["imaps"], env.client_context(), token, SECRETARIAT
    )
    assert rights == ("OK", [b"INBOX lr"])
    assert append[0] == "NO" and append[1][0].startswith(b"[NOPERM]")
    assert create[0] == "NO" and create[1][0].startswith(b"[NOPERM]")
    assert select[0] == "OK"


def rights_cut_midway(
    env: Env, token: str, cut: Callable[[], object]
) -> tuple[list[bytes], tuple[str, list[bytes]], tuple[str, list[bytes]]]:
    """A session opened through a membership with the ORG's INBOX selected: rights, then ``cut()``,
    then what the same session may still do."""
    with imaplib.IMAP4_SSL("127.0.0.1", env.ports["imaps"], ssl_context=env.client_context()) as conn:
        conn.authenticate("OAUTHBEARER", lambda _: oauthbearer(token, SECRETARIAT))
        assert conn.select("INBOX")[0] == "OK"
        cut()
        return conn.myrights("INBOX")[1], conn.store("1", "+FLAGS", "(\\Deleted)"), conn.expunge()


async def test_rights_cut_apply_to_the_open_session(env: Env) -> None:
    """Rights are read again before each command in a session opened through a membership, as in the
    shared namespace: once cut to ``lr`` the selected ORG INBOX can no longer lose its mail."""
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lrstwe")
    code, _ = await asyncio.to_thread(
        submit, env.ports["submission"], env.client_context(), MARTIN, MARTIN, SECRETARIAT
    )
    assert code == 250
    loop = asyncio.get_running_loop()

    def cut() -> None:
        asyncio.run_coroutine_threadsafe(
            accounts.add_member(env.rt, SECRETARIAT, DURAND, "lr"), loop
        ).result()

    rights, store, expunge = await asyncio.to_thread(
        rights_cut_midway, env, env.provider.token(DURAND_ID), cut
    )
    assert rights == [b"INBOX lr"]
    assert store[0] == "NO" and store[1][0].startswith(b"[NOPERM]")
    assert expunge[0] == "NO"

    def inbox() -> tuple[list[bytes], list[bytes]]:
        with imaplib.IMAP4_SSL("127.0.0.1", env.ports["imaps"], ssl_context=env.client_context()) as c:
            c.login(SECRETARIAT, PASSWORD)
            return c.select("INBOX")[1], c.fetch("1", "(FLAGS)")[1]

    exists, flags = await asyncio.to_thread(inbox)
    assert exists == [b"1"] and b"Deleted" not in flags[0]


async def test_grants_of_send_as_became_memberships(env: Env) -> None:
    """The fixture grants with the deprecated ``grant_send_as``: a membership with sending."""
    answers = await bearer_imap(env, env.provider.token(MARTIN_ID), CABINET)
    assert answers[-1].startswith(b"a1 OK")
    assert SECRETARIAT in await accounts.send_as_addresses(
        env.rt, (await accounts.get_mailbox(env.rt, MARTIN)).id
    )


async def test_migration_turns_send_as_grants_into_members(db_url: str) -> None:
    """0015 keeps every existing grant as a membership whose rights allow sending; downgrade keeps it."""
    await migrate.upgrade_async(db_url, "0014")
    engine = create_async_engine(db_url)
    created = dt.datetime(2026, 1, 1)
    try:
        async with engine.begin() as c:
            await c.execute(
                sa.text("INSERT INTO domain (id, name, patients, created_at) VALUES (1, 'a.test', :f, :at)"),
                {"f": False, "at": created},
            )
            for i, (address, kind) in enumerate([("org@a.test", "ORG"), ("per@a.test", "PER")], start=1):
                await c.execute(
                    sa.text(
                        "INSERT INTO mailbox (id, domain_id, address, type, display_name, enabled,"
                        " accepts_patient_first, used_bytes, used_messages, quota_warned, last_uidvalidity,"
                        " created_at) VALUES (:i, 1, :a, :t, '', :yes, :no, 0, 0, 0, 0, :at)"
                    ),
                    {"i": i, "a": address, "t": kind, "yes": True, "no": False, "at": created},
                )
            await c.execute(sa.text("INSERT INTO send_as (mailbox_id, member_id) VALUES (1, 2)"))
        await migrate.upgrade_async(db_url)
        async with engine.begin() as c:
            query = "SELECT rights FROM membership WHERE mailbox_id = 1 AND member_id = 2"
            (rights,) = (await c.execute(sa.text(query))).one()
        assert "p" in rights and "r" in rights
        await asyncio.to_thread(migrate.downgrade, db_url, "0014")
        async with engine.begin() as c:
            assert (await c.execute(sa.text("SELECT mailbox_id, member_id FROM send_as"))).all() == [(1, 2)]
    finally:
        await engine.dispose()


async def test_removing_a_member_ends_their_open_session(env: Env) -> None:
    """A session a membership opened (token naming the ORG) gets BYE at its next command once the
    membership is removed, while the ORG's own password session goes on."""
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lrs")
    ctx = env.client_context()

    def connect() -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL("127.0.0.1", env.ports["imaps"], ssl_context=ctx, timeout=10)

    member = await asyncio.to_thread(connect)
    token = env.provider.token(DURAND_ID)
    typ, _ = await asyncio.to_thread(
        member.authenticate, "OAUTHBEARER", lambda _c: oauthbearer(token, SECRETARIAT)
    )
    assert typ == "OK"
    own = await asyncio.to_thread(connect)
    await asyncio.to_thread(own.login, SECRETARIAT, PASSWORD)
    assert (await asyncio.to_thread(member.select, "INBOX"))[0] == "OK"
    await accounts.remove_member(env.rt, SECRETARIAT, DURAND)
    with pytest.raises(imaplib.IMAP4.abort, match="no longer a member"):
        await asyncio.to_thread(member.noop)
    assert (await asyncio.to_thread(own.select, "INBOX"))[0] == "OK"
    await asyncio.to_thread(own.logout)
    (event,) = [e for e in await env.audit("logout") if e.response == "membership removed"]
    assert event.actor == SECRETARIAT


async def test_removing_a_member_stops_their_open_submission_session(env: Env) -> None:
    """A submission session opened with a token naming the ORG: MAIL is refused after the removal."""
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lrp")
    loop = asyncio.get_running_loop()

    def session() -> tuple[int, int]:
        with smtplib.SMTP("127.0.0.1", env.ports["submission"], timeout=10) as c:
            c.starttls(context=env.client_context())
            c.ehlo("client.a.mssante.test")
            token = env.provider.token(DURAND_ID)
            code, _ = c.docmd(
                "AUTH", "OAUTHBEARER " + base64.b64encode(oauthbearer(token, SECRETARIAT)).decode()
            )
            assert code == 235
            first = c.mail(SECRETARIAT)[0]
            c.rset()
            asyncio.run_coroutine_threadsafe(
                accounts.remove_member(env.rt, SECRETARIAT, DURAND), loop
            ).result()
            return first, c.mail(SECRETARIAT)[0]

    assert await asyncio.to_thread(session) == (250, 530)


async def test_a_member_removed_while_idling_hears_no_more_of_the_org(env: Env) -> None:
    """IDLE in a session opened through a membership: after the removal, the ORG's next message
    ends the session with BYE instead of being announced (no EXISTS)."""
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lrs")
    loop = asyncio.get_running_loop()
    token = env.provider.token(DURAND_ID)

    def idle_through_removal() -> list[bytes]:
        conn = imaplib.IMAP4_SSL("127.0.0.1", env.ports["imaps"], ssl_context=env.client_context())
        try:
            conn.authenticate("OAUTHBEARER", lambda _: oauthbearer(token, SECRETARIAT))
            assert conn.select("INBOX")[0] == "OK"
            conn.sock.settimeout(10)
            conn.send(b"i1 IDLE\r\n")
            assert conn.readline().startswith(b"+ ")
            removal = accounts.remove_member(env.rt, SECRETARIAT, DURAND)
            asyncio.run_coroutine_threadsafe(removal, loop).result()
            ctx = env.client_context()
            assert submit(env.ports["submission"], ctx, MARTIN, MARTIN, SECRETARIAT)[0] == 250
            lines = [conn.readline().rstrip(b"\r\n")]
            while lines[-1] and not lines[-1].startswith(b"i1 "):
                lines.append(conn.readline().rstrip(b"\r\n"))
            return lines
        finally:
            conn.shutdown()

    lines = await asyncio.to_thread(idle_through_removal)
    assert lines[0] == b"* BYE you are no longer a member of this mailbox", lines
    assert not any(b"EXISTS" in line for line in lines)


async def shared_namespace_session(env: Env) -> None:
    """aioimaplib, DURAND's own password: the ORG's INBOX under ``Partagé/``, read, flagged, deleted."""
    client = aioimaplib.IMAP4_SSL(
        "127.0.0.1", env.ports["imaps"], ssl_context=env.client_context(), timeout=10
    )
    await client.wait_hello_from_server()
    try:
        assert (await client.login(DURAND, PASSWORD)).result == "OK"
        assert (await client.select(mutf7.encode(f"Partagé/{SECRETARIAT}/INBOX"))).result == "OK"
        assert (await client.fetch("1", "(BODY[])")).result == "OK"
        assert (await client.store("1", "+FLAGS", "(\\Flagged)")).result == "OK"
        assert (await client.store("1", "+FLAGS", "(\\Deleted)")).result == "OK"
        assert (await client.expunge()).result == "OK"
    finally:
        await client.logout()


def membership_session(port: int, ctx: ssl.SSLContext, token: str) -> None:
    """imaplib, a token naming the ORG: its own INBOX, read, flagged, deleted."""
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10) as conn:
        assert conn.authenticate("OAUTHBEARER", lambda _: oauthbearer(token, SECRETARIAT))[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
        assert conn.fetch("1", "(BODY[])")[0] == "OK"
        assert conn.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
        assert conn.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert conn.expunge()[0] == "OK"


def send_through_membership(port: int, ctx: ssl.SSLContext, token: str) -> None:
    """smtplib, AUTH OAUTHBEARER naming the ORG, then a message from the ORG."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.starttls(context=ctx)
        c.ehlo("client.a.mssante.test")
        code, _ = c.docmd("AUTH", "OAUTHBEARER " + base64.b64encode(oauthbearer(token, SECRETARIAT)).decode())
        assert code == 235
        c.sendmail(SECRETARIAT, [MARTIN], MESSAGE.format(sender=SECRETARIAT, to=MARTIN).encode())


async def test_the_audit_names_the_person_and_the_org(env: Env) -> None:
    """Login, read (body FETCH), send, flag change (STORE) and deletion (EXPUNGE) by a member in the
    ORG mailbox, both ways in: under ``Partagé/`` with their own password, and through a token naming
    the ORG. Each row, as ``caducee audit export`` writes it, names the person and the ORG."""
    await accounts.add_member(env.rt, SECRETARIAT, DURAND, "lrswitep")
    port, ctx = env.ports["submission"], env.client_context()
    for _ in range(2):
        assert (await asyncio.to_thread(submit, port, ctx, MARTIN, MARTIN, SECRETARIAT))[0] == 250
    start = [e async for e in env.rt.audit.stream(None, None)][-1].id

    async def rows() -> list[dict[str, Any]]:
        """The export's rows (``Event.as_dict``) since ``start`` for the five kinds of action."""
        kinds = {"login", "read", "flags", "delete", "send"}
        return [
            e.as_dict() async for e in env.rt.audit.stream(None, None) if e.id > start and e.action in kinds
        ]

    await shared_namespace_session(env)
    assert (await asyncio.to_thread(submit, port, ctx, DURAND, SECRETARIAT, MARTIN))[0] == 250
    token = env.provider.token(DURAND_ID)
    await asyncio.to_thread(membership_session, env.ports["imaps"], ctx, token)
    await asyncio.to_thread(send_through_membership, port, ctx, token)

    events = await rows()
    member_of = f"as member of {SECRETARIAT}"
    shared = f"Partagé/{SECRETARIAT}/INBOX"
    assert [(e["actor"], e["action"]) for e in events] == [
        (DURAND, "login"),  # their own mailbox: the ORG is named by what they do in it
        (DURAND, "read"),
        (DURAND, "flags"),
        (DURAND, "flags"),
        (DURAND, "delete"),
        (DURAND, "login"),
        (DURAND, "send"),
        (SECRETARIAT, "login"),  # the ORG's mailbox is the one opened (its lock-out, its activity)
        (DURAND, "read"),
        (DURAND, "flags"),
        (DURAND, "flags"),
        (DURAND, "delete"),
        (SECRETARIAT, "login"),
        (DURAND, "send"),
    ], events
    for e in events:
        if e["action"] == "login" and e["actor"] == DURAND:
            continue
        said = f"{e['request']} {e['response']}"
        assert member_of in said, e
        if e["actor"] == SECRETARIAT:
            assert f"person {DURAND_ID} {DURAND} {member_of}" in said, e
    assert [e["request"] for e in events if e["action"] == "read"] == [
        f"imap FETCH {shared} uids 1",
        "imap FETCH INBOX uids 2",
    ]
    assert [e["request"] for e in events if e["action"] == "delete"] == [
        f"imap EXPUNGE {shared} uids 1",
        "imap EXPUNGE INBOX uids 2",
    ]
    assert [e["response"] for e in events if e["action"] == "flags"] == [f"ok {member_of}"] * 4
