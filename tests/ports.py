"""Loopback ports for servers a test configures before starting them.

A port picked by binding port 0 and closing the socket lies in the kernel's ephemeral range, where the
next port-0 bind (a server's own ``127.0.0.1:0`` listener, any outgoing connection) may be handed the
same number before the server binds it: the server then fails with EADDRINUSE. Ports are chosen below
the ephemeral range instead, checked free by a bind, and never handed out twice in one test run.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback TCP port nobody listens on, outside the ephemeral range."""
    high = _ephemeral_low() - 1
    low = 10000 if high > 12000 else 1024
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")
