"""The MSSanté trust space (liste blanche): who may exchange mail with us, and how to recognise them.

One rule, used by the inbound MTA, the outbound queue and the CLI: a peer is a trust-list domain whose
operator certificate subject equals the list's ``DNCertificatOperateur``.

DN comparison (documented choice): both sides are parsed as X.509 names (the list's RFC 4514 string
with ``x509.Name.from_rfc4514_string``) and compared as a *set of RDNs*, each RDN a set of
(attribute OID, value) pairs, values compared case-insensitively with inner whitespace collapsed
(the spirit of RFC 4518 caseIgnoreMatch). Order is ignored because published lists and certificates
disagree on RFC 4514 (most-specific first) versus X.500 (most-significant first) order.

Import is all or nothing: a file is fully parsed and checked before one transaction replaces the stored
list, so a malformed download never empties the trust space.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailserver.db.engine import Database, Reader
from mailserver.db.models import utcnow
from mailserver.queue.models import TrustDomain

NAMESPACE = "https://listeblanche.mssante.fr/schema"
_NS = f"{{{NAMESPACE}}}"
_DOMAIN_RE = re.compile(r"(?=.{1,253}\Z)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")


class TrustListError(Exception):
    """A trust list (file or entry) that cannot be used; the message says why."""


class TooManyRemoved(TrustListError):
    """A new list would remove more of the current domains than ``[trust] max_removed`` allows."""


@dataclass(frozen=True)
class TrustEntry:
    name: str
    dn: str
    description: str = ""
    responsible_contact: str = ""
    support_contact: str = ""
    updated: str = ""

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class ImportReport:
    """What an import changed, domain names sorted."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0


_EXTRA_NAMES = {"EMAILADDRESS": NameOID.EMAIL_ADDRESS, "E": NameOID.EMAIL_ADDRESS, "SN": NameOID.SURNAME}


def _tidy(dn: str) -> str:
    """Upper-case attribute types and drop blanks around separators (both are insignificant, RFC 4514 §3)."""
    avas: list[str] = []
    seps: list[str] = []
    current: list[str] = []
    chars = iter(dn)
    for c in chars:
        if c == "\\":
            current.append(c + next(chars, ""))
        elif c in ",+":
            avas.append("".join(current))
            seps.append(c)
            current = []
        else:
            current.append(c)
    avas.append("".join(current))
    out: list[str] = []
    for i, ava in enumerate(avas):
        kind, eq, value = ava.partition("=")
        out.append(kind.strip().upper() + eq + value.strip() + (seps[i] if i < len(seps) else ""))
    return "".join(out)


def parse_dn(dn: str) -> x509.Name:
    """Parse an RFC 4514 string; TrustListError when it is not one."""
    try:
        name = x509.Name.from_rfc4514_string(_tidy(dn), _EXTRA_NAMES)
    except ValueError as exc:
        raise TrustListError(f"invalid DN {dn!r}: {exc}") from None
    if not list(name):
        raise TrustListError(f"empty DN {dn!r}")
    return name


