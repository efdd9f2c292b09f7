"""Hourly and daily rollups of ended steps: the write path adds each step once, reports read them.

`step_rollup_add` is called by the write path (steps.services) when a step ends; it upserts one row
per table with `INSERT ... ON CONFLICT DO UPDATE`, so concurrent workers add up instead of racing.
`step_rollups_rebuild` recomputes a range from the steps (after a bulk load such as seed_steps, or to
repair); `errors_rollups_refresh` rebuilds only the errors rows some steps fall in (after a deletion).
`rollup_totals` reads summed measures and histograms for the reports.

Exactness: step counts, error counts, token sums and cost sums equal a scan of the steps (for steps
that ended through the write path). Latency and TTFT percentiles come from log-scale histograms
(steps.histograms): each lies within the right 26%-wide bucket and is interpolated inside it.
Rollups are keyed by the step's created_at, so a step lands in the hour it started.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max, Min, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, Collate, TruncDay, TruncHour, TruncWeek

from accounts.models import Organization
from config.db_router import read_connection
from steps.histograms import BOUNDS_NS, BUCKETS, bucket_of
from steps.models import (
    ERROR_ROLLUP_KEY,
    ROLLUP_DIMENSIONS,
    SUBJECT_ROLLUP_KEY,
    ErrorRollupDay,
    ErrorRollupHour,
    Step,
    StepRollupDay,
    StepRollupHour,
    StepStatus,
    SubjectKind,
    SubjectRollupDay,
    SubjectRollupHour,
)

TOKEN_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
COUNT_COLUMNS = ("steps", "error_steps", "cancelled_steps", *TOKEN_COLUMNS)
LATENCY_COLUMNS = tuple(f"latency_h{i:02d}" for i in range(BUCKETS))
TTFT_COLUMNS = tuple(f"ttft_h{i:02d}" for i in range(BUCKETS))
MEASURE_COLUMNS = (*COUNT_COLUMNS, "cost_usd", *LATENCY_COLUMNS, *TTFT_COLUMNS)
ROLLUP_TABLES = (StepRollupHour, StepRollupDay)
ERROR_TABLES = (ErrorRollupHour, ErrorRollupDay)
SUBJECT_TABLES = (SubjectRollupHour, SubjectRollupDay)
# What a usage-measures row is keyed by after the organization, per table.
_MEASURE_KEYS = {
    StepRollupHour: ("bucket", *ROLLUP_DIMENSIONS),
    StepRollupDay: ("bucket", *ROLLUP_DIMENSIONS),
    SubjectRollupHour: SUBJECT_ROLLUP_KEY,
    SubjectRollupDay: SUBJECT_ROLLUP_KEY,
}


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_ceil(moment: datetime) -> datetime:
    """The first whole hour at or after `moment`."""
    floor = hour_of(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def step_dimensions(step: Step) -> dict[str, str]:
    """The rollup dimensions of a step ('' for none)."""
    return {
        "project_id": step.project_id or "",
        "agent_id": step.agent_id or "",
        "provider_name": step.provider_name or "",
        "model": step.model or "",
        "model_handle": step.model_handle or "",
    }


def step_measures(step: Step) -> dict[str, Any]:
    """What one ended step adds to its usage rollup row (MEASURE_COLUMNS)."""
    values: dict[str, Any] = dict.fromkeys(MEASURE_COLUMNS, 0)
    values["steps"] = 1
    values["error_steps"] = int(step.status == StepStatus.FAILED)
    values["cancelled_steps"] = int(step.status == StepStatus.CANCELLED)
    for name in TOKEN_COLUMNS:
        values[name] = getattr(step, name) or 0
    values["cost_usd"] = step.cost_usd or Decimal(0)
    if step.latency_ns is not None:
        values[LATENCY_COLUMNS[bucket_of(step.latency_ns)]] = 1
    if step.ttft_ns is not None:
        values[TTFT_COLUMNS[bucket_of(step.ttft_ns)]] = 1
    return values


def upsert_sql(model: type) -> tuple[str, list[str]]:
    """The upsert of a usage or subject rollup row: the measures add up."""
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    keys = ["organization_id", *_MEASURE_KEYS[model]]
    columns = [*keys, *MEASURE_COLUMNS]
    updates = ", ".join(f"{qn(c)} = {table}.{qn(c)} + excluded.{qn(c)}" for c in MEASURE_COLUMNS)
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(qn(k) for k in keys)}) DO UPDATE SET {updates}"
    )
    return sql, columns


def _zero_measures() -> dict[str, Any]:
    zero: dict[str, Any] = dict.fromkeys(MEASURE_COLUMNS, 0)
    zero["cost_usd"] = Decimal(0)
    return zero


def _summed_rows(steps: Iterable[Step], bucket_of_step: Any, subjects: Any) -> list[dict[str, Any]]:
    """Ended steps' measures summed per (organization, bucket, subject, dimensions), in key order; `subjects(step)`
    gives the subject columns of each row a step adds to (one empty dict for the usage rollups)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for step in steps:
        if step.status == StepStatus.PENDING:
            continue
        dims = step_dimensions(step)
        bucket = bucket_of_step(step.created_at)
        measures = [(name, value) for name, value in step_measures(step).items() if value]
        for subject in subjects(step):
            key = (step.organization_id, bucket, *subject.values(), *(dims[d] for d in ROLLUP_DIMENSIONS))
            row = rows.get(key)
            if row is None:
                row = rows[key] = {
                    "organization_id": step.organization_id, "bucket": bucket, **subject, **dims, **_zero_measures()
                }  # fmt: skip
            for name, value in measures:
                row[name] += value
    return [rows[key] for key in sorted(rows, key=lambda k: tuple(str(part) for part in k))]


