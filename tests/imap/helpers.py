"""A small literal-aware IMAP client for exact protocol assertions (and the scripted conversations).

Server responses are returned as *logical lines*: a literal ``{n}`` is followed inline by its
n octets with CR and LF shown as ``\\r`` / ``\\n``, so one response is always one string.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any

_LITERAL = re.compile(rb"~?\{(\d+)\}\r\n\Z")


def tls_client(pki: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.peer_ca))
    ctx.check_hostname = False
    return ctx


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0
        self.greeting = ""

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext | None = None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, limit=64 * 1024 * 1024)
        client = cls(reader, writer)
        client.greeting = await client.line()
        return client

    async def line(self, wait: float = 10) -> str:
        """One logical response line (see the module docstring)."""
        out = bytearray()
        while True:
            chunk = await asyncio.wait_for(self.reader.readline(), wait)
            if not chunk:
                raise ConnectionError("server closed the connection")
            m = _LITERAL.search(chunk)
            if m is None:
                out += chunk.rstrip(b"\r\n")
                return out.decode("utf-8", "surrogateescape")
            out += chunk[:-2]
            data = await asyncio.wait_for(self.reader.readexactly(int(m.group(1))), wait)
            out += data.replace(b"\r", b"\\r").replace(b"\n", b"\\n")

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    def tag(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    async def command(self, text: str, wait: float = 10) -> list[str]:
        """Send ``tag text`` and return every line up to and including the tagged completion."""
        tag = self.tag()
        await self.send(f"{tag} {text}\r\n")
        return await self.until(tag, wait)

    async def until(self, tag: str, wait: float = 10) -> list[str]:
        lines = []
        while True:
            line = await self.line(wait)
            lines.append(line)
            if line.startswith(tag + " "):
                return lines

    @staticmethod
    def tag_of(lines: list[str]) -> str:
        """The tag of a completed command, from its tagged completion (the last line)."""
        return lines[-1].split(" ", 1)[0]

    async def ok(self, text: str) -> list[str]:
        lines = await self.command(text)
        assert lines[-1].split(" ", 2)[1] == "OK", lines
        return lines

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        await self.ok("STARTTLS")
        await self.writer.start_tls(ctx)

    async def login(self, user: str, password: str) -> list[str]:
        return await self.ok(f'LOGIN "{user}" "{password}"')

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
