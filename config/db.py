"""Model instances from hand-written SELECTs, for the few reads where the ORM's query building is the cost.

Compiling a queryset costs about a millisecond of Python (more with select_related); a read that runs
four indexed queries answering in well under a millisecond each spends most of its time there.
`ModelRows` gives the model's columns for a SELECT list and turns the matching slice of a result row
into an instance with the backend's converters applied (JSON decoded, datetimes made aware), exactly
as the ORM would load it.
"""

from collections.abc import Callable, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model


class ModelRows:
    """Columns and row loading for one model (every concrete field, in field order)."""

    def __init__(self, model: type[Model]) -> None:
        self.model = model
        self.fields = list(model._meta.concrete_fields)
        self.attnames = [f.attname for f in self.fields]
        self.width = len(self.fields)
        self._pk_index = self.attnames.index(model._meta.pk.attname)
        self._converters: list[tuple[int, list[Callable[..., Any]], Any]] | None = None

    @property
    def table(self) -> str:
        return connection.ops.quote_name(self.model._meta.db_table)

    def columns(self, alias: str) -> str:
        """`alias."col", ...` for a SELECT list, in the order `load` expects."""
        qn = connection.ops.quote_name
        return ", ".join(f"{alias}.{qn(f.column)}" for f in self.fields)

    def _converter_plan(self) -> list[tuple[int, list[Callable[..., Any]], Any]]:
        if self._converters is None:  # the connection's vendor is known by now
            plan = []
            for index, field in enumerate(self.fields):
                column = field.get_col(self.model._meta.db_table)
                converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
                if converters:
                    plan.append((index, converters, column))
            self._converters = plan
        return self._converters

    def load(self, row: Sequence[Any], offset: int = 0) -> Model:
        """The instance from row[offset : offset + width]."""
        values = list(row[offset : offset + self.width])
        for index, converters, column in self._converter_plan():
            value = values[index]
            for converter in converters:
                value = converter(value, column, connection)
            values[index] = value
        return self.model.from_db(connection.alias, self.attnames, values)

    def is_null(self, row: Sequence[Any], offset: int = 0) -> bool:
        """True when a LEFT JOIN found no row (the primary key column is NULL)."""
        return row[offset + self._pk_index] is None


def placeholders(values: Sequence[Any]) -> str:
    """`%s, %s, ...` for an IN list of these values."""
    return ", ".join(["%s"] * len(values))


def advisory_xact_lock(key: str, *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Hold a lock on `key` until the current transaction ends (PostgreSQL advisory lock). A no-op elsewhere:
    SQLite runs one write transaction at a time."""
    if connections[using].vendor == "postgresql":
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])


def connection_release() -> None:
    """Close this thread's database connection unless a transaction holds it.

    For long-lived responses (an SSE stream waiting on Redis for minutes): with persistent connections
    (`DATABASE_CONN_MAX_AGE`) an idle stream would otherwise keep one of PostgreSQL's `max_connections` for its
    whole life, so `workers x threads` open streams could exhaust them. The next query opens a new connection.
    """
    if not connection.in_atomic_block:
        connection.close()