_NO_SUBJECT: tuple[dict[str, str], ...] = ({},)


def usage_rows(steps: Iterable[Step], bucket_of_step: Any) -> list[dict[str, Any]]:
    """The usage rollup deltas of ended `steps` (pending ones add nothing): one row per key (organization, bucket,
    dimensions) with the steps' measures summed, in key order.

    The one rule for both write paths and the rebuild; the fixed order keeps concurrent writers from deadlocking
    on the rows."""
    return _summed_rows(steps, bucket_of_step, lambda step: _NO_SUBJECT)


def step_subjects(step: Step) -> list[dict[str, str]]:
    """The subject rollup keys a step adds to: its end user and its conversation, each when it has one."""
    subjects = []
    if step.user_id:
        subjects.append({"kind": SubjectKind.USER.value, "subject_id": step.user_id})
    if step.conversation_id:
        subjects.append({"kind": SubjectKind.CONVERSATION.value, "subject_id": step.conversation_id})
    return subjects


def subject_rows(steps: Iterable[Step], bucket_of_step: Any) -> list[dict[str, Any]]:
    """The subject rollup deltas of ended `steps`: as usage_rows, per end user and per conversation as well."""
    return _summed_rows(steps, bucket_of_step, step_subjects)


ERROR_MEASURES = ("count", "first_seen", "last_seen", "example_step_id")


def error_upsert_sql(model: type[ErrorRollupHour | ErrorRollupDay]) -> tuple[str, list[str]]:
    """The errors rollup upsert: counts add up, first/last seen widen, the example is the greatest id."""
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    keys = ["organization_id", "bucket", *ERROR_ROLLUP_KEY]
    columns = [*keys, *ERROR_MEASURES]
    if connection.vendor == "postgresql":
        least, greatest, byte_order = "LEAST", "GREATEST", ' COLLATE "C"'
    else:  # SQLite: scalar min()/max(), and text compares byte by byte already
        least, greatest, byte_order = "MIN", "MAX", ""
    count, first, last, example = (qn(c) for c in ERROR_MEASURES)
    updates = (
        f"{count} = {table}.{count} + excluded.{count}, "
        f"{first} = {least}({table}.{first}, excluded.{first}), "
        f"{last} = {greatest}({table}.{last}, excluded.{last}), "
        f"{example} = {greatest}({table}.{example}{byte_order}, excluded.{example}{byte_order})"
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(qn(k) for k in keys)}) DO UPDATE SET {updates}"
    )
    return sql, columns


# An error is a failed step with an error type (a cancelled step is not one): the one rule the errors rollups,
# their rebuild and the errors report's scan of the steps all count by.
ERROR_STEPS = Q(status=StepStatus.FAILED, error_type__isnull=False)


def step_is_error(step: Step) -> bool:
    """Does `step` count as an error (`ERROR_STEPS`, for one step in memory)?"""
    return step.status == StepStatus.FAILED and bool(step.error_type)


def error_rows(steps: Sequence[Step], bucket_of_step: Any) -> list[dict[str, Any]]:
    """The errors rollup rows of `steps` (the failed ones: an error is a failed step; a cancelled step is not),
    merged per key and in key order.

    The fixed order keeps concurrent writers from deadlocking on the same rows."""
    rows: dict[tuple, dict[str, Any]] = {}
    for step in steps:
        if not step_is_error(step):
            continue
        dims = step_dimensions(step)
        bucket = bucket_of_step(step.created_at)
        key = (step.organization_id, bucket, step.error_type, *(dims[d] for d in ROLLUP_DIMENSIONS))
        row = rows.get(key)
        if row is None:
            rows[key] = {
                "organization_id": step.organization_id, "bucket": bucket, "error_type": step.error_type, **dims,
                "count": 1, "first_seen": step.created_at, "last_seen": step.created_at, "example_step_id": step.pk,
            }  # fmt: skip
            continue
        row["count"] += 1
        row["first_seen"] = min(row["first_seen"], step.created_at)
        row["last_seen"] = max(row["last_seen"], step.created_at)
        row["example_step_id"] = max(row["example_step_id"], step.pk)  # str order is byte order for ids
    return [rows[key] for key in sorted(rows, key=lambda k: tuple(str(part) for part in k))]


# What each rollup table gets from ended steps: the table, its bucket, its rows (the deltas) and its upsert.
_DELTAS = (
    (StepRollupHour, hour_of, usage_rows, upsert_sql),
    (StepRollupDay, day_of, usage_rows, upsert_sql),
    (ErrorRollupHour, hour_of, error_rows, error_upsert_sql),
    (ErrorRollupDay, day_of, error_rows, error_upsert_sql),
    (SubjectRollupHour, hour_of, subject_rows, upsert_sql),
    (SubjectRollupDay, day_of, subject_rows, upsert_sql),
)


