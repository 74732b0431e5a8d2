"""Framing tests for the incremental receiver: literals, limits, modes, recovery."""

import pytest

from mailserver.imap.protocol.commands import Append, Idle, Login, Noop, Search
from mailserver.imap.protocol.receiver import (
    NEED_DATA,
    PAUSED,
    AuthCancel,
    AuthResponse,
    BadCommand,
    Command,
    IdleDone,
    NeedContinuation,
    Receiver,
    ReceiverMode,
)


def drain(r: Receiver) -> list:
    """Pull events, accepting every acceptable synchronising literal."""
    events = []
    while True:
        ev = r.next_event()
        if ev is NEED_DATA:
            return events
        if ev is PAUSED:
            raise AssertionError("paused without decision")
        events.append(ev)
        if isinstance(ev, NeedContinuation):
            if ev.too_large:
                r.reject_literal()
            else:
                r.accept_literal()


def feed(data: bytes, **kwargs) -> list:
    r = Receiver(**kwargs)
    r.receive_data(data)
    return drain(r)


def test_simple_and_pipelined() -> None:
    events = feed(b"a NOOP\r\nb LOGIN u p\nc NOOP\r\n")
    assert events == [Command("a", Noop()), Command("b", Login("u", "p")), Command("c", Noop())]


def test_need_data_until_line_complete() -> None:
    r = Receiver()
    r.receive_data(b"a NO")
    assert r.next_event() is NEED_DATA
    r.receive_data(b"OP\r")
    assert r.next_event() is NEED_DATA
    r.receive_data(b"\n")
    assert r.next_event() == Command("a", Noop())
    assert r.next_event() is NEED_DATA


def test_sync_literal_continuation_flow() -> None:
    r = Receiver()
    r.receive_data(b"a LOGIN {4}\r\n")
    ev = r.next_event()
    assert ev == NeedContinuation("a", 4, False, False)
    assert r.next_event() is PAUSED
    r.accept_literal()
    assert r.next_event() is NEED_DATA
    r.receive_data(b"fred {2}\r\n")
    assert r.next_event() == NeedContinuation("a", 2, False, False)
    r.accept_literal()
    r.receive_data(b"pw\r\n")
    assert r.next_event() == Command("a", Login("fred", "pw"))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_literals_split_at_any_boundary(chunk: int) -> None:
    wire = (
        b"A1 APPEND INBOX (\\Seen) {12+}\r\nhello\r\nworld ~{3}\r\n\x00\r\n\r\n"
        b"A2 SEARCH TEXT {2+}\r\n\r\n\r\n"
    )
    r = Receiver()
    events = []
    for i in range(0, len(wire), chunk):
        r.receive_data(wire[i : i + chunk])
        events.extend(drain(r))
    assert events[0] == NeedContinuation("A1", 3, True, False)
    append = events[1].body
    assert isinstance(append, Append)
    assert [m.data for m in append.messages] == [b"hello\r\nworld", b"\x00\r\n"]
    assert isinstance(events[2].body, Search)
    assert events[2].body.criteria.value == "\r\n"
    assert len(events) == 3


def test_oversized_sync_literal_rejected_then_recovers() -> None:
    r = Receiver(max_literal_size=10)
    r.receive_data(b"a APPEND INBOX {11}\r\nb NOOP\r\n")
    ev = r.next_event()
    assert ev == NeedContinuation("a", 11, False, True)
    with pytest.raises(RuntimeError):
        r.accept_literal()
    r.reject_literal()
    assert r.next_event() == Command("b", Noop())


def test_session_may_refuse_acceptable_literal() -> None:
    r = Receiver()
    r.receive_data(b"a APPEND INBOX {5}\r\n")
    assert isinstance(r.next_event(), NeedContinuation)
    r.reject_literal()
    r.receive_data(b"b NOOP\r\n")
    assert r.next_event() == Command("b", Noop())


def test_command_size_limit_counts_all_literals() -> None:
    r = Receiver(max_command_size=100, max_literal_size=80)
    r.receive_data(b"a APPEND INBOX {60}\r\n")
    assert r.next_event().too_large is False
    r.accept_literal()
    r.receive_data(b"x" * 60 + b" {60}\r\n")
    assert r.next_event().too_large is True


