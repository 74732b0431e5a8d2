"""Scripted conversations: each ``scripts/*.txt`` file is one test, so a new RFC corner case is one file.

Format, one directive per line (``#`` starts a comment):

- ``C: text`` sends ``text`` + CRLF (``C:`` alone sends an empty line, e.g. inside a literal);
- ``S: pattern`` reads one logical server line (literals inline, CR/LF shown as ``\\r``/``\\n``) and
  matches it whole; ``...`` matches any run of characters, everything else is literal;
- ``X: deliver <subject>`` delivers a message to the logged-in user's INBOX, as SMTP would.

``$USER`` and ``$PASS`` are replaced by the test account. Scripts run over implicit TLS.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.imap.conftest import MARTIN, PASSWORD, IMAPEnv, message
from tests.imap.helpers import Client

SCRIPTS = sorted((Path(__file__).parent / "scripts").glob("*.txt"))


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in text.split("...")), re.DOTALL)


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
async def test_script(imap: IMAPEnv, path: Path) -> None:
    script = path.read_bytes().decode("utf-8").splitlines()  # noqa: ASYNC240 - a small local file
    client = await Client.connect(imap.tls_port, imap.ctx)
    pending = [client.greeting]  # the script's first "S:" line is the greeting
    try:
        for number, raw in enumerate(script, 1):
            if not raw.strip() or raw.startswith("#"):
                continue
            kind, text = raw[:2], raw[3:] if len(raw) > 3 else ""
            text = text.replace("$USER", MARTIN).replace("$PASS", PASSWORD)
            if kind == "C:":
                await client.send(text.encode("utf-8") + b"\r\n")
            elif kind == "S:":
                got = pending.pop() if pending else await client.line(wait=5)
                assert _pattern(text).fullmatch(got), f"{path.name}:{number}: expected {text!r}, got {got!r}"
            elif kind == "X:" and text.startswith("deliver "):
                await imap.deliver(message(text.removeprefix("deliver ")))
            else:
                raise AssertionError(f"{path.name}:{number}: unknown directive {raw!r}")
    finally:
        await client.close()


def test_there_are_enough_scripts() -> None:
    assert len(SCRIPTS) >= 10