def _adapted(model: type, row: dict[str, Any]) -> dict[str, Any]:
    """`row` with its datetimes and decimals in the database's form (what a raw cursor needs on SQLite)."""
    ops = connection.ops
    out = dict(row)
    for name, value in row.items():
        if isinstance(value, datetime):
            out[name] = ops.adapt_datetimefield_value(value)
        elif isinstance(value, Decimal):
            field = model._meta.get_field(name)
            out[name] = ops.adapt_decimalfield_value(value, field.max_digits, field.decimal_places)
    return out


def step_rollup_add(*, step: Step) -> None:
    """Add an ended step to its rollup rows: usage per hour and day, and a failed one to the errors rollups
    (call once, when the step ends). One round trip on PostgreSQL: this runs once per step on the hot path."""
    statements = []
    for model, bucket_of_step, rows_of, upsert_sql in _DELTAS:
        rows = rows_of([step], bucket_of_step)
        if rows:
            sql, columns = upsert_sql(model)
            statements += [(sql, [_adapted(model, row)[c] for c in columns]) for row in rows]
    if not statements:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Every upsert in one statement (data-modifying CTEs).
            *first, (last_sql, last_params) = statements
            ctes = ", ".join(f"r{i} AS ({sql} RETURNING 1)" for i, (sql, _) in enumerate(first))
            params = [p for _, statement_params in first for p in statement_params]
            cursor.execute(f"WITH {ctes} {last_sql}" if first else last_sql, [*params, *last_params])
        else:
            for sql, params in statements:
                cursor.execute(sql, params)


def steps_rollups_add(*, steps: Sequence[Step]) -> None:
    """Add ended steps to their rollup rows (as step_rollup_add, for many): the same rows, summed per key first,
    one multi-row upsert per table, in key order. Concurrent ingest transactions take the rows' locks in the
    same order, so they do not deadlock."""
    for model, bucket_of_step, rows_of, upsert_sql in _DELTAS:
        rows = rows_of(steps, bucket_of_step)
        if rows:
            sql, columns = upsert_sql(model)
            with connection.cursor() as cursor:
                cursor.execute(*multi_row_upsert(model, columns, sql, rows))


def multi_row_upsert(model: type, columns: list[str], sql: str, rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """One upsert statement for all `rows` (distinct keys, in key order); on PostgreSQL the rows are passed as
    one JSON parameter.

    The statement text is the same for any number of rows, so neither the client nor the server parses a new
    query per batch (the rows are ~110 columns each).
    """
    values_sql, _, conflict_sql = sql.partition(" ON CONFLICT ")
    head = values_sql.partition(" VALUES ")[0]
    if connection.vendor != "postgresql":
        one = values_sql.partition(" VALUES ")[2]
        params = [value for row in rows for value in (_adapted(model, row)[c] for c in columns)]
        return f"{head} VALUES {', '.join([one] * len(rows))} ON CONFLICT {conflict_sql}", params
    qn = connection.ops.quote_name
    fields_by_column = {f.column: f for f in model._meta.concrete_fields}
    record = ", ".join(f"{qn(c)} {fields_by_column[c].db_type(connection)}" for c in columns)
    select = ", ".join(f"r.{qn(c)}" for c in columns)
    document = [
        {c: (row[c].isoformat() if isinstance(row[c], datetime) else str(row[c]) if isinstance(row[c], Decimal)
             else row[c]) for c in columns}
        for row in rows
    ]  # fmt: skip
    return (
        f"{head} SELECT {select} FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS ({record})) "
        f"WITH ORDINALITY AS r({', '.join(qn(c) for c in columns)}, ord) ORDER BY r.ord ON CONFLICT {conflict_sql}",
        [json.dumps(document)],
    )


# --- rebuild ------------------------------------------------------------------------------------


def _day_range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    """The range widened to whole UTC days (a day row is only right when its whole day is rebuilt)."""
    day_start = day_of(start) if start else None
    day_end = None
    if end is not None:
        day_end = day_of(end)
        if day_end < end:
            day_end += timedelta(days=1)
    return day_start, day_end


def _range_q(start: datetime | None, end: datetime | None, field_name: str) -> Q:
    condition = Q()
    if start is not None:
        condition &= Q(**{f"{field_name}__gte": start})
    if end is not None:
        condition &= Q(**{f"{field_name}__lt": end})
    return condition


@transaction.atomic
def step_rollups_rebuild(
    *, organization: Organization, start: datetime | None = None, end: datetime | None = None
) -> int:
    """Recompute the rollups of `organization` from its steps over [start, end), widened to whole days.

    For bulk loads and repairs; a step ending in that range while this runs may be counted twice or
    not at all, so run it when the range is quiet. Returns the number of hourly rows written.
    """
    start, end = _day_range(start, end)
    for model in (*ROLLUP_TABLES, *ERROR_TABLES, *SUBJECT_TABLES):
        model.objects.filter(_range_q(start, end, "bucket"), organization=organization).delete()
    if connection.vendor == "postgresql":
        hours = _rebuild_hours_postgres(organization=organization, start=start, end=end, model=StepRollupHour)
        for kind, column in _SUBJECT_COLUMNS.items():
            _rebuild_hours_postgres(
                organization=organization, start=start, end=end, model=SubjectRollupHour, subject=(kind, column)
            )
    else:
        hours = _rebuild_hours_python(organization=organization, start=start, end=end, model=StepRollupHour)
        _rebuild_hours_python(organization=organization, start=start, end=end, model=SubjectRollupHour)
    for hour_model, day_model in (ROLLUP_TABLES, SUBJECT_TABLES):
        _rebuild_days(organization=organization, start=start, end=end, hour_model=hour_model, day_model=day_model)
    errors_rollups_rebuild(organization=organization, start=start, end=end)
    return hours


def greatest_id(column: str) -> Max:
    """The greatest id in byte order (PostgreSQL's collation would order ids differently, and slower)."""
    return Max(Collate(column, "C")) if connection.vendor == "postgresql" else Max(column)


def errors_rollups_rebuild(*, organization: Organization, start: datetime | None, end: datetime | None) -> None:
    """The errors rollups of [start, end) from the steps: hours by one grouped query, days from the hours."""
    _errors_hours_insert(organization, _range_q(start, end, "created_at"))
    _errors_days_insert(organization, _range_q(start, end, "bucket"))


# Keys per statement of errors_rollups_refresh: each is an OR arm, and SQLite caps an expression's depth at 1000.
_REFRESH_CHUNK = 100


def errors_rollups_refresh(*, steps: Sequence[Step]) -> None:
    """The errors rollup rows `steps` fall in (failed steps just deleted, say), again from the steps in the
    database: each such hour row is rebuilt from the steps of its hour and key, each such day row from the hour rows
    of its day and key; a row with no step left goes. The same queries as errors_rollups_rebuild, restricted to
    those keys: the result is what a rebuild would write."""
    by_organization: dict[str, list[dict[str, Any]]] = {}
    for row in error_rows(steps, hour_of):
        by_organization.setdefault(row["organization_id"], []).append(row)
    for organization_id, hours in by_organization.items():
        organization = Organization.objects.get(pk=organization_id)
        days = {_error_key(row, day_of(row["bucket"])): row for row in hours}
        for chunk in _chunks(hours):
            ErrorRollupHour.objects.filter(
                _any(_error_key_q(row, row["bucket"], None, "bucket") for row in chunk), organization=organization
            ).delete()
            steps_of_keys = (_error_key_q(row, row["bucket"], timedelta(hours=1), "created_at") for row in chunk)
            _errors_hours_insert(organization, _any(steps_of_keys))
        for chunk in _chunks(list(days.values())):
            ErrorRollupDay.objects.filter(
                _any(_error_key_q(row, day_of(row["bucket"]), None, "bucket") for row in chunk),
                organization=organization,
            ).delete()
            hours_of_keys = (_error_key_q(row, day_of(row["bucket"]), timedelta(days=1), "bucket") for row in chunk)
            _errors_days_insert(organization, _any(hours_of_keys))


def _error_key(row: dict[str, Any], bucket: datetime) -> tuple[Any, ...]:
    return (bucket, row["error_type"], *(row[d] for d in ROLLUP_DIMENSIONS))


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + _REFRESH_CHUNK] for i in range(0, len(rows), _REFRESH_CHUNK)]


