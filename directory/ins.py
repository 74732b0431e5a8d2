"""INS (Identifiant National de Santé) validation: the patient's address is ``INS@patient-domain``.

Layout (15 characters): sex (1), year (2), month (2), birth place (2: département digits, or 2A/2B for
Corsica), commune (3), order (3), key (2). The key is 97 − (first 13 digits mod 97), computing with
2A → 19 and 2B → 18.
"""

from __future__ import annotations

import re


class InvalidINS(ValueError):
    """The INS is malformed; the message says which part is wrong, for the operator or the patient."""


_SHAPE = re.compile(r"[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{8}")


def ins_key(first13: str) -> int:
    """The control key of the first 13 characters (Corsican départements mapped per the NIR rule)."""
    digits = first13.upper().replace("2A", "19").replace("2B", "18")
    return 97 - (int(digits) % 97)


def validate_ins(value: str) -> str:
    """Return the INS in canonical form (upper case) or raise InvalidINS with the precise reason."""
    ins = value.strip().upper()
    if len(ins) != 15:
        raise InvalidINS(f"an INS has 15 characters, {value!r} has {len(ins)}")
    if not _SHAPE.fullmatch(ins):
        raise InvalidINS(
            f"{value!r} is not an INS: expected 15 digits, with 2A or 2B allowed only as the birth place"
        )
    if ins[0] not in "123478":
        raise InvalidINS(
            f"{value!r}: the first digit (sex) must be 1 or 2 (3, 4, 7, 8 for provisional numbers)"
        )
    month = int(ins[3:5])
    if not (1 <= month <= 12 or 20 <= month <= 42 or 50 <= month <= 99):
        raise InvalidINS(f"{value!r}: birth month {ins[3:5]} is not valid")
    expected = ins_key(ins[:13])
    if int(ins[13:]) != expected:
        raise InvalidINS(f"{value!r}: wrong control key {ins[13:]}, expected {expected:02d}")
    return ins
