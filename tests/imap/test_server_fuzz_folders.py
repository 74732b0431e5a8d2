"""Folder commands fuzzed over a real connection (hypothesis): random astrings, quoted and literal
names, wildcards, modified UTF-7 valid or not, UTF-8 and raw octets, with and without ENABLE
UTF8=ACCEPT. Every command gets its tagged OK, NO or BAD, the connection stays open, and the
mailbox never holds more folders than ``[limits] folders_per_mailbox``.

Hypothesis drives a blocking client in a thread while the server runs on the test's event loop."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailserver.runtime import Runtime
from tests.imap.conftest import MARTIN, PASSWORD, running

LIMIT = 12
_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")


class BlockingClient:
    """Just enough IMAP for the fuzzer: raw command bytes out, logical response lines back."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30))
        self.file = self.sock.makefile("rb")
        self.count = 0
        assert self.line().startswith(b"* OK")

    def line(self) -> bytes:
        out = b""
        while True:
            chunk = self.file.readline()
            if not chunk:
                raise ConnectionError("the server closed the connection")
            m = _LITERAL.search(chunk)
            if m is None:
                return out + chunk.rstrip(b"\r\n")
            out += chunk[:-2] + self.file.read(int(m.group(1)))

    def command(self, body: bytes) -> list[bytes]:
        self.count += 1
        tag = b"f%d" % self.count
        self.sock.sendall(tag + b" " + body + b"\r\n")
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(tag + b" "):
                return lines

    def close(self) -> None:
        self.file.close()
        self.sock.close()


PIECES = ["a", "Z", "0", "/", "&", "-", "+", ",", "*", "%", '"', "\\", " ", "{", "}", "~", "]", "(", "\x01"]
PIECES += ["é", "\u2603", "&AOk-", "&Jjo", "&-", "INBOX", "inbox/", "Sent", "&U,BTF2XlZyyKng-"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
# Names a folder may have (in one encoding or the other), so that CREATE often succeeds.
USABLE = st.lists(st.sampled_from(["a", "Zb", "0", "/", "&-", "&AOk-", "é", " x"]), min_size=1, max_size=4)


@st.composite
def argument(draw: st.DrawFn) -> bytes:
    """One mailbox or pattern argument, spelled as an atom, a quoted string or a literal."""
    text = st.one_of(USABLE.map("".join), TEXT)
    raw = draw(st.one_of(text.map(lambda t: t.encode("utf-8")), st.binary(max_size=4)))
    form = draw(st.sampled_from(["atom", "quoted", "literal"]))
    if form == "atom":
        return raw or b'""'
    if form == "quoted":
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d+}\r\n" % len(raw) + raw  # LITERAL+ (RFC 7888): no round trip needed


COMMANDS = [
    "SELECT {}",
    "EXAMINE {}",
    "STATUS {} (MESSAGES UIDNEXT)",
    "CREATE {}",
    "DELETE {}",
    "RENAME {} {}",
    "SUBSCRIBE {}",
    "UNSUBSCRIBE {}",
    "LIST {} {}",
    "LSUB {} {}",
    "LIST (SUBSCRIBED RECURSIVEMATCH) {} ({} {})",
    "LIST {} {} RETURN (CHILDREN SUBSCRIBED STATUS (MESSAGES))",
]


@st.composite
def command(draw: st.DrawFn) -> bytes:
    template = draw(st.sampled_from(COMMANDS)).encode()
    parts = template.split(b"{}")
    out = parts[0]
    for rest in parts[1:]:
        out += draw(argument()) + rest
    return out


async def test_folder_commands_always_answer(sqlite_runtime: Runtime, pki: Any) -> None:
    async with running(sqlite_runtime, pki, folders_per_mailbox=LIMIT) as env:
        loop = asyncio.get_running_loop()
        mailbox = env.mailboxes[MARTIN]

        def folders() -> int:
            return len(asyncio.run_coroutine_threadsafe(env.rt.store.folders(mailbox), loop).result(30))

        def session(utf8: bool) -> BlockingClient:
            client = BlockingClient(env.tls_port, env.ctx)
            assert client.command(f'LOGIN "{MARTIN}" "{PASSWORD}"'.encode())[-1].split(b" ")[1] == b"OK"
            if utf8:
                assert client.command(b"ENABLE UTF8=ACCEPT")[-1].endswith(b"OK ENABLE completed")
            return client

        def run() -> None:
            clients = [session(False), session(True)]
            while folders() < LIMIT - 2:  # so that the fuzzed CREATEs and RENAMEs meet the limit
                assert clients[0].command(b"CREATE w%d" % folders())[-1].endswith(b"OK CREATE completed")

            @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
            @given(st.lists(command(), min_size=1, max_size=6), st.sampled_from(clients))
            def fuzz(commands: list[bytes], client: BlockingClient) -> None:
                for body in commands:
                    lines = client.command(body)
                    verdict = lines[-1].split(b" ")[1]
                    assert verdict in (b"OK", b"NO", b"BAD"), (body, lines)
                    assert not any(x.startswith(b"* BYE") for x in lines), (body, lines)
                    if verdict == b"OK" and body.startswith((b"SELECT", b"EXAMINE")):
                        client.command(b"UNSELECT")  # a DELETE of the selected folder would end the session
                assert client.command(b"NOOP")[-1].endswith(b"OK NOOP completed")
                assert folders() <= LIMIT

            try:
                fuzz()
            finally:
                for c in clients:
                    c.close()

        await asyncio.to_thread(run)
