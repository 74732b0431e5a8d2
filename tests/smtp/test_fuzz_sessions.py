"""Real SMTP sessions fuzzed (hypothesis), on the inbound MTA (STARTTLS with the peer's certificate, or
left in clear text) and on submission (implicit TLS, authenticated or not): malformed commands, odd
paths with non-UTF-8 octets and control characters, random bytes, several commands pipelined in one
packet, BDAT and DATA cut short, bytes after STARTTLS that are no ClientHello.

Whatever is sent, every reply line is a reply (``^\\d{3}[ -]`` and UTF-8), bad input never gets
``451`` (that code is for our own failures), nothing is logged as an error nor with a traceback,
and the server still answers a fresh connection afterwards. Hypothesis drives blocking clients in a
thread while the server runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.smtp.conftest import MARTIN, PASSWORD, start_env

REPLY = re.compile(rb"\d{3}[ -]")
END = b"FUZZEND"
# Bounded for the suite (about 0.2 s a session); CADUCEE_SMTP_FUZZ_EXAMPLES=5000 for a long run.
EXAMPLES = int(os.environ.get("CADUCEE_SMTP_FUZZ_EXAMPLES", "100"))

PIECES = ["x", "dr.martin", "dr.durand", "@", ".", '"', "\\", " ", "<", ">", ":", ",", "%", "!", "é"]
PIECES += ["a.mssante.test", "b.mssante.test", "evil.example", "[127.0.0.1]", "[IPv6:::1]", "-", "_"]
PATH = st.lists(
    st.one_of(st.sampled_from(PIECES).map(str.encode), st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\x7f"])),
    max_size=8,
).map(b"".join)
WORD = st.sampled_from([b"", b"x", b"mx.b.mssante.test", b"\xff\xfe", b"a b", b"=", b"\t"])
PARAM = st.sampled_from(
    [
        b"",
        b" SIZE=10",
        b" SIZE=x",
        b" BODY=8BITMIME",
        b" SMTPUTF8",
        b" RET=HDRS",
        b" ENVID=a+2Bb",
        b" X=\xff",
        b" NOTIFY=SUCCESS,FAILURE",
        b" NOTIFY=NEVER,DELAY",
        b" ORCPT=rfc822;a@b",
        b" ORCPT=x",
        b" SIZE=" + b"9" * 30,
    ]
)
PLAIN = base64.b64encode(f"\0{MARTIN}\0{PASSWORD}".encode())


@st.composite
def command(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return b"MAIL FROM:<" + draw(PATH) + b">" + draw(PARAM)
    if kind == 1:
        return b"RCPT TO:<" + draw(PATH) + b">" + draw(PARAM)
    if kind == 2:
        return draw(
            st.sampled_from(
                [b"MAIL FROM:<dr.durand@b.mssante.test>", b"MAIL FROM:<" + MARTIN.encode() + b">"]
            )
        )
    if kind == 3:
        return draw(
            st.sampled_from([b"RCPT TO:<" + MARTIN.encode() + b">", b"RCPT TO:<dr.autre@a.mssante.test>"])
        )
    if kind == 4:
        return b"BDAT " + draw(
            st.sampled_from([b"0", b"3", b"12 LAST", b"x", b"", b"-1", b"1 LAST x", b"9" * 20])
        )
    if kind == 5:
        return draw(st.sampled_from([b"DATA", b"DATA x", b"Subject: x", b".", b"..", b"", b"RSET", b"NOOP"]))
    if kind == 6:
        return draw(st.sampled_from([b"EHLO ", b"HELO ", b"VRFY ", b"EXPN ", b"HELP ", b"NOOP "])) + draw(
            WORD
        )
    if kind == 7:
        mech = draw(st.sampled_from([b"PLAIN", b"LOGIN", b"XOAUTH2", b"plain", b""]))
        return (
            b"AUTH " + mech + draw(st.sampled_from([b"", b" " + PLAIN, b" =", b" ***", b" " + b"A" * 6000]))
        )
    if kind == 8:
        return draw(st.sampled_from([b"*", b"=", PLAIN, b"AAAA", b"\xff"]))  # an AUTH response, maybe
    if kind == 9:
        return draw(st.sampled_from([b"STARTTLS", b"STARTTLS x", b"QUIT x", b"\x16\x03\x01\x02\x00\x01"]))
    if kind == 10:
        return draw(st.binary(max_size=40))
    return draw(st.sampled_from([b"X" * 5000, b"MAIL FROM:<" + b"a" * 300 + b"@b.mssante.test>", b"\x00\r"]))


# One packet: several commands pipelined (each with its CRLF, or a bare LF), or raw octets.
PACKET = st.one_of(
    st.lists(st.tuples(command(), st.sampled_from([b"\r\n", b"\r\n", b"\n"])), min_size=1, max_size=6).map(
        lambda items: b"".join(c + end for c, end in items)
    ),
    st.binary(min_size=1, max_size=300),
)


class Session:
    """A blocking client: the replies it saw, whatever the server did to the connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.lines: list[bytes] = []

    def reply(self) -> bytes:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            self.lines.append(line)
            if line[3:4] != b"-":
                return line

    def rest(self) -> None:
        """The replies until the server answers ``END`` (its 500 quotes the unknown verb) or closes.
        ``END`` follows a line ending, enough octets for a short BDAT chunk and the end of a DATA: the
        session answers it from whatever state the fuzzed input left it in."""
        try:
            self.sock.sendall(b"\r\n" * 8 + b".\r\nRSET\r\n" + END + b"\r\n")
            while line := self.file.readline():
                self.lines.append(line)
                if END in line:
                    break
        except OSError:  # the server closed first; its last replies may be lost with a reset
            pass
        finally:
            self.file.close()
            self.sock.close()