def _any(conditions: Iterable[Q]) -> Q:
    out = Q()
    for condition in conditions:
        out |= condition
    return out


def _error_key_q(row: dict[str, Any], bucket: datetime, span: timedelta | None, time_field: str) -> Q:
    """An errors rollup row's key (`row`'s organization, error type and dimensions) at `bucket`: the rollup row itself
    (`span` None), or what falls in [bucket, bucket + span) under that key. On the steps (`time_field`
    created_at) a '' dimension is NULL or '', as the rebuild's Coalesce reads it."""
    condition = Q(**{time_field: bucket}) if span is None else _range_q(bucket, bucket + span, time_field)
    # The organization in every arm of the OR the keys make: PostgreSQL then reads each arm from an index that
    # leads with it (it does not distribute a condition outside the OR into it).
    condition &= Q(organization_id=row["organization_id"], error_type=row["error_type"])
    for name in ROLLUP_DIMENSIONS:
        if time_field == "created_at" and row[name] == "":
            condition &= Q(**{f"{name}__isnull": True}) | Q(**{name: ""})
        else:
            condition &= Q(**{name: row[name]})
    return condition


def _errors_hours_insert(organization: Organization, where: Q) -> None:
    """Insert the errors hour rows of the organization's failed steps matching `where`, grouped per hour and key."""
    dims = {d: Coalesce(d, Value("")) for d in ROLLUP_DIMENSIONS}
    hours = (
        Step.objects.filter(where, ERROR_STEPS, organization=organization)
        .annotate(hour=TruncHour("created_at", tzinfo=UTC), **{f"dim_{d}": expr for d, expr in dims.items()})
        .values("hour", "error_type", *(f"dim_{d}" for d in ROLLUP_DIMENSIONS))
        .annotate(n=Count("pk"), first=Min("created_at"), last=Max("created_at"), example=greatest_id("id"))
        .order_by()
    )
    _store_errors(ErrorRollupHour, organization, hours, bucket="hour", dimension_prefix="dim_")


def _errors_days_insert(organization: Organization, where: Q) -> None:
    """Insert the errors day rows of the organization's errors hour rows matching `where`, grouped per day and key."""
    days = (
        ErrorRollupHour.objects.filter(where, organization=organization)
        .annotate(day=TruncDay("bucket", tzinfo=UTC))
        .values("day", *ERROR_ROLLUP_KEY)
        .annotate(
            n=Sum("count"), first=Min("first_seen"), last=Max("last_seen"), example=greatest_id("example_step_id")
        )
        .order_by()
    )
    _store_errors(ErrorRollupDay, organization, days, bucket="day")


