"""Core statements of the hot paths (delivery, IMAP), run straight on the DB-API cursor on SQLite.

In a group commit SQLAlchemy's per-execution work (execution context, parameter and result set-up)
costs several times what SQLite itself spends on these few small statements, and it runs in the
writer thread under the GIL the event loop needs. ``Prepared`` compiles a statement once per dialect
(parameter order and bind processors, so stored values are exactly what SQLAlchemy would store) and
executes it on the connection's cursor; a SELECT's rows go through its columns' result processors
(a stored datetime comes back as SQLAlchemy would return it). Other engines go through
``Connection.execute`` as usual.

Statements without expanding parameters only; SQLAlchemy's statement events do not see these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Select
from sqlalchemy.sql.expression import Executable

# (SQL, [(parameter name, bind processor, value when not given)], result processor per column or None)
_Plan = tuple[
    str,
    list[tuple[str, Callable[[Any], Any] | None, Any]],
    list[Callable[[Any], Any] | None] | None,
]


class Prepared:
    """One statement, compiled on first use for SQLite; see the module docstring."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._plan: _Plan | None = None

    def _compile(self, dialect: Dialect) -> _Plan:
        if self._plan is None:
            compiled = self.statement.compile(dialect=dialect)
            names = compiled.positiontup or []
            results = None
            if isinstance(self.statement, Select):
                processors = [
                    c.type.dialect_impl(dialect).result_processor(dialect, None)
                    for c in self.statement.selected_columns
                ]
                results = processors if any(processors) else None
            self._plan = (
                compiled.string,
                [
                    (name, compiled.binds[name].type.bind_processor(dialect), compiled.binds[name].value)
                    for name in names
                ],
                results,
            )
        return self._plan

    def _args(self, plan: _Plan, values: Mapping[str, Any]) -> tuple[Any, ...]:
        args = []
        for name, process, fixed in plan[1]:
            value = values.get(name, fixed)
            args.append(process(value) if process else value)
        return tuple(args)

    def rows(self, conn: Connection, values: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Execute once; the rows it returns (RETURNING), as plain tuples."""
        if conn.dialect.name != "sqlite":
            return list(conn.execute(self.statement, dict(values)).all())
        plan = self._compile(conn.dialect)
        cursor = conn.connection.cursor()
        try:
            cursor.execute(plan[0], self._args(plan, values))
            rows = cursor.fetchall()
        finally:
            cursor.close()
        processors = plan[2]
        if processors is None:
            return rows
        return [
            tuple(value if p is None else p(value) for p, value in zip(processors, row, strict=True))
            for row in rows
        ]

    def returned(self, conn: Connection, values: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Execute once per set of values; the first RETURNING column of each, in order (elsewhere than
        SQLite, one multi-row INSERT: the statement must say ``sort_by_parameter_order=True``)."""
        if conn.dialect.name != "sqlite":
            return list(conn.execute(self.statement, [dict(v) for v in values]).scalars())
        return [self.rows(conn, v)[0][0] for v in values]

    def many(self, conn: Connection, values: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per set of values (executemany), returning nothing."""
        if not values:
            return
        if conn.dialect.name != "sqlite":
            conn.execute(self.statement, [dict(v) for v in values])
            return
        plan = self._compile(conn.dialect)
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(plan[0], [self._args(plan, v) for v in values])
        finally:
            cursor.close()
