"""Usage totals over any window: whole days and hours from the rollups, the ragged minutes at both ends from the steps.

A window [start, end) splits into an inner part on whole UTC hours, [hour_ceil(start), hour_of(end)), which
`steps.rollups.rollup_totals` answers (StepRollupDay for the whole days in it, StepRollupHour for the hours
around them), and at most two edges shorter than an hour, [start, hour_ceil(start)) and [hour_of(end), end),
which are read from the steps. An edge is summed the way the rollups sum a step: the same counts, token and
cost sums, and latency and TTFT counted into the same histogram buckets (steps.histograms). So the merged
totals are exactly what an hourly rollup cut at the window's own bounds would hold: counts, tokens and cost
equal a scan of the steps, and a percentile read from the merged histogram equals the one read from a
histogram of the window's steps.

Reading the edges costs at most two hours of one organization's steps, whatever the table's size.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.contrib.postgres.aggregates import ArrayAgg
from django.db import connections
from django.db.models import Count, F, Func, IntegerField, Q, QuerySet, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import TruncDay, TruncHour, TruncWeek

from accounts.models import Organization
from steps.histograms import BOUNDS_NS, BUCKETS, bucket_of
from steps.models import StepStatus
from steps.rollups import (
    COUNT_COLUMNS,
    LATENCY_COLUMNS,
    MEASURE_COLUMNS,
    TOKEN_COLUMNS,
    TTFT_COLUMNS,
    RollupRow,
    hour_ceil,
    hour_of,
    merge_into,
    rollup_totals,
    subject_rollup_rows,
)

TIME_UNITS = {"hour": TruncHour, "day": TruncDay, "week": TruncWeek}
# What a report read, in its `source`: the rollups only, the rollups plus the steps of the ragged edges,
# or only the steps.
SOURCE_ROLLUP = "rollup"
SOURCE_ROLLUP_AND_STEPS = "rollup+steps"
SOURCE_STEPS = "steps"

# Usage report row key -> the rollup columns it is computed from (besides "steps", which every row has).
_MEASURE_NEEDS: dict[str, tuple[str, ...]] = {
    "steps": (),
    **{name: (name,) for name in TOKEN_COLUMNS},
    "cache_hit_ratio": ("prompt_tokens", "cached_input_tokens"),
    "cost_usd": ("cost_usd",),
    "error_count": ("error_steps",),
    "error_rate": ("error_steps",),
    **{f"latency_ms_{label}": LATENCY_COLUMNS for label in ("p50", "p95", "p99")},
    **{f"ttft_ms_{label}": TTFT_COLUMNS for label in ("p50", "p95", "p99")},
}


def measure_columns(measures: Iterable[str] | None) -> tuple[str, ...]:
    """The rollup columns (MEASURE_COLUMNS, in their order, "steps" first) that the usage report row keys
    `measures` are computed from; all of them for None. Summing fewer columns changes no number: a column
    not read is one no requested measure depends on."""
    if measures is None:
        return MEASURE_COLUMNS
    needed = {"steps"}
    for name in measures:
        if name not in _MEASURE_NEEDS:
            raise ValueError(f"not a usage measure: {name}")
        needed.update(_MEASURE_NEEDS[name])
    return tuple(column for column in MEASURE_COLUMNS if column in needed)


@dataclass(frozen=True, slots=True)
class WindowSplit:
    """[start, end) as an inner part on whole hours (None: unbounded on that side) and the ragged edges around it."""

    inner_start: datetime | None
    inner_end: datetime | None
    edges: tuple[tuple[datetime, datetime], ...]


def window_split(*, start: datetime | None, end: datetime | None) -> WindowSplit | None:
    """The window's whole hours and its ragged edges (each shorter than an hour), or None when it holds no whole
    hour: the rollups have nothing to add then, and its steps are few."""
    inner_start = hour_ceil(start) if start is not None else None
    inner_end = hour_of(end) if end is not None else None
    if inner_start is not None and inner_end is not None and inner_start >= inner_end:
        return None
    edges = []
    if start is not None and inner_start != start:
        edges.append((start, inner_start))
    if end is not None and inner_end != end:
        edges.append((inner_end, end))
    return WindowSplit(inner_start=inner_start, inner_end=inner_end, edges=tuple(edges))


class _WidthBucket(Func):
    """width_bucket(column, BOUNDS_NS) on PostgreSQL: the histogram bucket index, as steps.histograms.bucket_of
    computes it (and as the rollups' rebuild does)."""

    function = "width_bucket"
    output_field = IntegerField()

    def __init__(self, column: str) -> None:
        super().__init__(F(column), RawSQL("%s::bigint[]", (list(BOUNDS_NS),)))


def report_key(values: Sequence[Any]) -> tuple[Any, ...]:
    """A group key as reports compare them: no value is None (the rollups store it as ""), times in UTC."""
    return tuple(
        None if value == "" or value is None else value.astimezone(UTC) if isinstance(value, datetime) else value
        for value in values
    )


def steps_totals(
    queryset: QuerySet, group_by: Sequence[str], columns: Sequence[str] = MEASURE_COLUMNS
) -> dict[tuple[Any, ...], RollupRow]:
    """The ended steps of `queryset` summed per group as the rollups sum them (RollupRow: counts, cost, latency and
    TTFT histograms).

    `group_by` holds step columns and at most one of hour/day/week (the truncated created_at, in UTC); keys are
    report_key tuples in `group_by` order. `columns` (measure_columns): without a histogram's columns, that
    histogram is left empty (not read).
    """
    latency_wanted = columns is MEASURE_COLUMNS or LATENCY_COLUMNS[0] in columns
    ttft_wanted = columns is MEASURE_COLUMNS or TTFT_COLUMNS[0] in columns
    queryset = queryset.exclude(status=StepStatus.PENDING)
    postgres = connections[queryset.db].vendor == "postgresql"
    annotations: dict[str, Any] = {g: TIME_UNITS[g]("created_at", tzinfo=UTC) for g in group_by if g in TIME_UNITS}
    sums: dict[str, Any] = {
        "n_steps": Count("pk"),
        "n_errors": Count("pk", filter=Q(status=StepStatus.FAILED)),
        "n_cancelled": Count("pk", filter=Q(status=StepStatus.CANCELLED)),
        "sum_cost_usd": Sum("cost_usd"),
        **{f"sum_{name}": Sum(name) for name in TOKEN_COLUMNS},
    }
    if postgres:
        # One row per group, its steps' histogram buckets in two arrays: far fewer rows (each converted in Python)
        # than grouping by the buckets too.
        if latency_wanted:
            sums["latency_buckets"] = ArrayAgg(_WidthBucket("latency_ns"), filter=Q(latency_ns__isnull=False))
        if ttft_wanted:
            sums["ttft_buckets"] = ArrayAgg(_WidthBucket("ttft_ns"), filter=Q(ttft_ns__isnull=False))
        grouped = queryset.annotate(**annotations).values(*group_by).annotate(**sums).order_by()
    else:  # SQLite has no width_bucket nor arrays: group by the values too and bucket them here (its data is small)
        values = {"latency_value": F("latency_ns")} if latency_wanted else {}
        if ttft_wanted:
            values["ttft_value"] = F("ttft_ns")
        annotations.update(values)
        grouped = queryset.annotate(**annotations).values(*group_by, *values).annotate(**sums).order_by()
    result: dict[tuple[Any, ...], RollupRow] = {}
    # A plain fetch, not .iterator(): on PostgreSQL that is a server-side cursor, several round trips for the few
    # rows an edge has.
    for row in grouped:
        key = report_key([row[g] for g in group_by])
        totals = result.get(key)
        if totals is None:
            totals = result[key] = RollupRow(
                counts=dict.fromkeys(COUNT_COLUMNS, 0), cost_usd=Decimal(0), latency=[0] * BUCKETS, ttft=[0] * BUCKETS
            )
        n = row["n_steps"]
        totals.counts["steps"] += n
        totals.counts["error_steps"] += row["n_errors"]
        totals.counts["cancelled_steps"] += row["n_cancelled"]
        for name in TOKEN_COLUMNS:
            totals.counts[name] += row[f"sum_{name}"] or 0
        totals.cost_usd += Decimal(row["sum_cost_usd"] or 0)
        latency, ttft = totals.latency, totals.ttft
        if postgres:
            for bucket in row.get("latency_buckets") or ():
                latency[bucket] += 1  # type: ignore[index]
            for bucket in row.get("ttft_buckets") or ():
                ttft[bucket] += 1  # type: ignore[index]
            continue
        if row.get("latency_value") is not None:
            latency[bucket_of(row["latency_value"])] += n  # type: ignore[index]
        if row.get("ttft_value") is not None:
            ttft[bucket_of(row["ttft_value"])] += n  # type: ignore[index]
    return result


def rollup_window_totals(
    *,
    organization: Organization,
    steps: QuerySet,
    start: datetime | None,
    end: datetime | None,
    filters: Mapping[str, Sequence[str]],
    group_by: Sequence[str],
    columns: Sequence[str] = MEASURE_COLUMNS,
) -> tuple[dict[tuple[Any, ...], RollupRow], str] | None:
    """Totals per group over [start, end): the whole hours and days from the rollups, the ragged edges from `steps`.

    `steps` must be the window's matching steps (the same filters as `filters`, which maps ROLLUP_FILTERS names to
    accepted values, plus the window itself); `group_by` holds rollup columns and at most one of hour/day/week.
    Returns the totals keyed by report_key tuples, and the source read (SOURCE_ROLLUP, or SOURCE_ROLLUP_AND_STEPS
    when an edge was read from the steps); None when the window holds no whole hour. `columns` (measure_columns):
    the measures read, the others left 0.
    """
    split = window_split(start=start, end=end)
    if split is None:
        return None
    inner = rollup_totals(
        organization=organization, start=split.inner_start, end=split.inner_end, filters=dict(filters),
        group_by=list(group_by), columns=columns,
    )  # fmt: skip
    if inner is None:  # cannot happen: the inner bounds are whole hours
        raise AssertionError(f"rollups refused the whole hours [{split.inner_start}, {split.inner_end})")
    totals = merge_into({}, ((report_key(key), row) for key, row in inner.items()))
    for edge_start, edge_end in split.edges:
        edge = steps.filter(created_at__gte=edge_start, created_at__lt=edge_end)
        merge_into(totals, steps_totals(edge, group_by, columns).items())
    return totals, SOURCE_ROLLUP_AND_STEPS if split.edges else SOURCE_ROLLUP


# group_by name -> (subject rollup kind, step column): the groups read from the subject rollups.
SUBJECT_GROUPS = {"user": ("user", "user_id"), "conversation": ("conversation", "conversation_id")}


def subject_window_totals(
    *,
    organization: Organization,
    steps: QuerySet,
    start: datetime | None,
    end: datetime | None,
    filters: Mapping[str, Sequence[str]],
    group: str,
    columns: Sequence[str] = MEASURE_COLUMNS,
) -> tuple[dict[tuple[Any, ...], RollupRow], str] | None:
    """Totals per end user (`group` "user") or conversation over [start, end), as rollup_window_totals gives them
    per rollup group: the whole hours and days from the subject rollups, the ragged edges from `steps`.

    Steps without a user (or conversation) are in no subject row; they form the group keyed (None,), as a scan
    groups them: the usage rollups' total less the subjects' sum (counts, sums and buckets subtract exactly).
    None when the window holds no whole hour. `columns` (measure_columns): the measures read, the others left 0
    (a monitor needs one: summing the ~135 columns of each of thousands of subjects costs more than the query).
    """
    split = window_split(start=start, end=end)
    if split is None:
        return None
    kind, column = SUBJECT_GROUPS[group]
    bounds = {"organization": organization, "start": split.inner_start, "end": split.inner_end}
    subjects = subject_rollup_rows(kind=kind, filters=dict(filters), columns=columns, **bounds)
    whole = rollup_totals(filters=dict(filters), group_by=[], columns=columns, **bounds)
    if subjects is None or whole is None:  # cannot happen: the inner bounds are whole hours
        raise AssertionError(f"rollups refused the whole hours [{split.inner_start}, {split.inner_end})")
    totals = merge_into({}, (((subject_id,), row) for subject_id, row in subjects.items()))
    for no_subject in whole.values():  # at most one row: no grouping
        for row in subjects.values():
            no_subject.merge(row, sign=-1)
        if no_subject.counts["steps"]:
            merge_into(totals, [((None,), no_subject)])
    for edge_start, edge_end in split.edges:
        edge = steps.filter(created_at__gte=edge_start, created_at__lt=edge_end)
        merge_into(totals, steps_totals(edge, [column], columns).items())
    return totals, SOURCE_ROLLUP_AND_STEPS if split.edges else SOURCE_ROLLUP
