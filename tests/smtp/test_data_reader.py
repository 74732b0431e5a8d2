"""``read_data``: the message after DATA, however the bytes arrive (RFC 5321 §4.1.1.4, §4.5.2)."""

from __future__ import annotations

import asyncio

import pytest

from mailserver.smtp.server import read_data

BODY = (
    b"Subject: test\r\n\r\nFirst sentence.\r\n..leading dot\r\n.\r\n"[:-3]  # a stuffed line, not the end
    + b"last line ends with a dot.\r\n"
    + b"x" * 150
    + b".\r\n"
)


async def _read(stream: bytes, split: int, limit: int = 64, size: int = 0, line: int = 1000) -> tuple:
    """Feed ``stream`` to a StreamReader ``split`` octets at a time; the result and what is left."""
    reader = asyncio.StreamReader(limit=limit)
    ticks: list[None] = []

    async def feed() -> None:
        for i in range(0, len(stream), split):
            reader.feed_data(stream[i : i + split])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    data, error = await read_data(reader, size, line, lambda: ticks.append(None))
    await feeder
    return data, error, await reader.read(), len(ticks)


@pytest.mark.parametrize("split", [1, 2, 3, 5, 7, 64, 100000])
async def test_message_then_pipelined_command(split: int) -> None:
    data, error, rest, ticks = await _read(BODY + b"\r\n.\r\nQUIT\r\n", split)
    assert error is None and rest == b"QUIT\r\n" and ticks >= 1
    assert data == BODY.replace(b"\r\n..", b"\r\n.") + b"\r\n"


@pytest.mark.parametrize("split", [1, 2, 100])
async def test_empty_message_and_dot_first_line(split: int) -> None:
    assert (await _read(b".\r\nNOOP\r\n", split))[:3] == (b"", None, b"NOOP\r\n")
    assert (await _read(b"..x\r\n.\r\n", split))[:3] == (b".x\r\n", None, b"")
    assert (await _read(b"a\r\n.\r\n", split))[:3] == (b"a\r\n", None, b"")


async def test_dot_not_at_line_start_does_not_end() -> None:
    data, error, rest, _ = await _read(b"a.\r\nb .\r\n\n.\r\nc\r\n.\r\n", 3)
    assert (data, error, rest) == (b"a.\r\nb .\r\n\n.\r\nc\r\n", None, b"")


async def test_too_large_is_read_to_the_end_then_refused() -> None:
    data, error, rest, _ = await _read(b"y" * 70 + b"\r\n" + b"z" * 500 + b"\r\n.\r\nNOOP\r\n", 9, size=300)
    assert data == b"" and error is not None and error.startswith("552 5.3.4") and rest == b"NOOP\r\n"


async def test_line_too_long_is_read_to_the_end_then_refused() -> None:
    data, error, rest, _ = await _read(b"ok\r\n" + b"w" * 99 + b"\r\n.\r\nNOOP\r\n", 7, line=100)
    assert data == b"" and error is not None and error.startswith("500 5.5.2") and rest == b"NOOP\r\n"
    assert (await _read(b"ok\r\n" + b"w" * 98 + b"\r\n.\r\n", 7, line=100))[1] is None


async def test_client_gone_mid_message() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await _read(b"Subject: cut\r\nno end", 4)
