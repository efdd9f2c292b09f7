"""Time-partitioned storage of steps and their children on PostgreSQL (README "Partitioned storage").

Four tables are RANGE-partitioned together: steps_step by `created_at`, and its children steps_stepmetrics,
steps_message and traces_providertrace by `step_created_at` (the step's created_at; a message without a step: its
own). So one step and everything it owns live in partitions with the same bounds, and a partition of all four can
be dropped at once (steps.retention). Partitions are STEPLENS_PARTITION_DAYS wide, aligned to Monday 1970-01-05
00:00 UTC, and named `<table>_pYYYYMMDD` by their lower bound. Each table also has a DEFAULT partition
(`<table>_default`) so that an insert never fails: a span from years ago, or a clock far ahead.

SQLite (the embedded default) is not partitioned: everything here is a no-op there.
"""

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction

from config.db import advisory_xact_lock

logger = logging.getLogger(__name__)

# (table, partition key). Steps first: what is listed and dropped together, in this order.
PARTITIONED_TABLES: tuple[tuple[str, str], ...] = (
    ("steps_step", "created_at"),
    ("steps_stepmetrics", "step_created_at"),
    ("steps_message", "step_created_at"),
    ("traces_providertrace", "step_created_at"),
)
EPOCH = datetime(1970, 1, 5, tzinfo=UTC)  # a Monday: weekly partitions run Monday to Monday
_LOCK_KEY = "steplens:partitions"
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    """One partition of a partitioned table: bounds [lower, upper) (both None for the DEFAULT partition)."""

    table: str
    name: str
    lower: datetime | None
    upper: datetime | None
    rows: int  # exact with partitions_list(exact=True), else PostgreSQL's estimate (-1: never analyzed)

    @property
    def is_default(self) -> bool:
        return self.lower is None


def partition_interval() -> timedelta:
    return timedelta(days=settings.STEPLENS_PARTITION_DAYS)


