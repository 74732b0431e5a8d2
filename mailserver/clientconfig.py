"""What mail clients need to configure themselves, computed once from the settings for every way of
telling them: DNS records (RFC 6186 SRV, RFC 8314 implicit TLS first, MX), Thunderbird autoconfig and
Microsoft Autodiscover. The public host names and ports come from ``[clients]``, else the server's
host name and the listeners' ports.
"""

from __future__ import annotations

import datetime as dt
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

from config.settings import Settings, parse_listen

AUTODISCOVER_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
TTL = 3600


@dataclass(frozen=True)
class Endpoint:
    service: Literal["imaps", "imap", "submissions", "submission"]
    host: str
    port: int

    @property
    def implicit_tls(self) -> bool:
        return self.service.endswith("s")


def _port(configured: int, listeners: list[str]) -> int | None:
    if configured:
        return configured
    return parse_listen(listeners[0])[1] if listeners else None


def endpoints(settings: Settings) -> list[Endpoint]:
    """The client services offered, implicit TLS first (RFC 8314 §5.1 prefers it to STARTTLS)."""
    host = settings.clients.hostname or settings.server.hostname
    c = settings.clients
    found = [
        ("imaps", _port(c.imaps_port, settings.imap.tls_listen)),
        ("imap", _port(c.imap_port, settings.imap.listen)),
        ("submissions", _port(c.submissions_port, settings.submission.tls_listen)),
        ("submission", _port(c.submission_port, settings.submission.listen)),
    ]
    return [Endpoint(service, host, port) for service, port in found if port]  # type: ignore[arg-type]


def dns_records(settings: Settings, domain: str) -> list[str]:
    """Zone-file lines for ``domain``: SRV per RFC 6186 (priority 0 for implicit TLS, 10 for STARTTLS,
    RFC 8314 §5.1), "." targets for services not offered (RFC 6186 §4, POP3 is never), the MX, and the
    names Thunderbird and Outlook look up for autoconfig."""
    offered = {e.service: e for e in endpoints(settings)}
    lines = []
    for service in ("submissions", "submission", "imaps", "imap", "pop3s", "pop3"):
        name = f"_{service}._tcp.{domain}."
        e = offered.get(service)  # type: ignore[call-overload]
        if e is None:
            lines.append(f"{name} {TTL} IN SRV 0 0 0 .")
        else:
            lines.append(f"{name} {TTL} IN SRV {0 if e.implicit_tls else 10} 1 {e.port} {e.host}.")
    mx = settings.clients.mx_hostname or settings.server.hostname
    lines.append(f"{domain}. {TTL} IN MX 10 {mx}.")
    web = settings.clients.hostname or settings.server.hostname
    lines.append(f"autoconfig.{domain}. {TTL} IN CNAME {web}.")
    lines.append(f"autodiscover.{domain}. {TTL} IN CNAME {web}.")
    return lines


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def _xml(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def thunderbird(settings: Settings, domain: str) -> bytes:
    """Thunderbird's autoconfig document (clientConfig version 1.1), implicit TLS first."""
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", None)
    provider.set("id", domain)
    _sub(provider, "domain", domain)
    _sub(provider, "displayName", f"Messagerie sécurisée de santé ({domain})")
    _sub(provider, "displayShortName", "Caducée")
    for e in endpoints(settings):
        if e.service.startswith("imap"):
            server = _sub(provider, "incomingServer")
            server.set("type", "imap")
        else:
            server = _sub(provider, "outgoingServer")
            server.set("type", "smtp")
        _sub(server, "hostname", e.host)
        _sub(server, "port", str(e.port))
        _sub(server, "socketType", "SSL" if e.implicit_tls else "STARTTLS")
        _sub(server, "authentication", "password-cleartext")
        _sub(server, "username", "%EMAILADDRESS%")
    return _xml(root)


class AutodiscoverError(Exception):
    """A request Autodiscover answers with its error document (code 600: invalid request)."""


def autodiscover_address(body: bytes) -> str:
    """The ``EMailAddress`` of an Outlook Autodiscover request (POX, 2006 schema); no DTD accepted."""
    if b"<!doctype" in body.lower() or b"<!entity" in body.lower():
        raise AutodiscoverError("document type declarations are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise AutodiscoverError(f"not XML: {exc}") from None
    ns = {"a": AUTODISCOVER_REQUEST_NS}
    address = root.findtext("a:Request/a:EMailAddress", namespaces=ns)
    schema = root.findtext("a:Request/a:AcceptableResponseSchema", namespaces=ns)
    if root.tag != f"{{{AUTODISCOVER_REQUEST_NS}}}Autodiscover" or not address:
        raise AutodiscoverError("not an Outlook Autodiscover request")
    if schema is not None and schema.strip() != OUTLOOK_NS:
        raise AutodiscoverError(f"unsupported response schema {schema.strip()}")
    return address.strip()


def autodiscover(settings: Settings, address: str) -> bytes:
    """The Outlook response (2006a schema): an IMAP and an SMTP protocol per endpoint, implicit TLS first."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    response = _sub(root, "Response")
    response.set("xmlns", OUTLOOK_NS)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    for e in endpoints(settings):
        protocol = _sub(account, "Protocol")
        _sub(protocol, "Type", "IMAP" if e.service.startswith("imap") else "SMTP")
        _sub(protocol, "Server", e.host)
        _sub(protocol, "Port", str(e.port))
        _sub(protocol, "DomainRequired", "off")
        _sub(protocol, "LoginName", address)
        _sub(protocol, "SPA", "off")
        if e.implicit_tls:
            _sub(protocol, "SSL", "on")
        else:
            _sub(protocol, "Encryption", "TLS")
        _sub(protocol, "AuthRequired", "on")
        if not e.service.startswith("imap"):
            _sub(protocol, "UsePOPAuth", "off")
            _sub(protocol, "SMTPLast", "off")
    return _xml(root)


def autodiscover_error(message: str) -> bytes:
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    response = _sub(root, "Response")
    error = _sub(response, "Error")
    error.set("Time", dt.datetime.now(dt.UTC).strftime("%H:%M:%S.%f"))
    error.set("Id", str(uuid.uuid4().int % 10**10))
    _sub(error, "ErrorCode", "600")
    _sub(error, "Message", message)
    _sub(error, "DebugData", "")
    return _xml(root)