def _store_errors(
    model: type[ErrorRollupHour | ErrorRollupDay],
    organization: Organization,
    rows: QuerySet,
    *,
    bucket: str,
    dimension_prefix: str = "",
) -> None:
    """Insert grouped error rows (`n`, `first`, `last`, `example` and the key columns) into `model`."""
    if connection.vendor == "postgresql":
        columns = {"bucket": bucket, "error_type": "error_type", **{d: dimension_prefix + d for d in ROLLUP_DIMENSIONS}}
        columns.update(count="n", first_seen="first", last_seen="last", example_step_id="example")
        insert_grouped(model, organization=organization, rows=rows, columns=columns)
        return
    model.objects.bulk_create(
        (
            model(
                organization=organization,
                bucket=row[bucket],
                error_type=row["error_type"],
                **{d: row[dimension_prefix + d] for d in ROLLUP_DIMENSIONS},
                count=row["n"],
                first_seen=row["first"],
                last_seen=row["last"],
                example_step_id=row["example"],
            )
            for row in rows.iterator()
        ),
        batch_size=1000,
    )


def insert_grouped(model: type, *, organization: Organization, rows: QuerySet, columns: dict[str, str]) -> int:
    """PostgreSQL: insert the grouped `rows` of the organization into `model` in one INSERT ... SELECT over the
    queryset's own SQL (no round trip per row: a rebuild after a bulk load of millions of steps). `columns` maps
    each model field to the queryset's output name."""
    qn = connection.ops.quote_name
    sql, params = rows.query.sql_with_params()
    targets = ", ".join(qn(model._meta.get_field(f).column) for f in columns)
    sources = ", ".join(f"q.{qn(name)}" for name in columns.values())
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(model._meta.db_table)} (organization_id, {targets}) SELECT %s, {sources} FROM ({sql}) q",
            [organization.pk, *params],
        )
        return cursor.rowcount


# Subject kind -> the step column that holds the subject.
_SUBJECT_COLUMNS = {SubjectKind.USER.value: "user_id", SubjectKind.CONVERSATION.value: "conversation_id"}


def _rebuild_hours_postgres(
    *,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    model: type,
    subject: tuple[str, str] | None = None,
) -> int:
    """The hourly rows of `model` from the steps in one INSERT ... SELECT; with `subject` (kind, step column), the
    subject rollup rows of that kind (steps without that column add nothing, as in subject_rows)."""
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    dims_sql = ", ".join(f"coalesce({qn(d)}, '')" for d in ROLLUP_DIMENSIONS)
    measures_sql = [
        "count(*)",
        f"count(*) FILTER (WHERE status = '{StepStatus.FAILED.value}')",
        f"count(*) FILTER (WHERE status = '{StepStatus.CANCELLED.value}')",
        *(f"coalesce(sum({qn(c)}), 0)" for c in TOKEN_COLUMNS),
        "coalesce(sum(cost_usd), 0)",
        *(f"count(*) FILTER (WHERE lb = {i})" for i in range(BUCKETS)),
        *(f"count(*) FILTER (WHERE tb = {i})" for i in range(BUCKETS)),
    ]
    where = ["organization_id = %s", "status <> %s"]
    params: list[Any] = [list(BOUNDS_NS), list(BOUNDS_NS), organization.pk, StepStatus.PENDING.value]
    key_columns, key_sql = ["bucket", *ROLLUP_DIMENSIONS], ["date_trunc('hour', created_at, 'UTC')", dims_sql]
    if subject is not None:
        kind, column = subject
        where.append(f"coalesce({qn(column)}, '') <> ''")
        key_columns = ["kind", "subject_id", *key_columns]
        key_sql = ["%s::text", qn(column), *key_sql]
        params = [kind, *params]
    if start is not None:
        where.append("created_at >= %s")
        params.append(start)
    if end is not None:
        where.append("created_at < %s")
        params.append(end)
    columns = ["organization_id", *key_columns, *MEASURE_COLUMNS]
    group = ", ".join(str(i) for i in range(2, len(key_sql) + 1))
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in columns)}) "
        f"SELECT organization_id, {', '.join(key_sql)}, {', '.join(measures_sql)} "
        "FROM (SELECT s.*, width_bucket(latency_ns, %s::bigint[]) AS lb, width_bucket(ttft_ns, %s::bigint[]) AS tb "
        f"FROM {qn(Step._meta.db_table)} s WHERE {' AND '.join(where)}) steps "
        f"GROUP BY organization_id, {group}, {dims_sql}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _rebuild_hours_python(
    *, organization: Organization, start: datetime | None, end: datetime | None, model: type
) -> int:
    """The hourly rows of `model` (usage or subject rollup) from the steps, by the write path's own rule."""
    steps = Step.objects.filter(_range_q(start, end, "created_at"), organization=organization).exclude(
        status=StepStatus.PENDING
    )
    rows_of = subject_rows if model is SubjectRollupHour else usage_rows
    rows = rows_of(steps.iterator(), hour_of)
    model.objects.bulk_create((model(**row) for row in rows), batch_size=500)
    return len(rows)


