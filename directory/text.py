"""Text folding shared by the importer, search and LDAP: one definition of "the same name".

Accents, case and punctuation are dropped (``Gaëlle O'CONNOR`` → ``gaelle o connor``) so that a query typed
on any keyboard finds the entry, and so that both databases can compare plain ASCII-ish strings without
collation or ``unaccent`` support.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_LIGATURES = str.maketrans({"œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae", "ß": "ss"})
_SEPARATORS = re.compile(r"[^0-9a-z]+")


@functools.lru_cache(maxsize=65536)
def fold(value: str) -> str:
    """Lower-case, accent-free, words separated by single spaces."""
    decomposed = unicodedata.normalize("NFKD", value.translate(_LIGATURES))
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    return _SEPARATORS.sub(" ", plain).strip()


def words(value: str) -> list[str]:
    """The folded words of a query, without duplicates, in order."""
    return list(dict.fromkeys(fold(value).split()))
