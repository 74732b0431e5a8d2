"""LIST/LSUB mailbox patterns (RFC 9051 §6.3.9, RFC 3501 §6.3.8): ``*`` matches any run of characters,
``%`` any run without the hierarchy separator, everything else itself.

Not a regular expression: ``re`` backtracks, and ``*a*a*a…ab`` against ``aaaa…`` took seconds on the
event loop. :class:`Pattern` simulates the pattern's automaton instead, all states at once as the bits
of an int: one step per character of the name, so a match costs O(len(name) × len(pattern) / 64)
whatever the input. Runs of wildcards collapse first, so a pattern that can match a name has at most
2·len(name)+1 tokens, and a literal prefix, suffix or length that cannot fit rejects it at once.
"""

from __future__ import annotations

__all__ = ["Pattern", "canonical"]


def canonical(reference: str, pattern: str, separator: str) -> str:
    """The reference and the pattern as one pattern (RFC 9051 §6.3.9): the separator between them is
    implied, and a leading ``INBOX`` is caseless (§5.1)."""
    if reference and not reference.endswith(separator) and not pattern.startswith(separator):
        reference += separator
    full = reference + pattern
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in (separator, "*", "%")):
        full = "INBOX" + full[5:]
    return full


def _tokens(pattern: str) -> list[str]:
    """The pattern with each run of wildcards made one: ``*`` if the run has one, else ``%``."""
    out: list[str] = []
    for ch in pattern:
        if ch in "*%" and out and out[-1] in "*%":
            if ch == "*":
                out[-1] = "*"
        else:
            out.append(ch)
    return out


class Pattern:
    """One canonical pattern, compiled once and matched against many names."""

    __slots__ = (
        "_accept",
        "_literal",
        "_middle",
        "_minimum",
        "_percent",
        "_prefix",
        "_separator",
        "_star",
        "_suffix",
    )

    def __init__(self, pattern: str, separator: str) -> None:
        tokens = _tokens(pattern)
        self._separator = separator
        self._literal: dict[str, int] = {}
        self._star = 0
        self._percent = 0
        for i, tok in enumerate(tokens):
            if tok == "*":
                self._star |= 1 << i
            elif tok == "%":
                self._percent |= 1 << i
            else:
                self._literal[tok] = self._literal.get(tok, 0) | 1 << i
        self._accept = 1 << len(tokens)
        wild = [i for i, tok in enumerate(tokens) if tok in "*%"]
        self._minimum = len(tokens) - len(wild)
        if wild:
            self._prefix = "".join(tokens[: wild[0]])
            self._suffix = "".join(tokens[wild[-1] + 1 :])
        else:
            self._prefix = self._suffix = "".join(tokens)
        # The usual patterns ("*", "Foo/%", "*2") have one wildcard: no automaton is needed.
        self._middle = tokens[wild[0]] if len(wild) == 1 else ""

    def _closure(self, states: int) -> int:
        """A wildcard also matches nothing: its state lets the next token start (never two wildcards
        in a row, so one step suffices)."""
        return states | (states & (self._star | self._percent)) << 1

    def match(self, name: str) -> bool:
        """Whether the whole of ``name`` matches."""
        if len(name) < self._minimum or not name.startswith(self._prefix) or not name.endswith(self._suffix):
            return False
        if not self._star | self._percent:
            return name == self._prefix
        if self._middle == "*":
            return True
        if self._middle == "%":
            return self._separator not in name[len(self._prefix) : len(name) - len(self._suffix)]
        literal, star, percent, separator = self._literal, self._star, self._percent, self._separator
        states = self._closure(1)
        for ch in name:
            # A literal advances on its character; ``*`` stays on any; ``%`` on any but the separator.
            step = ((states & literal.get(ch, 0)) << 1) | (states & star)
            if ch != separator:
                step |= states & percent
            states = self._closure(step)
            if not states:
                return False
        return bool(states & self._accept)
