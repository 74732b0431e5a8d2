"""Sans-I/O IMAP protocol layer: framing, command grammar, response encoding.

No sockets, asyncio or storage here, so the whole layer can be unit-tested and fuzzed
alone. The session drives a :class:`Receiver` and writes what :mod:`.encoder` builds.
"""

from .commands import CommandBody
from .grammar import ParseError, parse_command, split_literals
from .mutf7 import MUTF7Error
from .receiver import (
    NEED_DATA,
    PAUSED,
    AuthCancel,
    AuthResponse,
    BadCommand,
    Command,
    Event,
    IdleDone,
    NeedContinuation,
    Receiver,
    ReceiverMode,
)
from .sequence import SequenceSet

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthCancel",
    "AuthResponse",
    "BadCommand",
    "Command",
    "CommandBody",
    "Event",
    "IdleDone",
    "MUTF7Error",
    "NeedContinuation",
    "ParseError",
    "Receiver",
    "ReceiverMode",
    "SequenceSet",
    "parse_command",
    "split_literals",
]
