"""PostgreSQL only: steps_step, steps_stepmetrics, steps_message and traces_providertrace become RANGE-partitioned
tables (by created_at, and the children by step_created_at; README "Partitioned storage"). SQLite is untouched.

Each table is rebuilt: the old one is renamed, a partitioned one is made with the same columns, defaults, checks
and identity, its partitions are created (aligned intervals from the oldest row, at most two years back, to
STEPLENS_PARTITION_AHEAD intervals ahead, plus a DEFAULT partition), the rows are copied, then the primary key
(with the partition key appended), every index and unique constraint Django made (same names; the unique ones
already hold the partition key since 0011) and the foreign keys to other tables are created, and the old table is
dropped. Works on an empty database (test database creation) and on one with rows; it runs in the migration's
transaction, so it holds its locks until the end: on a large database, plan for the downtime. The reverse
rebuilds plain tables the same way.
"""

from datetime import timedelta

from django.conf import settings
from django.db import migrations
from django.utils import timezone

from steps.partitions import (
    PARTITIONED_TABLES,
    create_partition,
    default_partition_name,
    partition_bounds,
    partition_floor,
)

BACKFILL_LIMIT = timedelta(days=730)  # rows older than this land in the DEFAULT partition


def _one(cursor, sql: str, params=()):
    cursor.execute(sql, params)
    return cursor.fetchone()


def _rebuild(cursor, table: str, key: str, *, partition: bool = True) -> list[str]:
    """Make `table` partitioned (no partitions but DEFAULT yet, no indexes), or with `partition=False` a plain
    table again; the old one is renamed `<table>__unpartitioned` (also when it was the partitioned one). Returns the
    SQL that finishes the new table once the rows are copied."""
    old = f"{table}__unpartitioned"
    (oid,) = _one(cursor, "SELECT to_regclass(%s)::oid", [table])
    referencing = _one(
        cursor, "SELECT string_agg(conname || ' on ' || conrelid::regclass::text, ', ') FROM pg_constraint "
        "WHERE contype = 'f' AND confrelid = %s AND conrelid <> confrelid", [oid],
    )[0]  # fmt: skip
    if referencing:
        raise RuntimeError(f"{table} is referenced by foreign keys ({referencing}); drop them before partitioning")
    # The primary key, with the partition key appended.
    pk_name, pk_columns = _one(
        cursor,
        "SELECT c.conname, array_agg(a.attname ORDER BY k.n) FROM pg_constraint c "
        "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conrelid = %s AND c.contype = 'p' GROUP BY c.conname",
        [oid],
    )
    if partition:
        pk_columns = [*pk_columns, *([key] if key not in pk_columns else [])]
    else:  # the key was appended; StepMetrics' own key is step_id alone
        pk_columns = [c for c in pk_columns if c != key]
    columns = ", ".join(f'"{c}"' for c in pk_columns)
    finish = [f'ALTER TABLE "{table}" ADD CONSTRAINT "{pk_name}" PRIMARY KEY ({columns})']
    # Indexes that back no constraint (Django's Index and partial UniqueConstraint), as they were: same names.
    cursor.execute(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = %s AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) "
        "ORDER BY i.relname",
        [oid],
    )
    indexes = cursor.fetchall()
    finish += [definition for _, definition in indexes]
    # Unique constraints and foreign keys (to other tables), as they were.
    cursor.execute(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s AND contype IN ('u', 'f', 'x') ORDER BY contype DESC, conname",
        [oid],
    )
    constraints = cursor.fetchall()
    finish += [f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}' for name, _, definition in constraints]
    # Free the names for the new table: indexes and constraints of the old one go (it is dropped at the end).
    for name, _ in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    for name, kind, _ in constraints:
        if kind != "f":
            cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
    cursor.execute(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{pk_name}" TO "{old}_pkey"')
    cursor.execute(f'ALTER INDEX IF EXISTS "{pk_name}" RENAME TO "{old}_pkey"')
    sequence = _one(cursor, "SELECT pg_get_serial_sequence(%s, 'id')", [table])[0] if "id" in pk_columns else None
    if sequence:
        cursor.execute(f"ALTER SEQUENCE {sequence} RENAME TO {table}__unpartitioned_id_seq")
    cursor.execute(f'ALTER TABLE "{table}" RENAME TO "{old}"')
    cursor.execute(
        f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY '
        f"INCLUDING STORAGE INCLUDING COMMENTS INCLUDING COMPRESSION)"
        + (f' PARTITION BY RANGE ("{key}")' if partition else "")
    )
    if partition:
        cursor.execute(f'CREATE TABLE "{default_partition_name(table)}" PARTITION OF "{table}" DEFAULT')
    if sequence:  # the identity continues where the old sequence was
        finish.append(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), s.last_value, s.is_called) "
            f"FROM {table}__unpartitioned_id_seq s"
        )
    return finish


def partition_tables(apps, schema_editor) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        if _one(cursor, "SELECT relkind FROM pg_class WHERE oid = to_regclass('steps_step')")[0] == "p":
            return
        finish = {table: _rebuild(cursor, table, key) for table, key in PARTITIONED_TABLES}
        now = timezone.now()
        oldest = _one(cursor, 'SELECT min(created_at) FROM "steps_step__unpartitioned"')[0] or now
        start = partition_floor(max(oldest, now - BACKFILL_LIMIT))
        end = partition_floor(now) + timedelta(days=settings.STEPLENS_PARTITION_DAYS) * (
            settings.STEPLENS_PARTITION_AHEAD + 1
        )
        for lower, upper in partition_bounds(start, end):  # fresh tables: none exists yet
            for table, key in PARTITIONED_TABLES:
                create_partition(cursor, table, key, lower, upper)
        _copy_and_finish(cursor, finish)


def _copy_and_finish(cursor, finish: dict[str, list[str]]) -> None:
    for table, _ in PARTITIONED_TABLES:
        cursor.execute(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [table],
        )
        (columns,) = cursor.fetchone()
        cursor.execute(f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM "{table}__unpartitioned"')
        copied = cursor.rowcount
        for statement in finish[table]:
            cursor.execute(statement)
        cursor.execute(f'DROP TABLE "{table}__unpartitioned"')
        if copied:
            cursor.execute(f'ANALYZE "{table}"')


def unpartition_tables(apps, schema_editor) -> None:
    """The reverse: plain tables again, with the same rows, indexes and constraints (the keys as in 0011)."""
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        if _one(cursor, "SELECT relkind FROM pg_class WHERE oid = to_regclass('steps_step')")[0] != "p":
            return
        finish = {table: _rebuild(cursor, table, key, partition=False) for table, key in PARTITIONED_TABLES}
        _copy_and_finish(cursor, finish)


class Migration(migrations.Migration):
    dependencies = [
        ("steps", "0011_step_created_at"),
    ]

    operations = [
        migrations.RunPython(partition_tables, unpartition_tables, elidable=False),
    ]
