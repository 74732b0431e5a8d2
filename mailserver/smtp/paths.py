"""The paths of MAIL FROM and RCPT TO: taken out of the command, then checked against RFC 5321 §4.1.2
as extended by RFC 6531 §3.3 (UTF-8 in local parts and domains), before any policy sees them.

A path that is not an address (non-UTF-8 octets, control characters, an empty label, two ``@``) is
refused at once with the code RFC 3463 has for it: ``501 5.1.7`` for the sender, ``553 5.1.3`` for a
recipient. What the syntax allows but a mail operator does not accept (source routes, ``%`` hacks,
quoted ``@``) is left to ``mailserver.policy``, which refuses it as relaying.
"""

from __future__ import annotations

import re

from mailserver.policy import Refusal
from mailserver.untrusted import printable

MAX_PATH = 256  # octets, RFC 5321 §4.5.3.1.3

_NON_ASCII = "\u0080-\U0010ffff"  # UTF8-non-ascii (RFC 6531 §3.3); surrogates are refused before
_ATOM = re.compile(rf"[A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~{_NON_ASCII}]+")
_QUOTED = re.compile(rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*"')
_LABEL = re.compile(rf"[A-Za-z0-9{_NON_ASCII}](?:[A-Za-z0-9\-{_NON_ASCII}]*[A-Za-z0-9{_NON_ASCII}])?")
_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]")  # address-literal: dcontent (§4.1.3)


def parse_path(arg: str | None, keyword: str) -> tuple[str, str]:
    """Split ``FROM:<path> params`` into (path, params); a bare or unterminated path raises Refusal."""
    if arg is None or arg[: len(keyword)].upper() != keyword:
        raise Refusal(501, "5.5.4", f"Syntax: {'MAIL FROM' if keyword == 'FROM:' else 'RCPT TO'}:<address>")
    rest = arg[len(keyword) :].lstrip()
    if not rest.startswith("<"):
        raise Refusal(501, "5.5.4", "the address must be enclosed in <>")
    in_quotes = False
    escaped = False
    for i, c in enumerate(rest[1:], 1):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            in_quotes = not in_quotes
        elif c == ">" and not in_quotes:
            return rest[1:i], rest[i + 1 :].strip()
    raise Refusal(501, "5.5.4", "unterminated <address>")


def _domain_ok(domain: str) -> bool:
    return bool(domain) and all(_LABEL.fullmatch(label) for label in domain.split("."))


def _local_ok(local: str) -> bool:
    if local.startswith('"'):
        return _QUOTED.fullmatch(local) is not None
    return bool(local) and all(_ATOM.fullmatch(atom) for atom in local.split("."))


def _mailbox_ok(mailbox: str) -> bool:
    """RFC 5321 Mailbox: Local-part "@" ( Domain / address-literal ); the last ``@`` outside quotes."""
    local, at, domain = mailbox.rpartition("@")
    if not at:
        return False
    if domain.startswith("["):
        return _LITERAL.fullmatch(domain) is not None and _local_ok(local)
    return _domain_ok(domain) and _local_ok(local)


def syntax_error(path: str) -> str | None:
    """Why ``path`` (what was between ``<`` and ``>``) is not an RFC 5321/6531 path, or None."""
    if not path.isprintable():
        return "not UTF-8 or holds control characters"
    if len(path.encode("utf-8")) > MAX_PATH:
        return f"longer than {MAX_PATH} octets"
    mailbox = path
    if path.startswith("@"):  # A-d-l ":" (a source route, RFC 5321 §4.1.2): policy refuses it
        route, colon, mailbox = path.partition(":")
        if not colon or not all(hop[:1] == "@" and _domain_ok(hop[1:]) for hop in route.split(",")):
            return "malformed source route"
    return None if _mailbox_ok(mailbox) else "not a valid address"


def check_sender(path: str) -> None:
    """Refuse a reverse-path that is neither ``<>`` nor an address: 501 5.1.7 (RFC 3463)."""
    why = syntax_error(path) if path else None
    if why:
        raise Refusal(501, "5.1.7", f"<{printable(path, 300)}>: bad sender address syntax, {why}")


def check_recipient(path: str) -> None:
    """Refuse a forward-path that is not an address: 553 5.1.3 (RFC 5321 §4.2.2, RFC 3463). A bare
    ``postmaster`` is a valid path (RFC 5321 §4.1.1.3), left for policy to route."""
    if path.lower() == "postmaster":
        return
    why = syntax_error(path) if path else "the null path is only a sender"
    if why:
        raise Refusal(553, "5.1.3", f"<{printable(path, 300)}>: bad destination address syntax, {why}")
