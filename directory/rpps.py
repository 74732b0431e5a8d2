"""RPPS identifiers: 11 digits, the last one a Luhn check digit."""

from __future__ import annotations


class InvalidRPPS(ValueError):
    """The identifier is not a valid RPPS number; the message says why."""


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of digits, check digit last."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def validate_rpps(value: str) -> str:
    rpps = value.strip()
    if len(rpps) != 11 or not rpps.isascii() or not rpps.isdigit():
        raise InvalidRPPS(f"an RPPS identifier has 11 digits, got {value!r}")
    if not luhn_ok(rpps):
        raise InvalidRPPS(f"{value!r}: wrong Luhn check digit")
    return rpps
