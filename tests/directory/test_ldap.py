"""The LDAP address book, with the ldap3 client and the real ``ldapsearch`` (Debian's ldap-utils)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest
from sqlalchemy import update

from directory import ldap as ldap_service
from directory.importer import import_extraction
from directory.models import DirectoryMailbox
from mailserver import accounts
from mailserver.limits import ConnectionGate
from mailserver.runtime import Runtime
from tests.directory.conftest import make_settings
from tests.smtp.conftest import wait_for

USER = "dr.test@caducee.test"
PASSWORD = "correct horse battery"
BASE = "ou=annuaire,dc=caducee"


@dataclass
class Server:
    rt: Runtime
    port: int
    tls_port: int
    ca: Path
    listener: ldap_service.Listener


@pytest.fixture
async def server(tmp_path: Path, sqlite_url: str, sample: Path) -> AsyncIterator[Server]:
    settings = make_settings(
        tmp_path,
        sqlite_url,
        ldap={"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"], "size_limit": 50, "time_limit": 5},
    )
    rt = Runtime.build(settings)
    await accounts.add_domain(rt, "caducee.test", patients=False)
    await accounts.add_mailbox(rt, USER, "PER", rpps="10000000009", password=PASSWORD)
    await import_extraction(rt.db, sample)
    listeners = await ldap_service.start(rt)
    plain = next(x for x in listeners if x.service == "ldap")
    implicit = next(x for x in listeners if x.service == "ldaps")
    try:
        yield Server(rt, plain.port, implicit.port, Path(settings.tls.peer_ca), plain)
    finally:
        for listener in listeners:
            await listener.close()
        await rt.close()


def _tls(ca: Path) -> ldap3.Tls:
    return ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca))


def connect(
    srv: Server,
    user: str | None = USER,
    password: str | None = PASSWORD,
    *,
    ldaps: bool = False,
    starttls: bool = True,
) -> ldap3.Connection:
    """A synchronous ldap3 client (run in a thread: the server shares this event loop)."""
    server = ldap3.Server(
        "127.0.0.1",
        port=srv.tls_port if ldaps else srv.port,
        use_ssl=ldaps,
        tls=_tls(srv.ca),
        get_info=ldap3.NONE,
    )
    conn = ldap3.Connection(server, user=user, password=password, raise_exceptions=False, receive_timeout=10)
    conn.open()
    if starttls and not ldaps:
        assert conn.start_tls()
    return conn


async def in_thread(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(fn, *args, **kwargs)


def search(
    conn: ldap3.Connection, flt: str, attributes: list[str] | None = None, size: int = 0
) -> tuple[int, list]:
    conn.search(
        BASE,
        flt,
        attributes=attributes or ["cn", "sn", "givenName", "mail", "o", "ou", "title", "l", "postalCode"],
        size_limit=size,
    )
    return conn.result["result"], list(conn.entries)


async def test_bind_rules(server: Server) -> None:
    def scenario() -> dict[str, int]:
        codes = {}
        conn = connect(server, starttls=False)
        conn.bind()
        codes["cleartext"] = conn.result["result"]
        conn.unbind()
        conn = connect(server, user=None, password=None)
        conn.bind()
        codes["anonymous"] = conn.result["result"]
        search(conn, "(mail=*)")
        codes["search-before-bind"] = conn.result["result"]
        conn.unbind()
        conn = connect(server, password="wrong password")
        conn.bind()
        codes["wrong"] = conn.result["result"]
        conn.unbind()
        for name in (USER, f"mail={USER},{BASE}", f"uid={USER},{BASE}"):
            conn = connect(server, user=name)
            conn.bind()
            codes[name.split("=")[0] if "=" in name else "address"] = conn.result["result"]
            conn.unbind()
        conn = connect(server, ldaps=True)
        conn.bind()
        codes["ldaps"] = conn.result["result"]
        conn.unbind()
        return codes

    codes = await in_thread(scenario)
    assert codes == {
        "cleartext": 13,
        "anonymous": 48,
        "search-before-bind": 50,
        "wrong": 49,
        "address": 0,
        "mail": 0,
        "uid": 0,
        "ldaps": 0,
    }


async def test_filters(server: Server) -> None:
    def scenario() -> dict[str, object]:
        conn = connect(server)
        assert conn.bind()
        out: dict[str, object] = {}
        code, entries = search(conn, "(mail=Gaelle.O-Connor@medecin.mssante.test)")
        out["mail"] = (
            code,
            [
                (
                    e.cn.value,
                    e.sn.value,
                    e.givenName.value,
                    e.title.value,
                    e.l.value,
                    e.postalCode.value,
                    e.o.value,
                )
                for e in entries
            ],
        )
        code, entries = search(conn, "(sn=*o'conn*)")
        out["cn-substring"] = (code, sorted({e.sn.value for e in entries}))
        code, entries = search(conn, "(&(|(sn=lefèvre)(sn=zzz)(mail=nobody@x.test))(givenName=françois))")
        out["or"] = (code, sorted({e.sn.value for e in entries}))
        code, entries = search(conn, "(&(sn=martin)(l=lyon)(!(title=Médecin*)))")
        out["and-not"] = (
            code,
            {(e.sn.value, e.l.value) for e in entries},
            all(not str(e.title.value).startswith("Médecin") for e in entries),
        )
        code, entries = search(conn, "(&(objectClass=inetOrgPerson)(ou=Cardiologie)(postalCode=69003))")
        out["org"] = (code, {(e.ou.value, e.postalCode.value) for e in entries})
        code, entries = search(conn, "(&(mail=*)(cn=gael*)(sn=*connor))")
        out["initial-final"] = (code, {e.givenName.value for e in entries})
        code, entries = search(conn, "(telephoneNumber=0102030405)")
        out["unknown-attribute"] = (code, len(entries))
        conn.search(BASE, "(sn>=m)", attributes=["cn"])
        out["ordering"] = conn.result["result"]
        conn.modify(f"mail={USER},{BASE}", {"cn": [(ldap3.MODIFY_REPLACE, ["x"])]})
        out["modify"] = conn.result["result"]
        conn.search(
            f"mail=gaelle.o-connor@medecin.mssante.test,{BASE}",
            "(objectClass=*)",
            search_scope=ldap3.BASE,
            attributes=["mail"],
        )
        out["base-entry"] = (conn.result["result"], [e.mail.value for e in conn.entries])
        conn.search("dc=elsewhere", "(objectClass=*)")
        out["outside"] = conn.result["result"]
        conn.unbind()
        return out

    out = await in_thread(scenario)
    assert out["mail"] == (
        0,
        [
            (
                "Gaëlle O'CONNOR",
                "O'CONNOR",
                "Gaëlle",
                "Médecin, Gynécologie-obstétrique",
                "BORDEAUX",
                "33000",
                "CENTRE HOSPITALIER MOREL",
            )
        ],
    )
    assert out["cn-substring"] == (0, ["O'CONNOR"])
    assert out["or"] == (0, ["LEFÈVRE"])
    code, places, not_doctors = out["and-not"]  # type: ignore[misc]
    assert code == 0 and places == {("MARTIN", "LYON")} and not_doctors
    assert out["org"] == (0, {("Cardiologie", "69003")})
    assert out["initial-final"][0] == 0 and out["initial-final"][1] <= {"Gaëlle"}  # type: ignore[index]
    assert out["unknown-attribute"] == (0, 0)
    assert out["ordering"] == 53
    assert out["modify"] == 53
    assert out["base-entry"] == (0, ["gaelle.o-connor@medecin.mssante.test"])
    assert out["outside"] == 32


async def test_size_limit_and_liste_rouge(server: Server) -> None:
    async with server.rt.db.write() as session:
        await session.execute(
            update(DirectoryMailbox)
            .where(DirectoryMailbox.address == "gaelle.o-connor@medecin.mssante.test")
            .values(liste_rouge=True)
        )

    def scenario() -> tuple[object, ...]:
        conn = connect(server)
        assert conn.bind()
        many = search(conn, "(mail=*)")
        few = search(conn, "(mail=*)", size=3)
        hidden = search(conn, "(mail=gaelle.o-connor@medecin.mssante.test)")
        conn.unbind()
        return (many[0], len(many[1]), few[0], len(few[1]), hidden)

    assert await in_thread(scenario) == (4, 50, 4, 3, (0, []))


async def test_time_limit(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(self: object, condition: object, limit: int) -> list[object]:
        await asyncio.sleep(10)
        return []

    monkeypatch.setattr(ldap_service.Session, "_query", slow)

    def scenario() -> int:
        conn = connect(server)
        assert conn.bind()
        conn.search(BASE, "(mail=*)", time_limit=1)
        code = conn.result["result"]
        conn.unbind()
        return code

    assert await in_thread(scenario) == 3


async def test_garbage_gets_a_notice_of_disconnection(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x30\x03\x02\x01")
    writer.write(b"\xff" * 10)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(1000), 5)
    assert b"1.3.6.1.4.1.1466.20036" in data
    assert await asyncio.wait_for(reader.read(1000), 5) == b""
    writer.close()


def ldapsearch(srv: Server, *args: str, uri: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LDAPTLS_CACERT": str(srv.ca), "LDAPTLS_REQCERT": "demand", "LDAPCONF": os.devnull}
    return subprocess.run(
        ["ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-H", uri or f"ldap://127.0.0.1:{srv.port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


async def test_ldapsearch_starttls_and_ldaps(server: Server) -> None:
    done = await in_thread(
        ldapsearch,
        server,
        "-ZZ",
        "-x",
        "-D",
        USER,
        "-w",
        PASSWORD,
        "-b",
        BASE,
        "(|(sn=o'connor)(mail=o'connor*))",
        "mail",
        "cn",
    )
    assert done.returncode == 0, done.stderr
    assert "mail: gaelle.o-connor@medecin.mssante.test" in done.stdout
    assert "cn:: " in done.stdout  # non-ASCII values are base64 in LDIF
    done = await in_thread(
        ldapsearch,
        server,
        "-x",
        "-D",
        f"mail={USER},{BASE}",
        "-w",
        PASSWORD,
        "-b",
        BASE,
        "(&(postalCode=33000)(sn=o'connor))",
        "mail",
        uri=f"ldaps://127.0.0.1:{server.tls_port}",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("mail: ") >= 1
    anonymous = await in_thread(ldapsearch, server, "-ZZ", "-x", "-b", BASE, "(mail=*)")
    assert anonymous.returncode == 48 and "anonymous bind refused" in anonymous.stderr
    wrong = await in_thread(
        ldapsearch, server, "-ZZ", "-x", "-D", USER, "-w", "nope nope", "-b", BASE, "(mail=*)"
    )
    assert wrong.returncode == 49
    limited = await in_thread(
        ldapsearch, server, "-ZZ", "-x", "-D", USER, "-w", PASSWORD, "-z", "2", "-b", BASE, "(mail=*)", "mail"
    )
    assert limited.returncode == 4 and limited.stdout.count("mail: ") == 2
    root = await in_thread(
        ldapsearch,
        server,
        "-ZZ",
        "-x",
        "-D",
        USER,
        "-w",
        PASSWORD,
        "-b",
        "",
        "-s",
        "base",
        "(objectClass=*)",
        "+",
    )
    assert "supportedExtension: 1.3.6.1.4.1.1466.20037" in root.stdout


async def test_root_dse_without_bind_and_starttls_twice(server: Server) -> None:
    def scenario() -> tuple[object, ...]:
        conn = connect(server, user=None, password=None, starttls=False)
        conn.search("", "(objectClass=*)", search_scope=ldap3.BASE, attributes=["supportedExtension"])
        root = (conn.result["result"], conn.entries[0].supportedExtension.value)
        assert conn.start_tls()
        again = conn.start_tls()
        conn.extended("1.2.3.4")
        unknown = conn.result["result"]
        conn.unbind()
        return root, again, unknown

    root, again, unknown = await in_thread(scenario)
    assert root == (0, "1.3.6.1.4.1.1466.20037")
    assert again is False
    assert unknown == 2


async def test_served_by_the_application(server: Server) -> None:
    from mailserver import app

    assert "directory.ldap" in app.SERVICES


async def test_binds_beyond_the_user_and_address_limit_are_busy(server: Server) -> None:
    """Issue 13 §8: a bind is an authenticated connection like an IMAP LOGIN; beyond
    ``connections_per_user_ip`` it gets busy (51), and an unbind frees the place."""
    server.rt.settings.limits.connections_per_user_ip = 2
    conns = [await in_thread(connect, server) for _ in range(3)]

    def bind(conn: ldap3.Connection) -> int:
        conn.bind()
        return conn.result["result"]

    assert [await in_thread(bind, conn) for conn in conns] == [0, 0, 51]
    await in_thread(conns.pop(0).unbind)  # ldap3 does not wait for the server to close

    async def released() -> bool:
        gate: ConnectionGate = server.listener.gate
        return gate.per_user_ip[(USER, "127.0.0.1")] < 2

    await wait_for(released)
    assert await in_thread(bind, conns[-1]) == 0
    for conn in conns:
        await in_thread(conn.unbind)
