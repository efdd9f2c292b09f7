"""Hourly and daily rollups of ended steps: the write path adds each step once, reports read them.

`step_rollup_add` is called by the write path (steps.services) when a step ends; it upserts one row
per table with `INSERT ... ON CONFLICT DO UPDATE`, so concurrent workers add up instead of racing.
`step_rollups_rebuild` recomputes a range from the steps (after a bulk load such as seed_steps, or to
repair). `rollup_totals` reads summed measures and histograms for the reports.

Exactness: step counts, error counts, token sums and cost sums equal a scan of the steps (for steps
that ended through the write path). Latency and TTFT percentiles come from log-scale histograms
(steps.histograms): each lies within the right 26%-wide bucket and is interpolated inside it.
Rollups are keyed by the step's created_at, so a step lands in the hour it started.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour, TruncWeek

from accounts.models import Organization
from steps.histograms import BOUNDS_NS, BUCKETS, bucket_of
from steps.models import ROLLUP_DIMENSIONS, Step, StepRollupDay, StepRollupHour, StepStatus

COUNT_COLUMNS = (
    "steps",
    "error_steps",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
LATENCY_COLUMNS = tuple(f"latency_h{i:02d}" for i in range(BUCKETS))
TTFT_COLUMNS = tuple(f"ttft_h{i:02d}" for i in range(BUCKETS))
MEASURE_COLUMNS = (*COUNT_COLUMNS, "cost_usd", *LATENCY_COLUMNS, *TTFT_COLUMNS)
_TOKEN_FIELDS = COUNT_COLUMNS[2:]
ROLLUP_TABLES = (StepRollupHour, StepRollupDay)


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_ceil(moment: datetime) -> datetime:
    """The first whole hour at or after `moment`."""
    floor = hour_of(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _dimensions(step: Step) -> dict[str, str]:
    return {
        "project_id": step.project_id or "",
        "agent_id": step.agent_id or "",
        "provider_name": step.provider_name or "",
        "model": step.model or "",
        "model_handle": step.model_handle or "",
    }


def _measures(step: Step) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(MEASURE_COLUMNS, 0)
    values["steps"] = 1
    values["error_steps"] = int(step.status == StepStatus.FAILED)
    for name in _TOKEN_FIELDS:
        values[name] = getattr(step, name) or 0
    values["cost_usd"] = step.cost_usd or Decimal(0)
    if step.latency_ns is not None:
        values[LATENCY_COLUMNS[bucket_of(step.latency_ns)]] = 1
    if step.ttft_ns is not None:
        values[TTFT_COLUMNS[bucket_of(step.ttft_ns)]] = 1
    return values


def _upsert_sql(model: type[StepRollupHour | StepRollupDay]) -> tuple[str, list[str]]:
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    keys = ["organization_id", "bucket", *ROLLUP_DIMENSIONS]
    columns = [*keys, *MEASURE_COLUMNS]
    updates = ", ".join(f"{qn(c)} = {table}.{qn(c)} + excluded.{qn(c)}" for c in MEASURE_COLUMNS)
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(qn(k) for k in keys)}) DO UPDATE SET {updates}"
    )
    return sql, columns


def step_rollup_add(*, step: Step) -> None:
    """Add an ended step to its hour and day rollup rows (call once, when the step ends)."""
    if step.status == StepStatus.PENDING:
        return
    ops = connection.ops
    values = {**_dimensions(step), **_measures(step), "organization_id": step.organization_id}
    values["cost_usd"] = ops.adapt_decimalfield_value(values["cost_usd"], 24, 10)
    statements = []
    for model, bucket in ((StepRollupHour, hour_of(step.created_at)), (StepRollupDay, day_of(step.created_at))):
        sql, columns = _upsert_sql(model)
        row = {**values, "bucket": ops.adapt_datetimefield_value(bucket)}
        statements.append((sql, [row[c] for c in columns]))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Both upserts in one round trip (a data-modifying CTE): this runs once per step on the hot path.
            (hour_sql, hour_params), (day_sql, day_params) = statements
            cursor.execute(f"WITH hour_row AS ({hour_sql} RETURNING 1) {day_sql}", [*hour_params, *day_params])
        else:
            for sql, params in statements:
                cursor.execute(sql, params)


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
    for model in ROLLUP_TABLES:
        model.objects.filter(_range_q(start, end, "bucket"), organization=organization).delete()
    if connection.vendor == "postgresql":
        hours = _rebuild_hours_postgres(organization=organization, start=start, end=end)
    else:
        hours = _rebuild_hours_python(organization=organization, start=start, end=end)
    _rebuild_days(organization=organization, start=start, end=end)
    return hours


def _rebuild_hours_postgres(*, organization: Organization, start: datetime | None, end: datetime | None) -> int:
    qn = connection.ops.quote_name
    table = qn(StepRollupHour._meta.db_table)
    dims_sql = ", ".join(f"coalesce({qn(d)}, '')" for d in ROLLUP_DIMENSIONS)
    measures_sql = [
        "count(*)",
        f"count(*) FILTER (WHERE status = '{StepStatus.FAILED.value}')",
        *(f"coalesce(sum({qn(c)}), 0)" for c in _TOKEN_FIELDS),
        "coalesce(sum(cost_usd), 0)",
        *(f"count(*) FILTER (WHERE lb = {i})" for i in range(BUCKETS)),
        *(f"count(*) FILTER (WHERE tb = {i})" for i in range(BUCKETS)),
    ]
    where = ["organization_id = %s", "status <> %s"]
    params: list[Any] = [list(BOUNDS_NS), list(BOUNDS_NS), organization.pk, StepStatus.PENDING.value]
    if start is not None:
        where.append("created_at >= %s")
        params.append(start)
    if end is not None:
        where.append("created_at < %s")
        params.append(end)
    columns = ["organization_id", "bucket", *ROLLUP_DIMENSIONS, *MEASURE_COLUMNS]
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in columns)}) "
        f"SELECT organization_id, date_trunc('hour', created_at, 'UTC'), {dims_sql}, {', '.join(measures_sql)} "
        "FROM (SELECT s.*, width_bucket(latency_ns, %s::bigint[]) AS lb, width_bucket(ttft_ns, %s::bigint[]) AS tb "
        f"FROM {qn(Step._meta.db_table)} s WHERE {' AND '.join(where)}) steps "
        f"GROUP BY organization_id, 2, {dims_sql}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _rebuild_hours_python(*, organization: Organization, start: datetime | None, end: datetime | None) -> int:
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    steps = Step.objects.filter(_range_q(start, end, "created_at"), organization=organization).exclude(
        status=StepStatus.PENDING
    )
    for step in steps.iterator():
        key = (hour_of(step.created_at), *_dimensions(step).values())
        measures = _measures(step)
        row = rows.get(key)
        if row is None:
            rows[key] = measures
        else:
            for name, value in measures.items():
                row[name] += value
    StepRollupHour.objects.bulk_create(
        StepRollupHour(
            organization=organization, bucket=key[0], **dict(zip(ROLLUP_DIMENSIONS, key[1:], strict=True)), **row
        )
        for key, row in rows.items()
    )
    return len(rows)


def _rebuild_days(*, organization: Organization, start: datetime | None, end: datetime | None) -> None:
    hours = StepRollupHour.objects.filter(_range_q(start, end, "bucket"), organization=organization)
    grouped = (
        hours.annotate(day=TruncDay("bucket", tzinfo=UTC))
        .values("day", *ROLLUP_DIMENSIONS)
        .annotate(**{f"sum_{c}": Sum(c) for c in MEASURE_COLUMNS})
    )
    StepRollupDay.objects.bulk_create(
        (
            StepRollupDay(
                organization=organization,
                bucket=row["day"],
                **{d: row[d] for d in ROLLUP_DIMENSIONS},
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

    def merge(self, other: "RollupRow") -> None:
        for name, value in other.counts.items():
            self.counts[name] += value
        self.cost_usd += other.cost_usd
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        self.ttft = [a + b for a, b in zip(self.ttft, other.ttft, strict=True)]


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
) -> dict[tuple[Any, ...], RollupRow] | None:
    """Summed rollup measures per group, or None when the rollups cannot answer exactly this range.

    `filters` maps ROLLUP_FILTERS names to accepted values; `group_by` holds rollup columns and/or
    hour/day/week. Keys of the result are tuples in `group_by` order.
    """
    rows = _grouped_sums(organization, start, end, filters, group_by, MEASURE_COLUMNS)
    if rows is None:
        return None
    result: dict[tuple[Any, ...], RollupRow] = {}
    for key, sums in rows:
        summed = RollupRow.from_sums(sums)
        if key in result:
            result[key].merge(summed)
        else:
            result[key] = summed
    return result


def rollup_step_counts(
    *,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
) -> dict[tuple[Any, ...], int] | None:
    """Ended steps per group (as rollup_totals, summing the one column a count needs)."""
    rows = _grouped_sums(organization, start, end, filters, group_by, ("steps",))
    if rows is None:
        return None
    result: dict[tuple[Any, ...], int] = {}
    for key, (steps,) in rows:
        result[key] = result.get(key, 0) + int(steps)
    return result


def _grouped_sums(
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
    columns: Sequence[str],
) -> list[tuple[tuple[Any, ...], Sequence[Any]]] | None:
    """(group key, sums of `columns`) per group and segment, or None when the range is not on whole hours.

    A group spanning segments (hours at a ragged start, days, hours at a ragged end) appears once per
    segment; the callers add them up."""
    time_unit = next((g for g in group_by if g in _TRUNC), None)
    segments = rollup_segments(start=start, end=end, hourly=time_unit == "hour")
    if segments is None:
        return None
    keys = len(group_by)
    result = []
    for model, seg_start, seg_end in segments:
        for row in _segment_rows(model, organization, seg_start, seg_end, filters, group_by, columns):
            if row[keys]:  # else no steps (an empty aggregate)
                result.append((tuple(row[:keys]), row[keys:]))
    return result


def _segment_rows(
    model: type,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
    columns: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Group keys then the sums of `columns` (the first of them a count of steps), one tuple per group."""
    if connection.vendor == "postgresql":
        return _segment_rows_postgres(model, organization, start, end, filters, group_by, columns)
    qs: QuerySet = model.objects.filter(_range_q(start, end, "bucket"), organization=organization)
    for name, values in filters.items():
        column = ROLLUP_FILTERS[name]
        qs = qs.filter(**{f"{column}__in": list(values)})
    sums = {f"sum_{c}": Sum(c) for c in columns}
    if not group_by:  # values() without fields would group by every column
        total = qs.aggregate(**sums)
        return [tuple(total[name] for name in sums)]
    annotations = {g: _TRUNC[g]("bucket", tzinfo=UTC) for g in group_by if g in _TRUNC}
    if annotations:
        qs = qs.annotate(**annotations)
    return list(qs.values(*group_by).annotate(**sums).values_list(*group_by, *sums).order_by())


