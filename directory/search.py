"""Directory search: accent- and case-insensitive, word-prefix matching, exact surnames first.

Ranking: the surname equal to the whole query, then a surname equal to some words of it (``gaelle
o'connor`` finds the O'CONNORs first), then surnames starting with the first word, then the rest.

Each query word must start a word of the entry's folded ``search_text`` (names, profession, savoir-faire,
service, structure, city, postal code). SQLite answers through the FTS5 table ``dir_search``; PostgreSQL
through ``LIKE '% word%'`` on the same column, served by its trigram GIN index. Liste-rouge and retired
mailboxes are never returned. Only the page of results is loaded with its professional and structure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, column, or_, select, table, text
from sqlalchemy.ext.asyncio import AsyncSession

from directory.models import ACTIVE, DirectoryMailbox, Professional, Structure
from directory.text import fold, words

M = DirectoryMailbox


@dataclass(frozen=True)
class Entry:
    """One directory mailbox as shown to a user (CLI, portal JSON, LDAP)."""

    address: str
    type: str
    display_name: str
    civility: str
    last_name: str
    first_name: str
    rpps: str
    profession: str
    skill: str
    service: str
    organisation: str
    street: str
    postal_code: str
    city: str
    hosted: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def entry_columns() -> list[Any]:
    """The columns ``load_entries`` needs, for callers (LDAP) that build their own WHERE clause."""
    return [
        M.id,
        M.address,
        M.type,
        M.display_name,
        M.service,
        M.postal_code,
        M.hosted,
        Professional.civility,
        Professional.last_name,
        Professional.first_name,
        Professional.rpps,
        Professional.profession_label,
        Professional.skill_label,
        Structure.legal_name,
        Structure.trade_name,
        Structure.street_number,
        Structure.street_number_suffix,
        Structure.street_type,
        Structure.street_name,
        Structure.city,
    ]


def joined(stmt: Any) -> Any:
    return stmt.outerjoin(Professional, Professional.id == M.professional_id).outerjoin(
        Structure, Structure.id == M.structure_id
    )


def to_entry(r: Any) -> Entry:
    street = " ".join(p for p in (r.street_number, r.street_number_suffix, r.street_type, r.street_name) if p)
    return Entry(
        address=r.address,
        type=r.type,
        display_name=r.display_name,
        civility=r.civility or "",
        last_name=r.last_name or "",
        first_name=r.first_name or "",
        rpps=r.rpps or "",
        profession=r.profession_label or "",
        skill=r.skill_label or "",
        service=r.service,
        organisation=r.trade_name or r.legal_name or "",
        street=street,
        postal_code=r.postal_code,
        city=r.city or "",
        hosted=r.hosted,
    )


async def unindex_staged(session: AsyncSession) -> None:
    """Before an import rewrites them: take the staged ``changed`` mailboxes out of the SQLite FTS index.

    The importer is the only writer of ``search_text`` and keeps the external-content FTS5 table in step
    itself, set-based (row triggers cost twenty times more on a bulk import). PostgreSQL's trigram index
    follows the column by itself.
    """
    if session.bind.dialect.name == "sqlite":
        await session.execute(
            text(
                "INSERT INTO dir_search(dir_search, rowid, search_text) "
                "SELECT 'delete', m.id, m.search_text FROM dir_mailbox m "
                "JOIN dir_import_row s ON s.address = m.address WHERE s.change = 'changed'"
            )
        )


async def index_staged(session: AsyncSession) -> None:
    """After an import wrote them: enter the staged ``new`` and ``changed`` mailboxes in the FTS index."""
    if session.bind.dialect.name == "sqlite":
        await session.execute(
            text(
                "INSERT INTO dir_search(rowid, search_text) "
                "SELECT m.id, m.search_text FROM dir_mailbox m "
                "JOIN dir_import_row s ON s.address = m.address WHERE s.change != 'same'"
            )
        )


def visible() -> ColumnElement[bool]:
    """What any user may see: active, not on the liste rouge."""
    return and_(M.status == ACTIVE, M.liste_rouge.is_(False))


_FTS = table("dir_search", column("rowid"))


def _words_like(tokens: list[str]) -> ColumnElement[bool]:
    """Every word starts a word of ``search_text`` (cheap on a few candidate rows; trigram-indexed on PG)."""
    return and_(*(M.search_text.like(f"% {t}%") for t in tokens))


def _starts_with(col: Any, prefix: str) -> ColumnElement[bool]:
    """An index-friendly prefix test on a folded key ([a-z0-9 ] only, so ``{`` sorts after any suffix).

    A range, because SQLite's LIKE ignores case and so skips indexes; on PostgreSQL the keys are
    ``COLLATE "C"`` (migration 0002) so the range and the ordering follow the btree too.
    """
    return and_(col >= prefix, col < prefix + "{")


async def _ids(session: AsyncSession, stmt: Any, found: list[int], limit: int) -> None:
    for i in (await session.execute(stmt.limit(limit + len(found)))).scalars():
        if len(found) >= limit:
            break
        if i not in found:
            found.append(i)


async def search(
    session: AsyncSession,
    query: str,
    *,
    profession: str | None = None,
    city: str | None = None,
    type: str | None = None,
    limit: int = 20,
) -> list[Entry]:
    """Visible mailboxes matching every word of ``query`` and the filters, best first.

    Tiers, each an indexed query stopped at ``limit``: surnames equal to the query, then to some of its
    words (longest first), then surnames starting with its first word, then any other match in index
    order. Each tier walks the ``(name_key, first_key, address)`` index or the full-text index in order
    and stops early: no tier sorts the whole match set, so a frequent word costs no more than a rare one.
    """
    dialect = session.bind.dialect.name
    tokens = words(query)
    filters: list[ColumnElement[bool]] = [visible()]
    if profession:
        filters.append(_starts_with(M.profession_key, fold(profession)))
    if city:
        place = fold(city)
        filters.append(or_(_starts_with(M.city_key, place), M.postal_code == place))
    if type:
        filters.append(M.type == type.upper())
    if not tokens and len(filters) == 1:
        return []
    order = (M.name_key, M.first_key, M.address)
    found: list[int] = []
    if not tokens:
        await _ids(session, select(M.id).where(*filters).order_by(*order), found, limit)
    else:
        matching = _words_like(tokens)
        for size in range(len(tokens), 0, -1):
            for start in range(len(tokens) - size + 1):
                phrase, others = tokens[start : start + size], tokens[:start] + tokens[start + size :]
                exact = select(M.id).where(M.name_key == " ".join(phrase), *filters)
                if others:
                    exact = exact.where(_words_like(others))
                if len(found) < limit:
                    await _ids(session, exact.order_by(M.first_key, M.address), found, limit)
        if len(found) < limit:
            prefix = select(M.id).where(_starts_with(M.name_key, tokens[0]), matching, *filters)
            await _ids(session, prefix.order_by(*order), found, limit)
        if len(found) < limit:
            if dialect == "sqlite":
                fts = " ".join(f'"{t}"*' for t in tokens)
                rest = (
                    select(M.id)
                    .select_from(_FTS.join(M, M.id == _FTS.c.rowid))
                    .where(text("dir_search MATCH :fts").bindparams(fts=fts), *filters)
                )
            else:
                rest = select(M.id).where(matching, *filters)
            await _ids(session, rest, found, limit)
    if not found:
        return []
    rows = {
        r.id: r
        for r in (await session.execute(joined(select(*entry_columns())).where(M.id.in_(found)))).all()
    }
    return [to_entry(rows[i]) for i in found]