def _norm_value(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(value.split()).casefold()


def _canonical(name: x509.Name) -> frozenset[frozenset[tuple[str, str]]]:
    return frozenset(
        frozenset((attr.oid.dotted_string, _norm_value(attr.value)) for attr in rdn) for rdn in name.rdns
    )


def dn_matches(expected: str | x509.Name, subject: x509.Name) -> bool:
    """True when ``subject`` is the name ``expected`` (see the module docstring for the rule)."""
    if isinstance(expected, str):
        try:
            expected = parse_dn(expected)
        except TrustListError:
            return False
    return _canonical(expected) == _canonical(subject)


def normalize_domain(name: str) -> str:
    domain = name.strip().lower().rstrip(".")
    if not _DOMAIN_RE.fullmatch(domain):
        raise TrustListError(f"invalid domain name {name!r}")
    return domain


def _text(element: ET.Element, tag: str) -> str:
    child = element.find(_NS + tag)
    return (child.text or "").strip() if child is not None else ""


def parse_trust_list(data: bytes) -> list[TrustEntry]:
    """Parse and check the published XML; any problem raises TrustListError naming the entry.

    ElementTree never resolves external entities and the bundled expat limits entity expansion.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise TrustListError(f"not well-formed XML: {exc}") from None
    if root.tag != _NS + "ListeBlanche":
        raise TrustListError(f"root element is {root.tag!r}, expected ListeBlanche in namespace {NAMESPACE}")
    entries: dict[str, TrustEntry] = {}
    for i, el in enumerate(root.iter(_NS + "Domaine"), 1):
        raw_name, dn = _text(el, "Nom"), _text(el, "DNCertificatOperateur")
        if not raw_name:
            raise TrustListError(f"Domaine #{i}: missing <Nom>")
        name = normalize_domain(raw_name)
        if not dn:
            raise TrustListError(f"Domaine #{i} ({name}): missing <DNCertificatOperateur>")
        parse_dn(dn)
        if name in entries:
            raise TrustListError(f"Domaine #{i}: {name} is listed twice")
        entries[name] = TrustEntry(
            name=name,
            dn=dn,
            description=_text(el, "Description"),
            responsible_contact=_text(el, "ResponsableContact"),
            support_contact=_text(el, "SupportContact"),
            updated=_text(el, "DateMAJ"),
        )
    if not entries:
        raise TrustListError("the list has no <Domaine> entry (refusing to empty the trust space)")
    return list(entries.values())


def _entry(row: TrustDomain) -> TrustEntry:
    return TrustEntry(
        row.name, row.dn, row.description, row.responsible_contact, row.support_contact, row.updated
    )


async def replace_all(
    db: Database, entries: list[TrustEntry], max_removed: int | None = None
) -> ImportReport:
    """Make the stored list exactly ``entries`` in one transaction and report the differences;
    with ``max_removed`` (a percentage), refuse (TooManyRemoved, nothing changed) a list that would
    remove more than that share of the current domains."""
    report = ImportReport()
    wanted = {e.name: e for e in entries}
    async with db.write() as session:
        current = {r.name: r for r in (await session.execute(select(TrustDomain))).scalars()}
        gone = set(current) - set(wanted)
        if max_removed is not None and len(gone) * 100 > max_removed * len(current):
            raise TooManyRemoved(
                f"the new list removes {len(gone)} of the {len(current)} current domains"
                f" ({100 * len(gone) / len(current):.0f}%), more than [trust] max_removed = {max_removed}%"
            )
        for name in sorted(gone):
            await session.delete(current[name])
            report.removed.append(name)
        now = utcnow()
        for name in sorted(wanted):
            e = wanted[name]
            row = current.get(name)
            if row is None:
                session.add(TrustDomain(**e.as_dict(), imported_at=now))
                report.added.append(name)
            elif _entry(row) != e:
                for key, value in e.as_dict().items():
                    setattr(row, key, value)
                row.imported_at = now
                report.changed.append(name)
            else:
                report.unchanged += 1
    return report


async def import_file(db: Database, path: str | Path) -> ImportReport:
    """Read, check and install a trust-list file; on any error nothing changes."""
    try:
        data = await asyncio.to_thread(Path(path).read_bytes)
    except OSError as exc:
        raise TrustListError(f"cannot read {path}: {exc.strerror}") from None
    return await replace_all(db, parse_trust_list(data))


async def add(db: Database, domain: str, dn: str, description: str = "") -> TrustEntry:
    """Add or update one domain by hand (a peer not yet in the published list, a test bed)."""
    name = normalize_domain(domain)
    parse_dn(dn)
    entry = TrustEntry(name, dn.strip(), description)
    async with db.write() as session:
        row = await session.get(TrustDomain, name, with_for_update=True)
        if row is None:
            session.add(TrustDomain(**entry.as_dict(), imported_at=utcnow()))
        else:
            row.dn, row.description, row.imported_at = entry.dn, description or row.description, utcnow()
    return entry


async def remove(db: Database, domain: str) -> None:
    name = normalize_domain(domain)
    async with db.write() as session:
        result = await session.execute(delete(TrustDomain).where(TrustDomain.name == name))
        if result.rowcount == 0:
            raise TrustListError(f"{name} is not in the trust list")


async def entries(db: Database) -> list[TrustEntry]:
    async with db.read() as session:
        rows = await session.execute(select(TrustDomain).order_by(TrustDomain.name))
        return [_entry(r) for r in rows.scalars()]


_ENTRY = select(
    TrustDomain.name,
    TrustDomain.dn,
    TrustDomain.description,
    TrustDomain.responsible_contact,
    TrustDomain.support_contact,
    TrustDomain.updated,
).where(TrustDomain.name == bindparam("name"))


async def lookup(session: Reader, domain: str) -> TrustEntry | None:
    row = (await session.execute(_ENTRY, {"name": domain.lower().rstrip(".")})).first()
    return TrustEntry(*row) if row is not None else None


async def check_peer(session: AsyncSession, domain: str, subject: x509.Name | None) -> str | None:
    """Why a peer presenting ``subject`` may not speak for ``domain``, or None when it may."""
    entry = await lookup(session, domain)
    if entry is None:
        return f"{domain} is not in the MSSanté trust space"
    if subject is None:
        return "no client certificate was presented"
    if not dn_matches(entry.dn, subject):
        return f"certificate subject {subject.rfc4514_string()} is not the one listed for {domain}"
    return None


async def domains_of(session: AsyncSession, subject: x509.Name) -> list[str]:
    """Every trust-list domain whose listed DN is ``subject`` (a null-sender peer is one of them)."""
    rows = (await session.execute(select(TrustDomain))).scalars()
    return sorted(r.name for r in rows if dn_matches(r.dn, subject))