def test_literal_minus_limit() -> None:
    big = b"x" * 5000
    events = feed(b"a APPEND INBOX {5000+}\r\n" + big + b" {3+}\r\nabc\r\nb NOOP\r\n")
    assert events == [
        BadCommand("a", "non-synchronizing literal too large", code="TOOBIG"),
        Command("b", Noop()),
    ]
    events = feed(b"a APPEND INBOX {5000+}\r\n" + big + b"\r\n", nonsync_literal_limit=None)
    assert events[0].body.messages[0].data == big


def test_oversized_nonsync_literal_skipped_across_chunks() -> None:
    r = Receiver(nonsync_literal_limit=4)
    r.receive_data(b"a LOGIN {10+}\r\n01234")
    assert r.next_event() == BadCommand("a", "non-synchronizing literal too large", code="TOOBIG")
    assert r.next_event() is NEED_DATA
    r.receive_data(b"56789 pw\r\nb NOOP\r\n")
    assert r.next_event() == Command("b", Noop())


def test_line_too_long_with_and_without_newline() -> None:
    events = feed(b"a LOGIN " + b"x" * 200 + b"\r\nb NOOP\r\n", max_line_length=100)
    assert events == [BadCommand("a", "line too long", code="TOOBIG"), Command("b", Noop())]
    r = Receiver(max_line_length=100)
    r.receive_data(b"tag1 " + b"y" * 300)
    assert r.next_event() == BadCommand("tag1", "line too long", code="TOOBIG")
    assert r.buffered == 0
    r.receive_data(b"y" * 300)
    assert r.next_event() is NEED_DATA
    r.receive_data(b"yy\r\nb NOOP\r\n")
    assert r.next_event() == Command("b", Noop())


def test_syntax_errors_carry_tag_or_none() -> None:
    events = feed(b"a1 FETCH\r\n+++\r\n\r\nb2 SEARCH CHARSET FOO ALL\r\n")
    assert events[0].tag == "a1" and events[0].status == "BAD"
    assert events[1].tag is None
    assert events[2] == BadCommand("b2", "unsupported charset FOO", "NO", "BADCHARSET (US-ASCII UTF-8)")
    assert len(events) == 3


def test_binary_literal_flag_in_continuation() -> None:
    r = Receiver()
    r.receive_data(b"a APPEND INBOX ~{3}\r\n")
    assert r.next_event() == NeedContinuation("a", 3, True, False)


def test_idle_mode() -> None:
    r = Receiver()
    r.receive_data(b"a IDLE\r\n")
    assert r.next_event() == Command("a", Idle())
    r.set_mode(ReceiverMode.IDLE, "a")
    r.receive_data(b"done\r\nb NOOP\r\n")
    assert r.next_event() == IdleDone()
    assert r.mode is ReceiverMode.COMMAND
    assert r.next_event() == Command("b", Noop())
    r.set_mode(ReceiverMode.IDLE, "c")
    r.receive_data(b"d NOOP\r\n")
    assert r.next_event() == BadCommand("c", "expected DONE")
    assert r.mode is ReceiverMode.COMMAND


def test_authenticate_mode() -> None:
    r = Receiver()
    r.set_mode(ReceiverMode.AUTHENTICATE, "a")
    r.receive_data(b"AGZvbwBiYXI=\r\n\r\n*\r\n")
    assert r.next_event() == AuthResponse(b"\x00foo\x00bar")
    assert r.mode is ReceiverMode.AUTHENTICATE
    assert r.next_event() == AuthResponse(b"")
    assert r.next_event() == AuthCancel()
    assert r.mode is ReceiverMode.COMMAND
    r.set_mode(ReceiverMode.AUTHENTICATE, "z")
    r.receive_data(b"not base64!\r\n")
    assert r.next_event() == BadCommand("z", "invalid base64 in SASL response")
    assert r.mode is ReceiverMode.COMMAND


def test_mode_change_refused_mid_command() -> None:
    r = Receiver()
    r.receive_data(b"a LOGIN {3}\r\n")
    r.next_event()
    with pytest.raises(RuntimeError):
        r.set_mode(ReceiverMode.IDLE)
    with pytest.raises(RuntimeError):
        Receiver().accept_literal()


def test_utf8_flag_reaches_parser() -> None:
    r = Receiver()
    r.receive_data(b'a SELECT "caf\xc3\xa9"\r\n')
    assert isinstance(r.next_event(), BadCommand)
    r.utf8 = True
    r.receive_data(b'a SELECT "caf\xc3\xa9"\r\n')
    assert r.next_event().body.mailbox == "café"
