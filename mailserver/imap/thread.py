"""IMAP THREAD (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES over cached metadata.

The result is a list of root nodes ``(number | None, children)`` as
:func:`mailserver.imap.protocol.encoder.thread` renders them; ``None`` is a dummy
(a missing parent), which after pruning only ever appears at the top level. Everything
is iterative: a hostile mailbox with ten-thousand-deep reference chains cannot exhaust
the Python stack here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import count, pairwise
from operator import attrgetter

from .protocol.encoder import ThreadNode
from .search import MessageView, SearchError, _headers
from .sort import collation_keys, sent_date

__all__ = ["ThreadNode", "thread"]


class _Container:
    """A node of the JWZ tree; ``view`` is None for a dummy.

    ``children`` is an insertion-ordered dict used as a set, so that re-parenting is O(1)
    even when one message has tens of thousands of replies.
    """

    __slots__ = ("children", "parent", "view")

    def __init__(self, view: MessageView | None = None) -> None:
        self.view = view
        self.parent: _Container | None = None
        self.children: dict[_Container, None] = {}

    def is_ancestor_of(self, other: _Container) -> bool:
        """True when ``other`` is this node or below it (linking would make a loop)."""
        if not self.children:  # The usual case, answered without walking up a long chain.
            return other is self
        node: _Container | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def unlink(self) -> None:
        if self.parent is not None:
            del self.parent.children[self]
            self.parent = None

    def adopt(self, child: _Container) -> None:
        child.unlink()
        child.parent = self
        self.children[child] = None

    def first_view(self) -> MessageView:
        """The message itself, or for a dummy its first child's (dummies keep children)."""
        node = self
        while node.view is None:
            node = next(iter(node.children))
        return node.view


SortKey = Callable[[_Container], tuple[datetime, int]]


def _order(dates: dict[int, datetime]) -> SortKey:
    """Sent date, then sequence number (RFC 5256 §2.2 tie-break); a dummy takes its first child's."""

    def key(node: _Container) -> tuple[datetime, int]:
        view = node.first_view()
        return dates[view.seq], view.seq

    return key


def _base_subject(view: MessageView) -> str:
    """Base subjects compare under the SORT collation (RFC 5256 §3 step 5 note, §7)."""
    return collation_keys(view)["subject"]


def _sort_children(node: _Container, key: SortKey) -> None:
    node.children = dict.fromkeys(sorted(node.children, key=key))


def _ordered_subject(messages: list[MessageView], dates: dict[int, datetime]) -> list[_Container]:
    """RFC 5256 §3 ORDEREDSUBJECT: one thread per base subject, later messages are children
    of the earliest; threads ordered by the date of their first message."""
    threads: dict[str, _Container] = {}
    for view in sorted(messages, key=lambda v: (dates[v.seq], v.seq)):
        subject = _base_subject(view)
        root = threads.get(subject)
        if root is None:
            threads[subject] = _Container(view)
        else:
            root.adopt(_Container(view))
    return list(threads.values())


def _link_references(messages: list[MessageView]) -> list[_Container]:
    """RFC 5256 §3 REFERENCES steps 1 and 2: containers linked by Message-ID, no loops."""
    table: dict[str, _Container] = {}
    containers: list[_Container] = []
    unique = count()
    for view in messages:
        container = _Container(view)
        message_id = _headers(view).get("message_id")
        if not message_id or message_id in table:
            # Step 1: a missing or duplicate Message-ID gets a unique one (first occurrence wins).
            message_id = f"\0{next(unique)}"
        table[message_id] = container
        containers.append(container)

    def lookup(message_id: str) -> _Container:
        found = table.get(message_id)
        if found is None:
            found = table[message_id] = _Container()  # Step 1.A: dummy for an unseen ID.
        return found

    for container, view in zip(containers, messages, strict=True):
        h = _headers(view)
        refs = list(h.get("references") or [])
        if not refs and h.get("in_reply_to"):
            refs = [h["in_reply_to"]]
        chain = [lookup(r) for r in refs]
        for parent, child in pairwise(chain):  # Step 1.A: keep existing links, never loop.
            if child.parent is None and not child.is_ancestor_of(parent):
                parent.adopt(child)
        # Step 1.B: the last reference is the parent (or none), replacing any earlier guess.
        container.unlink()
        if chain and not container.is_ancestor_of(chain[-1]):
            chain[-1].adopt(container)
    # Step 2: parentless containers are the thread heads.
    return [c for c in table.values() if c.parent is None]