def _rebuild_days(
    *, organization: Organization, start: datetime | None, end: datetime | None, hour_model: type, day_model: type
) -> None:
    """The daily rows of `day_model` summed from the hourly rows of `hour_model`."""
    keys = [k for k in _MEASURE_KEYS[day_model] if k != "bucket"]
    hours = hour_model.objects.filter(_range_q(start, end, "bucket"), organization=organization)
    grouped = (
        hours.annotate(day=TruncDay("bucket", tzinfo=UTC))
        .values("day", *keys)
        .annotate(**{f"sum_{c}": Sum(c) for c in MEASURE_COLUMNS})
        .order_by()
    )
    if connection.vendor == "postgresql":
        columns = {"bucket": "day", **{k: k for k in keys}, **{c: f"sum_{c}" for c in MEASURE_COLUMNS}}
        insert_grouped(day_model, organization=organization, rows=grouped, columns=columns)
        return
    day_model.objects.bulk_create(
        (
            day_model(
                organization=organization,
                bucket=row["day"],
                **{k: row[k] for k in keys},
                **{c: row[f"sum_{c}"] for c in MEASURE_COLUMNS},
            )
            for row in grouped.iterator()
        ),
        batch_size=500,
    )


# --- reads --------------------------------------------------------------------------------------

# Report filter name -> rollup column.
ROLLUP_FILTERS = {
    "agent_id": "agent_id",
    "project_id": "project_id",
    "model": "model",
    "model_handle": "model_handle",
    "provider": "provider_name",
}
_TRUNC = {"hour": TruncHour, "day": TruncDay, "week": TruncWeek}
# A histogram not read (RollupRow.from_columns): all zeros, one shared tuple.
NO_HISTOGRAM: tuple[int, ...] = (0,) * BUCKETS


@dataclass(slots=True)
class RollupRow:
    """Summed measures of one group: counts (by COUNT_COLUMNS name), cost and the two histograms."""

    counts: dict[str, int]
    cost_usd: Decimal
    latency: Sequence[int]
    ttft: Sequence[int]

    @classmethod
    def from_sums(cls, sums: Sequence[Any]) -> "RollupRow":
        """From one result row's sums, in MEASURE_COLUMNS order."""
        n = len(COUNT_COLUMNS)
        return cls(
            counts={name: int(value or 0) for name, value in zip(COUNT_COLUMNS, sums[:n], strict=True)},
            cost_usd=Decimal(sums[n] or 0),
            # Sums over at least one row of NOT NULL columns: never null (empty groups are skipped).
            latency=sums[n + 1 : n + 1 + BUCKETS],
            ttft=sums[n + 1 + BUCKETS :],
        )

    @classmethod
    def from_columns(cls, columns: Sequence[str], sums: Sequence[Any]) -> "RollupRow":
        """From the sums of some MEASURE_COLUMNS only (`columns`, in that order); the others are 0. A histogram
        none of whose columns is read is NO_HISTOGRAM (all zeros, shared: `merge` skips it)."""
        if columns is MEASURE_COLUMNS:
            return cls.from_sums(sums)
        counts = dict.fromkeys(COUNT_COLUMNS, 0)
        cost: Decimal = Decimal(0)
        latency: Sequence[int] = NO_HISTOGRAM
        ttft: Sequence[int] = NO_HISTOGRAM
        for column, value in zip(columns, sums, strict=True):
            if column in counts:
                counts[column] = int(value or 0)
            elif column == "cost_usd":
                cost = Decimal(value or 0)
            elif column[:9] == "latency_h":
                latency = list(latency) if latency is NO_HISTOGRAM else latency
                latency[int(column[9:])] = int(value or 0)  # type: ignore[index]
            else:
                ttft = list(ttft) if ttft is NO_HISTOGRAM else ttft
                ttft[int(column[6:])] = int(value or 0)  # type: ignore[index]
        return cls(counts=counts, cost_usd=cost, latency=latency, ttft=ttft)

    def merge(self, other: "RollupRow", *, sign: int = 1) -> None:
        """Add `other` into this row (sign -1: take it out; counts, sums and buckets subtract exactly)."""
        for name, value in other.counts.items():
            self.counts[name] += sign * value
        self.cost_usd += sign * other.cost_usd
        if other.latency is not NO_HISTOGRAM:  # adding zeros changes nothing
            self.latency = [a + sign * b for a, b in zip(self.latency, other.latency, strict=True)]
        if other.ttft is not NO_HISTOGRAM:
            self.ttft = [a + sign * b for a, b in zip(self.ttft, other.ttft, strict=True)]


def rollup_segments(
    *, start: datetime | None, end: datetime | None, hourly: bool
) -> list[tuple[type, datetime | None, datetime | None]] | None:
    """Which table covers which part of [start, end): days in the middle, hours at ragged ends.

    None when a bound is not on a whole hour (only a scan of the steps is exact then).
    """
    for bound in (start, end):
        if bound is not None and hour_of(bound) != bound:
            return None
    if hourly:
        return [(StepRollupHour, start, end)]
    day_start = start if start is None or day_of(start) == start else day_of(start) + timedelta(days=1)
    day_end = end if end is None or day_of(end) == end else day_of(end)
    if day_start is not None and day_end is not None and day_start >= day_end:
        return [(StepRollupHour, start, end)]
    segments: list[tuple[type, datetime | None, datetime | None]] = []
    if start is not None and day_start != start:
        segments.append((StepRollupHour, start, day_start))
    segments.append((StepRollupDay, day_start, day_end))
    if end is not None and day_end != end:
        segments.append((StepRollupHour, day_end, end))
    return segments