def open_session(mode: str, ports: dict[str, int], peer: ssl.SSLContext, user: ssl.SSLContext) -> Session:
    if mode.startswith("submission"):
        s = Session(
            user.wrap_socket(socket.create_connection(("127.0.0.1", ports["submissions"]), timeout=10))
        )
        s.reply()
        if mode == "submission-auth":
            s.sock.sendall(b"EHLO client.a.mssante.test\r\n")
            s.reply()
            s.sock.sendall(b"AUTH PLAIN " + PLAIN + b"\r\n")
            assert s.reply().startswith(b"235"), s.lines
        return s
    raw = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=10)
    s = Session(raw)
    s.reply()
    if mode == "mta-tls":
        raw.sendall(b"EHLO mx.b.mssante.test\r\nSTARTTLS\r\n")
        s.reply()
        assert s.reply().startswith(b"220"), s.lines
        s.file.close()
        s = Session(peer.wrap_socket(raw))
        s.sock.sendall(b"EHLO mx.b.mssante.test\r\n")
        s.reply()
    return s


async def test_fuzzed_sessions_always_get_replies(
    tmp_path: Path, pki: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    env = await start_env(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path}/caducee.db", pki, auth={"max_failures_per_ip": 1_000_000}
    )
    try:
        peer, user = env.peer(), env.user()
        seen: list[bytes] = []

        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(
            st.sampled_from(["mta-tls", "mta-plain", "submission", "submission-auth"]),
            st.lists(PACKET, max_size=4),
        )
        def fuzz(mode: str, packets: list[bytes]) -> None:
            s = open_session(mode, env.ports, peer, user)
            try:
                for packet in packets:
                    s.sock.sendall(packet)
            except OSError:
                pass  # the server closed already (QUIT, a bad BDAT, a failed STARTTLS)
            s.rest()
            seen.extend(s.lines)
            for line in s.lines:
                assert REPLY.match(line) and line.endswith(b"\r\n"), (mode, packets, s.lines)
                line.decode("utf-8")
                assert not line.startswith(b"451"), (mode, packets, s.lines)

        def fresh() -> bytes:
            s = open_session("submission-auth", env.ports, peer, user)
            s.sock.sendall(b"NOOP\r\n")
            return s.reply()

        await asyncio.to_thread(fuzz)
        assert (await asyncio.to_thread(fresh)).startswith(b"250")
        assert any(line.startswith(b"501 5.1.7") for line in seen)  # the fuzzer did reach the path checks
        # Every refusal is in the audit trail (failed logins as login events, by authentication).
        refusals = [x for x in seen if x[:1] in b"45" and x[3:4] == b" " and x[:3] not in (b"535", b"454")]
        audited = [
            e
            for a in ("mta-refused", "submission-refused")
            for e in await env.rt.audit.events(action=a, limit=10**6)
        ]
        assert len(audited) >= len(refusals) > 100
        bad = [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info or "Traceback" in r.getMessage()
        ]
        assert not bad, [(r.name, r.getMessage(), r.exc_info) for r in bad[:5]]
    finally:
        await env.close()