def _walk(roots: list[_Container]) -> list[_Container]:
    """Every node, each after all of its descendants (iterative post-order)."""
    order: list[_Container] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def _prune(roots: list[_Container]) -> list[_Container]:
    """Step 3: drop childless dummies and promote a dummy's children to its level, but not
    to the top level unless there is only one (children are pruned before their parent)."""
    for node in _walk(roots):
        node.children = dict.fromkeys(_pruned(node, list(node.children), top=False))
    return _pruned(None, roots, top=True)


def _pruned(parent: _Container | None, nodes: list[_Container], *, top: bool) -> list[_Container]:
    out: list[_Container] = []
    for node in nodes:
        if node.view is not None:
            out.append(node)
        elif node.children and (not top or len(node.children) == 1):
            for child in node.children:
                child.parent = parent
            out.extend(node.children)
        elif node.children:
            out.append(node)
    return out


def _merge_subjects(roots: list[_Container]) -> list[_Container]:
    """Step 5: gather thread heads sharing a base subject (dummies use their first child's)."""

    def subject(node: _Container) -> tuple[str, bool]:
        view = node.first_view()
        return _base_subject(view), bool(_headers(view).get("subject_is_reply"))

    table: dict[str, _Container] = {}
    for node in roots:  # Step 5.B: prefer a dummy, then a non-reply, as the thread holder.
        text, is_reply = subject(node)
        if not text:
            continue
        held = table.get(text)
        if held is None or (
            held.view is not None and (node.view is None or (subject(held)[1] and not is_reply))
        ):
            table[text] = node
    out: list[_Container] = []
    for node in roots:  # Step 5.C
        if node.parent is not None:  # Already merged under a new dummy.
            continue
        text, is_reply = subject(node)
        held = table.get(text) if text else None
        if held is None or held is node:
            out.append(node)
        elif held.view is None and node.view is None:
            for child in list(node.children):
                held.adopt(child)
        elif held.view is None or (is_reply and not subject(held)[1]):
            held.adopt(node)
        else:
            dummy = _Container()
            dummy.adopt(held)
            dummy.adopt(node)
            table[text] = dummy
            out.append(dummy)
    return [node for node in out if node.parent is None]


def _sort_siblings(roots: list[_Container], key: SortKey) -> list[_Container]:
    """Step 6: every set of siblings by sent date, deepest first so dummies see sorted children."""
    for node in _walk(roots):
        _sort_children(node, key)
    return sorted(roots, key=key)


def _references(messages: list[MessageView], key: SortKey) -> list[_Container]:
    """RFC 5256 §3 THREAD=REFERENCES, steps 1 to 6."""
    roots = _prune(_link_references(messages))
    for root in roots:  # Step 4: a dummy sorts by its first child.
        if root.view is None:
            _sort_children(root, key)
    roots.sort(key=key)
    return _sort_siblings(_merge_subjects(roots), key)


def _nodes(roots: list[_Container], use_uid: bool) -> list[ThreadNode]:
    """Convert to encoder nodes without recursion."""
    out: list[ThreadNode] = []
    stack: list[tuple[_Container, list[ThreadNode]]] = [(r, out) for r in reversed(roots)]
    while stack:
        node, into = stack.pop()
        number = None if node.view is None else (node.view.uid if use_uid else node.view.seq)
        kids: list[ThreadNode] = []
        into.append((number, kids))
        stack.extend((child, kids) for child in reversed(node.children))
    return out


def thread(algorithm: str, messages: list[MessageView], use_uid: bool = False) -> list[ThreadNode]:
    """THREAD response nodes for ``messages``, numbered by UID when ``use_uid`` (UID THREAD)."""
    messages = sorted(messages, key=attrgetter("seq"))  # Step 1: duplicates keep the lowest number.
    dates = {view.seq: sent_date(view) for view in messages}
    name = algorithm.upper()
    if name == "ORDEREDSUBJECT":
        return _nodes(_ordered_subject(messages, dates), use_uid)
    if name == "REFERENCES":
        return _nodes(_references(messages, _order(dates)), use_uid)
    raise SearchError(f"unsupported THREAD algorithm {algorithm}")