def partition_floor(when: datetime) -> datetime:
    """The lower bound of the partition interval holding `when`."""
    interval = partition_interval()
    return EPOCH + ((when - EPOCH) // interval) * interval


def partition_bounds(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The aligned intervals [lo, hi) that together cover [start, end)."""
    interval, bounds = partition_interval(), []
    lower = partition_floor(start)
    while lower < end:
        bounds.append((lower, lower + interval))
        lower += interval
    return bounds


def partition_name(table: str, lower: datetime) -> str:
    return f"{table}_p{lower:%Y%m%d}"


def default_partition_name(table: str) -> str:
    return f"{table}_default"


def is_partitioned(*, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether steps_step is a partitioned table here (PostgreSQL after steps 0012)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('steps_step')")
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def _parse_bound(text: str) -> datetime:
    # pg_get_expr prints bounds in the session's time zone, which Django sets to UTC ('2026-11-23 00:00:00+00').
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def partitions_list(*, exact: bool = False, using: str = DEFAULT_DB_ALIAS) -> list[Partition]:
    """Every partition of the four tables, by table then lower bound (the DEFAULT partition last)."""
    if not is_partitioned(using=using):
        return []
    out: list[Partition] = []
    with connections[using].cursor() as cursor:
        for table, _ in PARTITIONED_TABLES:
            cursor.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint "
                "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
                [table],
            )
            found = []
            for name, bound, estimate in cursor.fetchall():
                match = _BOUND.search(bound)
                lower, upper = (_parse_bound(match[1]), _parse_bound(match[2])) if match else (None, None)
                rows = estimate
                if exact:
                    cursor.execute(f'SELECT count(*) FROM "{name}"')
                    rows = cursor.fetchone()[0]
                found.append(Partition(table, name, lower, upper, rows))
            out.extend(sorted(found, key=lambda p: (p.is_default, p.lower or EPOCH)))
    return out


def _columns(cursor, table: str) -> list[str]:
    cursor.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        [table],
    )
    return [f'"{name}"' for (name,) in cursor.fetchall()]


def create_partition(cursor, table: str, key: str, lower: datetime, upper: datetime) -> int:
    """Create and attach one partition of `table`, first moving into it the rows the DEFAULT partition holds in its
    range (an attach would fail on them). Returns the rows moved. Attached rather than created PARTITION OF: ATTACH
    takes only a SHARE UPDATE EXCLUSIVE lock on the parent, so reads and writes go on."""
    name, default = partition_name(table, lower), default_partition_name(table)
    cursor.execute(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
    moved = 0
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [default])
    if cursor.fetchone()[0]:
        columns = ", ".join(_columns(cursor, table))
        cursor.execute(
            f'WITH moved AS (DELETE FROM "{default}" WHERE "{key}" >= %s AND "{key}" < %s RETURNING {columns}) '
            f'INSERT INTO "{name}" ({columns}) SELECT {columns} FROM moved',
            [lower, upper],
        )
        moved = cursor.rowcount
    # A CHECK matching the bounds lets ATTACH skip scanning the new table; it has no use afterwards.
    cursor.execute(
        f'ALTER TABLE "{name}" ADD CONSTRAINT "{name}_bounds" CHECK ("{key}" IS NOT NULL AND "{key}" >= %s '
        f'AND "{key}" < %s)',
        [lower, upper],
    )
    cursor.execute(f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)', [lower, upper])
    cursor.execute(f'ALTER TABLE "{name}" DROP CONSTRAINT "{name}_bounds"')
    return moved


def partitions_ensure(
    start: datetime, end: datetime, *, lock_timeout_ms: int | None = None, using: str = DEFAULT_DB_ALIAS
) -> list[str]:
    """Create the missing partitions covering [start, end) for all four tables; returns the names created.

    Idempotent and safe when two run at once (one transaction under an advisory lock); an interval that overlaps
    an existing partition of a table (say, made with another STEPLENS_PARTITION_DAYS) is left alone for that
    table. Rows the DEFAULT partition holds in a new range move into the new partition in the same transaction.
    With `lock_timeout_ms`, a lock that cannot be had that fast fails the call (nothing is created) rather than
    queueing reads behind it. A no-op (returns []) where the tables are not partitioned (SQLite).
    """
    if not is_partitioned(using=using):
        return []
    created: list[str] = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        if lock_timeout_ms is not None:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout_ms)}ms"])
        advisory_xact_lock(_LOCK_KEY, using=using)
        existing: dict[str, list[Partition]] = {}
        for partition in partitions_list(using=using):
            if not partition.is_default:
                existing.setdefault(partition.table, []).append(partition)
        for lower, upper in partition_bounds(start, end):
            for table, key in PARTITIONED_TABLES:
                if any(p.lower < upper and lower < p.upper for p in existing.get(table, [])):
                    continue
                moved = create_partition(cursor, table, key, lower, upper)
                created.append(partition_name(table, lower))
                if moved:
                    logger.info("partition %s: moved %s rows from the default partition", created[-1], moved)
    return created


def partitions_ensure_ahead(*, now: datetime, lock_timeout_ms: int | None = None) -> list[str]:
    """Partitions from the current interval to STEPLENS_PARTITION_AHEAD intervals ahead (the periodic task)."""
    start = partition_floor(now)
    return partitions_ensure(
        start, start + partition_interval() * (settings.STEPLENS_PARTITION_AHEAD + 1), lock_timeout_ms=lock_timeout_ms
    )


@dataclass(frozen=True)
class DroppedPartition:
    """What dropping one interval removed: its bounds and the rows per table."""

    lower: datetime
    upper: datetime
    rows: dict[str, int]

    def describe(self) -> dict[str, object]:
        return {"lower": self.lower.isoformat(), "upper": self.upper.isoformat(), "rows": self.rows}


def partitions_drop(
    lower: datetime, upper: datetime, *, lock_timeout_ms: int, names: dict[str, str] | None = None
) -> DroppedPartition | None:
    """Remove the partitions [lower, upper) of all four tables: detach them (partitions_detach), then count their
    rows and drop them (partitions_drop_detached's work, for these). None when the detach could not have its locks.

    `names` ({table: partition name}, as partitions_list gives them) spares reading the catalog again when the
    caller already has. Once detached, the rows are out of every query and no write can reach them, so the counts
    are exactly the rows dropped; counting and dropping hold no lock on the parents (the reads and writes of the
    other partitions go on). A crash between the two leaves detached tables that the next call of
    partitions_drop_detached (retention does, first) counts and drops."""
    if names is None:
        if not is_partitioned():
            return None
        names = {p.table: p.name for p in partitions_list() if p.lower == lower and p.upper == upper}
    detached = partitions_detach(names, lock_timeout_ms=lock_timeout_ms)
    if detached is None:
        return None
    return DroppedPartition(lower, upper, _count_and_drop(detached))


def partitions_detach(names: dict[str, str], *, lock_timeout_ms: int) -> dict[str, str] | None:
    """Detach the partitions `names` ({table: partition}) from their tables in one short transaction (children
    first); returns what was detached, or None (nothing detached) when a lock could not be had.

    DETACH takes an ACCESS EXCLUSIVE lock on each parent until the commit; it neither scans nor deletes anything,
    so the lock lasts milliseconds. `lock_timeout_ms` bounds how long any lock is waited for (meanwhile other
    queries queue behind it): on a timeout, or a deadlock with a late write into these partitions, nothing is
    detached and the caller leaves it for a later run."""
    tables = [table for table, _ in PARTITIONED_TABLES if table in names]
    if not tables:
        return None
    try:
        with transaction.atomic(), connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout_ms)}ms"])
            # A table with deferred FK checks pending in this transaction cannot be altered: run them now.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for table in reversed(tables):  # children first
                cursor.execute(f'ALTER TABLE "{table}" DETACH PARTITION "{names[table]}"')
    except DatabaseError as exc:  # a lock timeout, a deadlock (or a concurrent drop) leaves it for the next run
        if not any(
            text in str(exc) for text in ("lock timeout", "deadlock detected", "is not a partition", "does not exist")
        ):
            raise
        logger.warning("partitions %s not detached now: %s", sorted(names.values()), exc)
        return None
    return {table: names[table] for table in tables}


def _count_and_drop(detached: dict[str, str]) -> dict[str, int]:
    """Count the rows of detached partitions ({table: name}) in one statement, then drop them (children first)."""
    tables = [table for table, _ in PARTITIONED_TABLES if table in detached]
    with transaction.atomic(), connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f'(SELECT count(*) FROM "{detached[t]}")' for t in tables))
        rows = dict(zip(tables, cursor.fetchone(), strict=True))
        for table in reversed(tables):
            cursor.execute(f'DROP TABLE "{detached[table]}"')
    return rows


_DETACHED_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<lower>\d{8})$")


def partitions_drop_detached() -> list[DroppedPartition]:
    """Count and drop the partitions a partitions_drop detached but did not drop (it died in between): tables named
    like a partition of the four (`<table>_pYYYYMMDD`) that are no partition of anything. Their interval's upper
    bound is taken as lower + STEPLENS_PARTITION_DAYS. A no-op where the tables are not partitioned."""
    if not is_partitioned():
        return []
    tables = {table for table, _ in PARTITIONED_TABLES}
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
            "AND c.relkind = 'r' AND NOT c.relispartition AND c.relname ~ '_p[0-9]{8}$'"
        )
        found = [name for (name,) in cursor.fetchall()]
    by_lower: dict[datetime, dict[str, str]] = {}
    for name in found:
        match = _DETACHED_NAME.match(name)
        if match and match["table"] in tables:
            lower = datetime.strptime(match["lower"], "%Y%m%d").replace(tzinfo=UTC)
            by_lower.setdefault(lower, {})[match["table"]] = name
    dropped = []
    for lower, detached in sorted(by_lower.items()):
        logger.warning("dropping partitions detached earlier: %s", sorted(detached.values()))
        dropped.append(DroppedPartition(lower, lower + partition_interval(), _count_and_drop(detached)))
    return dropped


def keep_group_by_whole() -> None:
    """Stop Django from grouping the partitioned models by their `id` alone (called once, from StepsConfig.ready).

    On PostgreSQL Django shortens `GROUP BY <every selected column>` to `GROUP BY <primary key>`, which PostgreSQL
    accepts only when that column is the table's whole primary key. On the partitioned tables the primary key is
    (id, partition key), so such a query (say `.values().annotate(Count(...))`) would fail there; these models
    group by their selected columns instead. Every other model keeps Django's behaviour."""
    try:
        from django.db.backends.postgresql.features import DatabaseFeatures
    except ImportError:  # no PostgreSQL driver installed: nothing to adjust
        return
    if getattr(DatabaseFeatures.allows_group_by_selected_pks_on_model, "partition_aware", False):
        return
    original = DatabaseFeatures.allows_group_by_selected_pks_on_model
    tables = {table for table, _ in PARTITIONED_TABLES}

    def allows_group_by_selected_pks_on_model(self, model) -> bool:
        return model._meta.db_table not in tables and original(self, model)

    allows_group_by_selected_pks_on_model.partition_aware = True  # type: ignore[attr-defined]
    DatabaseFeatures.allows_group_by_selected_pks_on_model = allows_group_by_selected_pks_on_model