def _sums_sql(columns: Sequence[str]) -> str:
    # bigint sums come back as numeric (Decimal in Python, and slower to aggregate and send): cast the
    # counts back; no group comes near 2^63.
    return ", ".join(f'sum("{column}")' + ("" if column == "cost_usd" else "::bigint") for column in columns)


_MEASURE_SUMS_SQL = _sums_sql(MEASURE_COLUMNS)


def _segment_rows_postgres(
    model: type,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, Sequence[str]],
    group_by: Sequence[str],
    columns: Sequence[str],
) -> list[tuple[Any, ...]]:
    """The same query in plain SQL: building 135 aggregate expressions through the ORM costs more than
    running them."""
    keys = []
    for name in group_by:
        if name in _TRUNC:
            keys.append(f"date_trunc('{name}', bucket, 'UTC')")
        elif name in ROLLUP_DIMENSIONS:
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
        where.append(f'"{ROLLUP_FILTERS[name]}" = ANY(%s)')
        params.append(list(values))
    sums = _MEASURE_SUMS_SQL if columns is MEASURE_COLUMNS else _sums_sql(columns)
    sql = f"SELECT {', '.join([*keys, sums])} FROM {model._meta.db_table} WHERE {' AND '.join(where)}"
    if keys:
        sql += " GROUP BY " + ", ".join(str(i) for i in range(1, len(keys) + 1))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