def rollup_totals(
    *,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
    columns: Sequence[str] = MEASURE_COLUMNS,
) -> dict[tuple[Any, ...], RollupRow] | None:
    """Summed rollup measures per group, or None when the rollups cannot answer exactly this range.

    `filters` maps ROLLUP_FILTERS names to accepted values; `group_by` holds rollup columns and/or
    hour/day/week. Keys of the result are tuples in `group_by` order. `columns`: the MEASURE_COLUMNS to sum
    ("steps" first, in MEASURE_COLUMNS order; the others are 0), all by default.
    """
    rows = _grouped(organization, start, end, filters, group_by, _sums_of(columns))
    if rows is None:
        return None
    return merge_into({}, ((key, RollupRow.from_columns(columns, sums)) for key, sums in rows))


def _sums_of(columns: Sequence[str]) -> Sequence[tuple[str, str]]:
    if columns is MEASURE_COLUMNS:
        return _MEASURE_SUMS
    if not columns or columns[0] != "steps":
        raise ValueError("the summed columns start with steps")
    return tuple(("sum", column) for column in columns)


def rollup_step_counts(
    *,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
    column: str = "steps",
) -> dict[tuple[Any, ...], int] | None:
    """Ended steps per group (as rollup_totals, summing the one column a count needs: `column`, one of
    COUNT_COLUMNS, e.g. cancelled_steps for the cancelled ones)."""
    if column not in COUNT_COLUMNS:
        raise ValueError(f"not a count column: {column}")
    rows = _grouped(organization, start, end, filters, group_by, (("sum", column),))
    if rows is None:
        return None
    result: dict[tuple[Any, ...], int] = {}
    for key, (steps,) in rows:
        result[key] = result.get(key, 0) + int(steps)
    return result


@dataclass(slots=True)
class ErrorTotals:
    """One group of the errors rollups: how many, first and last seen, and the greatest step id."""

    count: int
    first_seen: datetime
    last_seen: datetime
    example_step_id: str

    def merge(self, other: "ErrorTotals") -> None:
        self.count += other.count
        self.first_seen = min(self.first_seen, other.first_seen)
        self.last_seen = max(self.last_seen, other.last_seen)
        self.example_step_id = max(self.example_step_id, other.example_step_id)


_ERROR_AGGREGATES = (("sum", "count"), ("min", "first_seen"), ("max", "last_seen"), ("max_bytes", "example_step_id"))


def rollup_errors(
    *,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
) -> dict[tuple[Any, ...], ErrorTotals] | None:
    """Errors per group from the errors rollups (as rollup_totals; `filters` may also name error_type, and
    `group_by` may hold error_type)."""
    rows = _grouped(organization, start, end, filters, group_by, _ERROR_AGGREGATES, tables=_ERROR_TABLE_OF)
    if rows is None:
        return None
    return merge_into({}, ((key, ErrorTotals(int(n), first, last, example)) for key, (n, first, last, example) in rows))


def subject_rollup_rows(
    *,
    organization: Organization,
    kind: str,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]] | None = None,
    subject_ids: Sequence[str] | None = None,
    columns: Sequence[str] = MEASURE_COLUMNS,
) -> dict[str, RollupRow] | None:
    """Summed measures per end user (`kind` "user") or conversation ("conversation") over [start, end), from the
    subject rollups: {subject_id: RollupRow} (counts by COUNT_COLUMNS name, with error_steps the failed steps;
    cost; latency and TTFT histograms to read percentiles from, as rollup_totals gives them).

    `filters` maps ROLLUP_FILTERS names (agent_id, project_id, model, model_handle, provider) to accepted values;
    `subject_ids`, when given, limits the answer to those subjects. Whole days are read from the day rows, the
    hours at ragged ends of days from the hour rows. None when a bound is not on a whole hour (the minutes at
    such an end are only in the steps: the caller adds them from there, as the reports do). Subjects without
    steps in the window are absent. `columns`: the MEASURE_COLUMNS to sum, as rollup_totals takes them.
    """
    if kind not in SubjectKind.values:
        raise ValueError(f"not a subject kind: {kind}")
    unknown = set(filters or {}) - set(ROLLUP_FILTERS)
    if unknown:
        raise ValueError(f"not rollup filters: {sorted(unknown)}")
    where: dict[str, Sequence[str]] = {**(filters or {}), "kind": [kind]}
    if subject_ids is not None:
        where["subject_id"] = list(subject_ids)
    rows = _grouped(organization, start, end, where, ["subject_id"], _sums_of(columns), tables=_SUBJECT_TABLE_OF)
    if rows is None:
        return None
    return merge_into({}, ((key[0], RollupRow.from_columns(columns, sums)) for key, sums in rows))


def merge_into(result: dict[tuple[Any, ...], Any], items: Iterable[tuple[tuple[Any, ...], Any]]) -> dict:
    """One value per key in `result`: a key met again (a group spanning segments) is merged into the first."""
    for key, value in items:
        if key in result:
            result[key].merge(value)
        else:
            result[key] = value
    return result


