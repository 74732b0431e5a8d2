"""The LIST/LSUB wildcard matcher: the same answers as a reference, in time linear in the name."""

from __future__ import annotations

import time
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.imap.wildcard import Pattern, canonical


def reference(pattern: str, name: str) -> bool:
    """RFC 9051 §6.3.9 read literally, by dynamic programming over (pattern, name) positions."""

    @cache
    def at(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(name)
        tok = pattern[i]
        if tok == "*":
            return at(i + 1, j) or (j < len(name) and at(i, j + 1))
        if tok == "%":
            return at(i + 1, j) or (j < len(name) and name[j] != "/" and at(i, j + 1))
        return j < len(name) and name[j] == tok and at(i + 1, j + 1)

    return at(0, 0)


PATTERNS = st.text(alphabet="ab/*%", max_size=12)
NAMES = st.text(alphabet="ab/", max_size=12)


@settings(max_examples=1500, deadline=None)
@given(PATTERNS, NAMES)
def test_matches_like_the_reference(pattern: str, name: str) -> None:
    assert Pattern(pattern, "/").match(name) == reference(pattern, name)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=8), PATTERNS)
def test_any_characters_match_themselves(literal: str, pattern: str) -> None:
    """Characters that mean something to a regex or to IMAP elsewhere are plain characters here."""
    name = literal.replace("*", "").replace("%", "")
    assert Pattern(name, "/").match(name)
    assert Pattern(name + pattern, "/").match(name) == reference(pattern, "")


def test_adversarial_patterns_cost_linear_time() -> None:
    """The pattern of issue 13 took 10.6 s as a regex (``.*a.*a…ab``): backtracking is exponential in
    the stars. Here each is one pass over the name; a thousand of them take well under a second of
    this process's CPU (CPU time, so other load on the machine does not count)."""
    cases = [
        ("*a*a*a*a*a*a*a*a*a*a*a*a*ab", "a" * 32, False),
        ("*a" * 100 + "*b*", "a" * 255, False),
        ("%a" * 100 + "%", "a" * 254 + "/", False),
        ("*a" * 100 + "*", "a" * 255, True),
    ]
    for pattern, name, expected in cases:
        compiled = Pattern(pattern, "/")
        start = time.process_time()
        for _ in range(1000):
            assert compiled.match(name) is expected
        assert time.process_time() - start < 2.0, pattern


def test_canonical_joins_reference_and_pattern() -> None:
    assert canonical("", "inbox", "/") == "INBOX"
    assert canonical("", "InBox/%", "/") == "INBOX/%"
    assert canonical("", "inboxes", "/") == "inboxes"
    assert canonical("Projets", "%", "/") == "Projets/%"
    assert canonical("Projets/", "%", "/") == "Projets/%"
    assert canonical("Projets", "/x", "/") == "Projets/x"
