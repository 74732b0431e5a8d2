"""Clients configure themselves (issue 19): Thunderbird's autoconfig GETs and Outlook's Autodiscover POST
(the body Outlook sends), over real HTTP, answers parsed as the clients parse them; and the DNS records
`caducee dns records` prints (RFC 6186 SRV, RFC 8314 implicit TLS first, MX)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp
from click.testing import CliRunner

import cli as caducee_cli
from mailserver import clientconfig
from tests.conftest import make_settings
from tests.portal.conftest import Portal

OUTLOOK_REQUEST = (
    b'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
    b'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>{address}</EMailAddress>'
    b"<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/"
    b"responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
)
A = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
OL = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


def public(portal: Portal) -> None:
    c = portal.rt.settings.clients
    c.hostname, c.imaps_port, c.submissions_port = "mail.a.mssante.test", 993, 465


def servers(doc: bytes) -> list[tuple[str, str, str, str, str, str]]:
    """(element, type, hostname, port, socketType, username) as Thunderbird reads clientConfig 1.1."""
    root = ET.fromstring(doc)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    (provider,) = root.findall("emailProvider")
    assert provider.get("id") == "a.mssante.test" and provider.findtext("domain") == "a.mssante.test"
    return [
        (
            s.tag,
            s.get("type", ""),
            s.findtext("hostname", ""),
            s.findtext("port", ""),
            s.findtext("socketType", ""),
            s.findtext("username", ""),
        )
        for s in provider
        if s.tag in ("incomingServer", "outgoingServer")
    ]


async def test_thunderbird_autoconfig(portal: Portal) -> None:
    public(portal)
    expected = [
        ("incomingServer", "imap", "mail.a.mssante.test", "993", "SSL", "%EMAILADDRESS%"),
        ("incomingServer", "imap", "mail.a.mssante.test", "2143", "STARTTLS", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", "mail.a.mssante.test", "465", "SSL", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", "mail.a.mssante.test", "2587", "STARTTLS", "%EMAILADDRESS%"),
    ]
    async with aiohttp.ClientSession() as http:
        query = "emailaddress=dr.martin%40a.mssante.test"
        url = f"{portal.url}/.well-known/autoconfig/mail/config-v1.1.xml?{query}"
        async with http.get(url) as r:
            assert r.status == 200 and r.content_type == "application/xml"
            assert servers(await r.read()) == expected
        # autoconfig.<domain>/mail/config-v1.1.xml, the domain from the Host header
        headers = {"Host": "autoconfig.a.mssante.test"}
        async with http.get(f"{portal.url}/mail/config-v1.1.xml", headers=headers) as r:
            assert r.status == 200 and servers(await r.read()) == expected
        for address in ("x@b.example.test", "262112b82955335@patient.a.mssante.test", "pas-une-adresse"):
            async with http.get(f"{portal.url}/mail/config-v1.1.xml", params={"emailaddress": address}) as r:
                assert r.status == 404, address


async def outlook(portal: Portal, body: bytes) -> ET.Element:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{portal.url}/autodiscover/autodiscover.xml",
            data=body,
            headers={"Content-Type": "text/xml", "User-Agent": "Microsoft Office/16.0 (Windows NT 10.0)"},
        ) as r,
    ):
        assert r.status == 200 and r.content_type == "text/xml"
        return ET.fromstring(await r.read())


async def test_outlook_autodiscover(portal: Portal) -> None:
    public(portal)
    for address in ("dr.martin@a.mssante.test", "personne@a.mssante.test"):  # no probing of addresses
        root = await outlook(portal, OUTLOOK_REQUEST.replace(b"{address}", address.encode()))
        assert root.tag == f"{A}Autodiscover"
        account = root.find(f"{OL}Response/{OL}Account")
        assert account is not None and account.findtext(f"{OL}Action") == "settings"
        found = [
            (
                p.findtext(f"{OL}Type"),
                p.findtext(f"{OL}Server"),
                p.findtext(f"{OL}Port"),
                p.findtext(f"{OL}SSL"),
                p.findtext(f"{OL}Encryption"),
                p.findtext(f"{OL}LoginName"),
            )
            for p in account.findall(f"{OL}Protocol")
        ]
        assert found == [
            ("IMAP", "mail.a.mssante.test", "993", "on", None, address),
            ("IMAP", "mail.a.mssante.test", "2143", None, "TLS", address),
            ("SMTP", "mail.a.mssante.test", "465", "on", None, address),
            ("SMTP", "mail.a.mssante.test", "2587", None, "TLS", address),
        ]
    laughs = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]><Autodiscover>&a;</Autodiscover>'
    for body in (OUTLOOK_REQUEST.replace(b"{address}", b"x@b.example.test"), b"<not xml", laughs):
        root = await outlook(portal, body)
        assert root.findtext(f"{A}Response/{A}Error/{A}ErrorCode") == "600", body


def test_dns_records_from_listeners_and_public_names(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path}/c.db",
        imap={"listen": [], "tls_listen": ["0.0.0.0:993"]},
        submission={"listen": ["0.0.0.0:587"], "tls_listen": ["0.0.0.0:465"]},
        clients={"hostname": "mail.a.mssante.test", "submission_port": 10587},
    )
    assert clientconfig.dns_records(settings, "a.mssante.test") == [
        "_submissions._tcp.a.mssante.test. 3600 IN SRV 0 1 465 mail.a.mssante.test.",
        "_submission._tcp.a.mssante.test. 3600 IN SRV 10 1 10587 mail.a.mssante.test.",
        "_imaps._tcp.a.mssante.test. 3600 IN SRV 0 1 993 mail.a.mssante.test.",
        "_imap._tcp.a.mssante.test. 3600 IN SRV 0 0 0 .",  # no STARTTLS IMAP listener: "not offered"
        "_pop3s._tcp.a.mssante.test. 3600 IN SRV 0 0 0 .",
        "_pop3._tcp.a.mssante.test. 3600 IN SRV 0 0 0 .",
        "a.mssante.test. 3600 IN MX 10 mx.a.mssante.test.",
        "autoconfig.a.mssante.test. 3600 IN CNAME mail.a.mssante.test.",
        "autodiscover.a.mssante.test. 3600 IN CNAME mail.a.mssante.test.",
    ]


async def test_dns_records_command(portal: Portal, logging_kept: None) -> None:
    config = Path(str(portal.rt.settings.source))
    text = f'[database]\nurl = "{portal.rt.settings.database.url}"\n'

    def run(*args: str) -> tuple[int, str, str]:
        config.write_text(text, encoding="utf-8")
        r = CliRunner().invoke(caducee_cli.main, ["--config", str(config), "dns", "records", *args])
        return r.exit_code, r.stdout, r.stderr

    code, out, _ = await asyncio.to_thread(run, "A.mssante.test")
    assert (
        code == 0
        and out.splitlines()[0] == "_submissions._tcp.a.mssante.test. 3600 IN SRV 0 1 2465 localhost."
    )
    code, _, err = await asyncio.to_thread(run, "b.example.test")
    assert code == 1 and err == "caducee: b.example.test is not a domain hosted here (caducee domain add)\n"