_ERROR_TABLE_OF = {StepRollupHour: ErrorRollupHour, StepRollupDay: ErrorRollupDay}
_SUBJECT_TABLE_OF = {StepRollupHour: SubjectRollupHour, StepRollupDay: SubjectRollupDay}
# Report filter name -> errors rollup column.
ERROR_ROLLUP_FILTERS = {**ROLLUP_FILTERS, "error_type": "error_type"}
# Filter name -> column, for every rollup table (a name only filters the tables that have its column).
_FILTER_COLUMNS = {**ERROR_ROLLUP_FILTERS, "kind": "kind", "subject_id": "subject_id"}
_GROUP_COLUMNS = {*ERROR_ROLLUP_KEY, "kind", "subject_id"}


def _grouped(
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
    aggregates: Sequence[tuple[str, str]],
    *,
    tables: dict[type, type] | None = None,
) -> list[tuple[tuple[Any, ...], Sequence[Any]]] | None:
    """(group key, aggregates) per group and segment, or None when the range is not on whole hours.

    A group spanning segments (hours at a ragged start, days, hours at a ragged end) appears once per
    segment; the callers combine them. The first aggregate is a count: groups where it is empty are left out."""
    time_unit = next((g for g in group_by if g in _TRUNC), None)
    segments = rollup_segments(start=start, end=end, hourly=time_unit == "hour")
    if segments is None:
        return None
    keys = len(group_by)
    result = []
    for model, seg_start, seg_end in segments:
        table = tables[model] if tables else model  # the errors or subject table covering the same segment
        for row in _segment_rows(table, organization, seg_start, seg_end, filters, group_by, aggregates):
            if row[keys]:  # else no rows (an empty aggregate)
                result.append((tuple(row[:keys]), row[keys:]))
    return result


def _segment_rows(
    model: type,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
    aggregates: Sequence[tuple[str, str]],
) -> list[tuple[Any, ...]]:
    """Group keys then the aggregates ((sum|min|max|max_bytes, column) pairs), one tuple per group."""
    if connection.vendor == "postgresql":
        return _segment_rows_postgres(model, organization, start, end, filters, group_by, aggregates)
    qs: QuerySet = model.objects.filter(_range_q(start, end, "bucket"), organization=organization)
    for name, values in filters.items():
        qs = qs.filter(**{f"{_FILTER_COLUMNS[name]}__in": list(values)})
    functions = {"sum": Sum, "min": Min, "max": Max, "max_bytes": Max}  # SQLite compares text byte by byte
    computed = {f"a{i}": functions[kind](column) for i, (kind, column) in enumerate(aggregates)}
    if not group_by:  # values() without fields would group by every column
        total = qs.aggregate(**computed)
        return [tuple(total[name] for name in computed)]
    annotations = {g: _TRUNC[g]("bucket", tzinfo=UTC) for g in group_by if g in _TRUNC}
    if annotations:
        qs = qs.annotate(**annotations)
    return list(qs.values(*group_by).annotate(**computed).values_list(*group_by, *computed).order_by())


def _aggregates_sql(aggregates: Sequence[tuple[str, str]]) -> str:
    def one(kind: str, column: str) -> str:
        if kind == "sum":
            # bigint sums come back as numeric (Decimal in Python, and slower to aggregate and send): cast
            # the counts back; no group comes near 2^63.
            return f'sum("{column}")' + ("" if column == "cost_usd" else "::bigint")
        if kind == "max_bytes":
            return f'max("{column}" COLLATE "C")'
        return f'{kind}("{column}")'

    return ", ".join(one(kind, column) for kind, column in aggregates)


_MEASURE_SUMS = tuple(("sum", column) for column in MEASURE_COLUMNS)
_MEASURE_SUMS_SQL = _aggregates_sql(_MEASURE_SUMS)


def _segment_rows_postgres(
    model: type,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
    aggregates: Sequence[tuple[str, str]],
) -> list[tuple[Any, ...]]:
    """The same query in plain SQL: building 135 aggregate expressions through the ORM costs more than
    running them."""
    keys = []
    for name in group_by:
        if name in _TRUNC:
            keys.append(f"date_trunc('{name}', bucket, 'UTC')")
        elif name in _GROUP_COLUMNS:
            keys.append(f'"{name}"')
        else:
            raise ValueError(f"not a rollup dimension: {name}")
    where, params = ["organization_id = %s"], [organization.pk]
    if start is not None:
        where.append("bucket >= %s")
        params.append(start)
    if end is not None:
        where.append("bucket < %s")
        params.append(end)
    for name, values in filters.items():
        where.append(f'"{_FILTER_COLUMNS[name]}" = ANY(%s)')
        params.append(list(values))
    computed = _MEASURE_SUMS_SQL if aggregates is _MEASURE_SUMS else _aggregates_sql(aggregates)
    sql = f"SELECT {', '.join([*keys, computed])} FROM {model._meta.db_table} WHERE {' AND '.join(where)}"
    if keys:
        sql += " GROUP BY " + ", ".join(str(i) for i in range(1, len(keys) + 1))
    with read_connection(model).cursor() as cursor:  # the replica where the request may read from it
        cursor.execute(sql, params)
        return cursor.fetchall()
