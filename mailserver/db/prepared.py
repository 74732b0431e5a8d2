"""Core statements of the hot paths (delivery, IMAP), run straight on the DB-API cursor.

SQLAlchemy's per-execution work (execution context, parameter and result set-up) costs several times
what the database itself spends on these few small indexed statements: on SQLite, in a group commit,
it ran under the GIL the event loop needs; on PostgreSQL it was a quarter of the IMAP server's CPU
under load (issue 14). ``Prepared`` compiles a statement once per dialect (parameter order and bind
processors, so stored values are exactly what SQLAlchemy would store) and executes it on the
connection's DB-API cursor (sqlite3's, or SQLAlchemy's adapter of asyncpg, which keeps its own cache
of server-side prepared statements); a SELECT's rows go through its columns' result processors (a
stored datetime comes back as SQLAlchemy would return it). A driver's error is raised as SQLAlchemy
would raise it (``IntegrityError``, ``OperationalError``...), a lost connection invalidated as it would.

Statements without expanding parameters only; SQLAlchemy's statement events do not see these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    """One statement, compiled on first use for each dialect; see the module docstring."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, str], _Plan] = {}

    def _compile(self, dialect: Dialect) -> _Plan:
        key = (dialect.name, dialect.driver)
        plan = self._plans.get(key)
        if plan is None:
            compiled = self.statement.compile(dialect=dialect)
            results = None
            if isinstance(self.statement, Select):
                processors = [
                    c.type.dialect_impl(dialect).result_processor(dialect, None)
                    for c in self.statement.selected_columns
                ]
                results = processors if any(processors) else None
            binds = [
                (name, bind.type.dialect_impl(dialect).bind_processor(dialect), bind.value)
                for name in compiled.positiontup or []
                for bind in (compiled.binds[name],)
            ]
            plan = self._plans[key] = (compiled.string, binds, results)
        return plan

    def _args(self, plan: _Plan, values: Mapping[str, Any]) -> tuple[Any, ...]:
        args = []
        for name, process, fixed in plan[1]:
            value = values.get(name, fixed)
            args.append(process(value) if process else value)
        return tuple(args)

    def rows(self, conn: Connection, values: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Execute once; the rows it returns (RETURNING), as plain tuples."""
        plan = self._compile(conn.dialect)
        args = self._args(plan, values)
        with _cursor(conn, plan[0], args) as cursor:
            cursor.execute(plan[0], args)
            rows = [tuple(row) for row in cursor.fetchall()]
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
        plan = self._compile(conn.dialect)
        args = [self._args(plan, v) for v in values]
        with _cursor(conn, plan[0], args) as cursor:
            cursor.executemany(plan[0], args)


@contextmanager
def _cursor(conn: Connection, sql: str, args: Any) -> Iterator[Any]:
    """The connection's DB-API cursor, closed after use; the driver's errors as SQLAlchemy's."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    cursor = conn.connection.cursor()
    try:
        yield cursor
    except dbapi_error as exc:
        # What SQLAlchemy does for its own statements (a private method, but the one place that does
        # it all): wrap the error, and on a lost connection invalidate it and the pool's older ones,
        # so that the next checkout reconnects instead of failing again.
        conn._handle_dbapi_exception(exc, sql, args, cursor, None)
    finally:
        cursor.close()
