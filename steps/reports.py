"""Usage and error reports over steps, grouped by any combination of dimensions and a time bucket.

Two ways to answer, same numbers for counts, tokens and cost:

- **rollups** (steps.rollups, through steps.report_windows): used when every filter is a rollup dimension
  (agent_id, project_id, model, model_handle, provider, start, end) and the grouping is too (model,
  model_handle, provider, agent, project, hour, day, week), on any window holding a whole UTC hour: whole
  days and hours from the rollups, the ragged minutes at both ends from the steps (`source` "rollup+steps").
  Milliseconds at any size; percentiles are read from log-scale histograms (each within its 26%-wide
  bucket, interpolated), the edges' steps counted into the same buckets.
- **steps**: a scan of the matching steps, grouped and with exact percentiles (percentile_cont on
  PostgreSQL) — for every other filter or grouping, a window shorter than its first whole hour, or when
  the caller asks for `exact`.

Both count ended steps only (success, failed, cancelled): a pending step has no usage yet.
"""

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connections
from django.db.models import Aggregate, Count, F, FloatField, Max, Min, Q, QuerySet, Sum
from django.http import QueryDict

from accounts.models import Organization
from agents.models import Agent
from config.errors import ApplicationError
from steps.filters import StepFilterSet, step_filterset
from steps.histograms import percentiles_from_counts
from steps.models import StepStatus
from steps.report_windows import (
    SOURCE_ROLLUP,
    SOURCE_ROLLUP_AND_STEPS,
    SOURCE_STEPS,
    SUBJECT_GROUPS,
    TIME_UNITS,
    WindowSplit,
    measure_columns,
    rollup_window_totals,
    steps_totals,
    subject_window_totals,
    window_split,
)
from steps.rollups import (
    ERROR_ROLLUP_FILTERS,
    ERROR_STEPS,
    ROLLUP_FILTERS,
    TOKEN_COLUMNS,
    ErrorTotals,
    RollupRow,
    greatest_id,
    merge_into,
    rollup_errors,
    rollup_step_counts,
)

# group_by name -> step column (time units are truncations of created_at).
USAGE_GROUPS = {
    "model": "model",
    "model_handle": "model_handle",
    "provider": "provider_name",
    "agent": "agent_id",
    "project": "project_id",
    "run": "run_id",
    "user": "user_id",
    "conversation": "conversation_id",
    "hour": "hour",
    "day": "day",
    "week": "week",
}
# group_by name -> key in a report row: the step column's name, but "provider" rather than "provider_name".
OUTPUT_KEYS = {**USAGE_GROUPS, "provider": "provider"}
ROLLUP_GROUPS = frozenset({"model", "model_handle", "provider", "agent", "project", "hour", "day", "week"})
ERROR_GROUPS = {"provider": "provider_name", "model": "model", "agent": "agent_id", "day": "day"}
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
TOKEN_MEASURES = TOKEN_COLUMNS
MAX_ROWS = 100_000
# Filters that select which steps count as errors, not which steps count: left out of the errors
# report's denominators.
_ERROR_SELECTING = ("error_type", "status", "stop_reason")


class PercentileCont(Aggregate):
    """percentile_cont(fraction) WITHIN GROUP (ORDER BY expression) — PostgreSQL."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, *, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


@dataclass(slots=True)
class Report:
    """Rows of a report and how they were computed."""

    group_by: list[str]
    rows: list[dict[str, Any]]
    source: str  # "rollup", "rollup+steps" or "steps" (steps.report_windows)
    exact_percentiles: bool
    truncated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _bad(field_name: str, message: str) -> ApplicationError:
    return ApplicationError("Invalid query parameters.", extra={field_name: [message]})


def parse_group_by(raw: Sequence[str] | str | None, *, allowed: Mapping[str, str]) -> list[str]:
    """group_by from `a,b` (or repeated parameters, read as one comma-separated list): names from `allowed`, at
    most one time unit; a dimension named twice counts once. Exactly what `group_by_pattern` describes."""
    if raw is None:
        return []
    joined = raw if isinstance(raw, str) else ",".join(raw)
    if not joined:
        return []
    names = joined.split(",")
    unknown = [repr(n) for n in names if n not in allowed]
    if unknown:
        raise _bad("group_by", f"Unknown: {', '.join(unknown)}. Choose from {', '.join(allowed)}.")
    if len([n for n in names if n in TIME_UNITS]) > 1:
        raise _bad("group_by", "At most one of hour, day, week.")
    return list(dict.fromkeys(names))


def group_by_pattern(allowed: Mapping[str, str]) -> str:
    """The regular expression of the group_by values `parse_group_by` accepts (for the OpenAPI schema): names
    joined by commas, at most one of them a time unit (the middle one, when the others are dimensions)."""
    dimensions = "|".join(sorted((n for n in allowed if n not in TIME_UNITS), key=len, reverse=True))
    units = "|".join(n for n in allowed if n in TIME_UNITS)
    any_name = f"{dimensions}|{units}" if units else dimensions
    return f"^(?:(?:{dimensions}),)*(?:{any_name})(?:,(?:{dimensions}))*$"


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def _cost(value: Any) -> str:
    return format(Decimal(value or 0).quantize(_COST_QUANTUM), "f")


_COST_QUANTUM = Decimal("0.0000000001")
_FRACTIONS = tuple(q for _, q in PERCENTILES)
_LATENCY_KEYS = tuple(f"latency_ms_{label}" for label, _ in PERCENTILES)
_TTFT_KEYS = tuple(f"ttft_ms_{label}" for label, _ in PERCENTILES)


# What each report counts, said in its answer: both count an error as a failed step, so the usage report's
# error_count and the errors report's total_errors agree; cancelled steps are steps, never errors.
USAGE_COUNTS = "steps: ended steps (success, failed, cancelled); error_count: failed steps (cancelled are not errors)"
ERRORS_COUNT = "count and total_errors: failed steps; cancelled: cancelled steps, which are not errors"


def _measures(
    *,
    steps: int,
    errors: int,
    tokens: Mapping[str, int | None],
    cost: Any,
    latency: Sequence[float | None],
    ttft: Sequence[float | None],
) -> dict[str, Any]:
    """A report row's measures; latency and TTFT percentiles in nanoseconds, in PERCENTILES order."""
    prompt = tokens["prompt_tokens"] or 0
    cached = tokens["cached_input_tokens"] or 0
    row: dict[str, Any] = {"steps": steps}
    for name in TOKEN_MEASURES:
        row[name] = tokens[name] or 0
    row["cache_hit_ratio"] = round(cached / prompt, 6) if prompt else None
    row["cost_usd"] = _cost(cost)
    row["error_count"] = errors
    row["error_rate"] = round(errors / steps, 6) if steps else None
    for keys, values in ((_LATENCY_KEYS, latency), (_TTFT_KEYS, ttft)):
        for key, value_ns in zip(keys, values, strict=True):
            # To the microsecond; round() to an integer is ten times cheaper than round(x, 3).
            row[key] = None if value_ns is None else round(value_ns / 1000) / 1000
    return row


def _sort_key(row: dict[str, Any], keys: list[str]) -> tuple:
    return tuple((row[k] is None, row[k] if row[k] is not None else "") for k in keys)


def _with_agent_names(rows: list[dict[str, Any]], organization: Organization) -> None:
    ids = {row["agent_id"] for row in rows if row.get("agent_id")}
    names = dict(Agent.objects.filter(organization=organization, pk__in=ids).values_list("pk", "name"))
    for row in rows:
        row["agent_name"] = names.get(row["agent_id"])


def _rollup_filters(
    filterset: StepFilterSet, allowed: Mapping[str, str] = ROLLUP_FILTERS
) -> dict[str, list[str]] | None:
    """The filters as rollup column filters, or None when one of them is not a rollup dimension."""
    active = filterset.active_filters()
    if not active <= {*allowed, "start", "end"}:
        return None
    return {name: filterset.form.cleaned_data[name] for name in active if name in allowed}


def usage_report(
    *,
    organization: Organization,
    filters: Mapping[str, Any] | QueryDict | None = None,
    group_by: Sequence[str] = (),
    exact: bool = False,
    limit: int = MAX_ROWS,
    measures: Sequence[str] | None = None,
) -> Report:
    """Usage per group: steps, tokens, cache hit ratio, cost, errors, latency and TTFT percentiles.

    `filters` are the step filters of GET /v1/usage (start and end included). With only rollup filters and
    groupings, any window reads the rollups for its whole hours and days and the steps for its ragged ends
    (steps.report_windows); otherwise, with `exact`, or for a window holding no whole hour, a scan of the steps.

    `measures` (row keys, e.g. ["cost_usd"]): when the rollups answer, rows hold only the group keys, `steps` and
    those measures, read from only the columns they need (monitors: one metric of thousands of end users). The
    values are the same as in a full row; a scan still gives full rows.
    """
    group_by = parse_group_by(group_by, allowed=USAGE_GROUPS)
    filterset = step_filterset(organization=organization, params=filters or {})
    keys = [OUTPUT_KEYS[g] for g in group_by]
    rollup_filters = None if exact else _readable_filters(filterset, group_by)
    report = None
    if rollup_filters is not None:
        report = _usage_from_rollups(organization, filterset, group_by, rollup_filters, limit=limit,
                                     measures=measures)  # fmt: skip
    if report is None:
        report = _usage_from_steps(filterset.qs, group_by, limit=limit)
    report.rows.sort(key=lambda row: _sort_key(row, keys))
    if "agent" in group_by:
        _with_agent_names(report.rows, organization)
    report.extra["counts"] = USAGE_COUNTS
    return report


def _readable_filters(filterset: StepFilterSet, group_by: list[str]) -> dict[str, list[str]] | None:
    """The rollup filters when the rollups can answer this grouping and these filters, else None (scan)."""
    by_subject = len(group_by) == 1 and group_by[0] in SUBJECT_GROUPS  # one end user or conversation a row
    return _rollup_filters(filterset) if set(group_by) <= ROLLUP_GROUPS or by_subject else None


def _rollup_answer(
    organization: Organization,
    filterset: StepFilterSet,
    group_by: list[str],
    filters: dict[str, list[str]],
    measures: Sequence[str] | None = None,
) -> tuple[dict[tuple[Any, ...], RollupRow], str] | None:
    """(totals per group, source) from the rollups plus the ragged edges' steps; None when no whole hour.
    `measures`: only the columns those row keys need are read (the others are 0)."""
    cleaned = filterset.form.cleaned_data
    window = {"organization": organization, "steps": filterset.qs, "start": cleaned.get("start"),
              "end": cleaned.get("end"), "filters": filters, "columns": measure_columns(measures)}  # fmt: skip
    if len(group_by) == 1 and group_by[0] in SUBJECT_GROUPS:
        return subject_window_totals(group=group_by[0], **window)
    return rollup_window_totals(group_by=[USAGE_GROUPS[g] if g not in TIME_UNITS else g for g in group_by], **window)


def _usage_from_rollups(
    organization: Organization,
    filterset: StepFilterSet,
    group_by: list[str],
    filters: dict[str, list[str]],
    *,
    limit: int,
    measures: Sequence[str] | None = None,
) -> Report | None:
    """The report from the rollups plus the ragged edges' steps, or None when the window holds no whole hour."""
    answer = _rollup_answer(organization, filterset, group_by, filters, measures)
    if answer is None:
        return None
    totals, source = answer
    keys = [OUTPUT_KEYS[g] for g in group_by]
    rows = []
    for key, summed in totals.items():
        if summed.counts["steps"] == 0:
            continue
        row = {name: _iso(value) for name, value in zip(keys, key, strict=True)}
        row.update(usage_measures(summed, measures))
        rows.append(row)
    truncated = len(rows) > limit
    if truncated:  # the first `limit` groups in key order, as a scan keeps them
        rows.sort(key=lambda row: _sort_key(row, keys))
        del rows[limit:]
    return Report(group_by=group_by, rows=rows, source=source, exact_percentiles=False, truncated=truncated)


def usage_measures(totals: RollupRow, measures: Sequence[str] | None = None) -> dict[str, Any]:
    """A usage report row's measures (steps, tokens, cache hit ratio, cost, errors, latency and TTFT percentiles
    in ms) from summed totals: a rollup row, steps summed the same way, or both merged. With `measures`, only
    `steps` and those keys (the percentiles are computed only when asked for)."""
    if measures is None:
        return _measures(
            steps=totals.counts["steps"], errors=totals.counts["error_steps"], tokens=totals.counts,
            cost=totals.cost_usd, latency=percentiles_from_counts(totals.latency, _FRACTIONS),
            ttft=percentiles_from_counts(totals.ttft, _FRACTIONS),
        )  # fmt: skip
    wanted = set(measures)
    unread = (None,) * len(_FRACTIONS)
    latency = percentiles_from_counts(totals.latency, _FRACTIONS) if wanted & set(_LATENCY_KEYS) else unread
    ttft = percentiles_from_counts(totals.ttft, _FRACTIONS) if wanted & set(_TTFT_KEYS) else unread
    row = _measures(steps=totals.counts["steps"], errors=totals.counts["error_steps"], tokens=totals.counts,
                    cost=totals.cost_usd, latency=latency, ttft=ttft)  # fmt: skip
    return {key: row[key] for key in ("steps", *measures)}


@dataclass(slots=True)
class WindowTotals:
    """Usage totals per group over one window, and what was read to compute them."""

    groups: dict[tuple[Any, ...], RollupRow]
    source: str


def usage_window_totals(
    *,
    organization: Organization,
    start: datetime | None,
    end: datetime | None,
    filters: Mapping[str, Any] | None = None,
    group_by: Sequence[str] = (),
) -> WindowTotals:
    """Usage totals of `organization`'s ended steps created in [start, end) and matching `filters`, per group.

    For callers that evaluate windows of their own (monitors). `filters` are step filters as GET /v1/steps takes
    them (`{"model": ["gpt-4o"], "user_id": "u-1"}`); a `start` or `end` among them is ignored: the arguments are
    the window (None: unbounded). `group_by` takes the usage report's names (USAGE_GROUPS). Invalid filters or
    groups raise ApplicationError (a 400 naming each field).

    `groups` maps each group's key (its values in `group_by` order; None for no value, times as UTC datetimes) to
    a RollupRow: exact counts (`counts["steps"]`, `counts["error_steps"]`, token sums), the exact `cost_usd`, and
    latency and TTFT histograms. Read percentiles with steps.histograms.percentiles_from_counts (each within one
    26%-wide bucket of the exact value), or a usage report row with usage_measures. The histograms are used
    whichever way the totals were read, so a percentile does not change with the source: filters and groups the
    rollups carry read the rollups plus the ragged edges' steps (`source` "rollup" or "rollup+steps"); any other
    filter or group, or a window holding no whole hour, reads the window's steps ("steps"). A window without
    steps has no groups.
    """
    group_by = parse_group_by(group_by, allowed=USAGE_GROUPS)
    params = {k: v for k, v in (filters or {}).items() if k not in ("start", "end")}
    params.update({k: v for k, v in (("start", start), ("end", end)) if v is not None})
    filterset = step_filterset(organization=organization, params=params)
    rollup_filters = _readable_filters(filterset, group_by)
    answer = None if rollup_filters is None else _rollup_answer(organization, filterset, group_by, rollup_filters)
    if answer is not None:
        return WindowTotals(groups=answer[0], source=answer[1])
    columns = [USAGE_GROUPS[g] if g not in TIME_UNITS else g for g in group_by]
    return WindowTotals(groups=steps_totals(filterset.qs, columns), source=SOURCE_STEPS)


def _grouped(queryset: QuerySet, group_by: list[str]) -> tuple[QuerySet, list[str]]:
    annotations = {g: TIME_UNITS[g]("created_at", tzinfo=UTC) for g in group_by if g in TIME_UNITS}
    if annotations:
        queryset = queryset.annotate(**annotations)
    columns = [USAGE_GROUPS.get(g, ERROR_GROUPS.get(g, g)) if g not in TIME_UNITS else g for g in group_by]
    return queryset, columns


def _usage_from_steps(queryset: QuerySet, group_by: list[str], *, limit: int) -> Report:
    queryset = queryset.exclude(status=StepStatus.PENDING)
    postgres = connections[queryset.db].vendor == "postgresql"
    queryset, columns = _grouped(queryset, group_by)
    aggregates: dict[str, Any] = {
        "n_steps": Count("pk"),
        "n_errors": Count("pk", filter=Q(status=StepStatus.FAILED)),
        "sum_cost_usd": Sum("cost_usd"),
        **{f"sum_{name}": Sum(name) for name in TOKEN_MEASURES},
    }
    if postgres:
        for label, q in PERCENTILES:
            aggregates[f"latency_{label}"] = PercentileCont(F("latency_ns"), fraction=q)
            aggregates[f"ttft_{label}"] = PercentileCont(F("ttft_ns"), fraction=q)
    grouped = queryset.values(*columns).annotate(**aggregates).order_by(*columns)
    results = list(grouped[: limit + 1]) if columns else [queryset.aggregate(**aggregates)]
    truncated = len(results) > limit
    results = results[:limit]
    if not postgres:
        _python_percentiles(queryset, columns, results)
    rows = []
    for result in results:
        if not result["n_steps"]:
            continue
        row = {OUTPUT_KEYS[g]: _iso(result[c]) for g, c in zip(group_by, columns, strict=True)}
        measures = _measures(
            steps=result["n_steps"], errors=result["n_errors"],
            tokens={name: result[f"sum_{name}"] for name in TOKEN_MEASURES}, cost=result["sum_cost_usd"],
            latency=[result[f"latency_{label}"] for label, _ in PERCENTILES],
            ttft=[result[f"ttft_{label}"] for label, _ in PERCENTILES],
        )  # fmt: skip
        row.update(measures)
        rows.append(row)
    return Report(group_by=group_by, rows=rows, source="steps", exact_percentiles=True, truncated=truncated)


def _percentile_cont(values: list[int], fraction: float) -> float | None:
    """percentile_cont in Python (linear interpolation between closest ranks), for SQLite."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def _python_percentiles(queryset: QuerySet, columns: list[str], results: list[dict[str, Any]]) -> None:
    """SQLite has no percentile_cont; the embedded mode's data is small, so the values are read here."""
    latency: dict[tuple, list[int]] = defaultdict(list)
    ttft: dict[tuple, list[int]] = defaultdict(list)
    for row in queryset.values(*columns, "latency_ns", "ttft_ns").order_by():
        key = tuple(row[c] for c in columns)
        if row["latency_ns"] is not None:
            latency[key].append(row["latency_ns"])
        if row["ttft_ns"] is not None:
            ttft[key].append(row["ttft_ns"])
    for result in results:
        key = tuple(result[c] for c in columns)
        for label, q in PERCENTILES:
            result[f"latency_{label}"] = _percentile_cont(sorted(latency.get(key, [])), q)
            result[f"ttft_{label}"] = _percentile_cont(sorted(ttft.get(key, [])), q)


# --- errors -------------------------------------------------------------------------------------


def errors_report(
    *,
    organization: Organization,
    filters: Mapping[str, Any] | QueryDict | None = None,
    group_by: Sequence[str] = (),
) -> Report:
    """Errors, i.e. failed steps (the usage report's error_count), grouped by error_type (and provider, model, agent,
    day). A cancelled step is not an error: it is counted apart, in `cancelled`.

    Per group: count, share of the ended steps in the same provider/model/agent/day matching the same
    filters (error_type, status and stop_reason aside), first and last seen, and an example step id.
    """
    group_by = parse_group_by(group_by, allowed=ERROR_GROUPS)
    params = filters if filters is not None else {}
    filterset = step_filterset(organization=organization, params=params)
    columns = [ERROR_GROUPS[g] if g not in TIME_UNITS else g for g in group_by]
    results, errors_source = _error_groups(organization, filterset, group_by, columns)
    truncated = len(results) > MAX_ROWS
    results = results[:MAX_ROWS]

    denominators, totals_source = _step_totals(organization, params, group_by)
    source = _combined_source(errors_source, totals_source)
    overall = sum(denominators.values())
    rows = []
    for result in results:
        key = tuple(_iso(result[c]) for c in columns)
        total = denominators.get(key, 0)
        row: dict[str, Any] = {"error_type": result["error_type"]}
        row.update({OUTPUT_KEYS[g]: _iso(result[c]) for g, c in zip(group_by, columns, strict=True)})
        row.update(
            {
                "count": result["count"],
                "steps": total,
                "share": round(result["count"] / total, 6) if total else None,
                "first_seen": _iso(result["first_seen"]),
                "last_seen": _iso(result["last_seen"]),
                "example_step_id": result["example"],
            }
        )
        rows.append(row)
    if "agent" in group_by:
        _with_agent_names(rows, organization)
    return Report(
        group_by=["error_type", *group_by], rows=rows, source=source, exact_percentiles=True, truncated=truncated,
        extra={
            "total_steps": overall, "total_errors": sum(r["count"] for r in results),
            "cancelled": _cancelled(organization, filterset), "counts": ERRORS_COUNT,
        },
    )  # fmt: skip


def _combined_source(*sources: str) -> str:
    """What a report read that combines parts read each their own way."""
    if all(source == SOURCE_ROLLUP for source in sources):
        return SOURCE_ROLLUP
    if all(source == SOURCE_STEPS for source in sources):
        return SOURCE_STEPS
    return SOURCE_ROLLUP_AND_STEPS


def _error_groups(
    organization: Organization, filterset: StepFilterSet, group_by: list[str], columns: list[str]
) -> tuple[list[dict[str, Any]], str]:
    """Ended steps with an error_type per (error_type, *columns): count, first/last seen, example id.

    Most errors first (then by key), at most MAX_ROWS + 1 rows (one more says the report is truncated).
    From the errors rollups when the filters allow (whole hours; ragged minutes at the ends from the
    steps), else from a scan of the steps. Both are exact.
    """
    errored = filterset.qs.filter(ERROR_STEPS)
    keys = ["error_type", *columns]
    rollup_filters = _rollup_filters(filterset, allowed=ERROR_ROLLUP_FILTERS)
    cleaned = filterset.form.cleaned_data
    split = window_split(start=cleaned.get("start"), end=cleaned.get("end"))
    if rollup_filters is None or split is None:
        return _error_rows(_scan_errors(errored, group_by, limit=MAX_ROWS + 1), keys), SOURCE_STEPS
    totals = (
        rollup_errors(
            organization=organization, start=split.inner_start, end=split.inner_end, filters=rollup_filters,
            group_by=keys,
        )
        or {}
    )  # fmt: skip
    merged = {tuple(None if v == "" else v for v in key): value for key, value in totals.items()}
    for edge in _edges(errored, split):
        merge_into(
            merged,
            (
                (
                    tuple(row[k] for k in keys),
                    ErrorTotals(row["count"], row["first_seen"], row["last_seen"], row["example"]),
                )
                for row in _scan_errors(edge, group_by)
            ),
        )
    rows = [
        {**dict(zip(keys, key, strict=True)), "count": t.count, "first_seen": t.first_seen,
         "last_seen": t.last_seen, "example": t.example_step_id}
        for key, t in merged.items()
    ]  # fmt: skip
    return _error_rows(rows, keys)[: MAX_ROWS + 1], SOURCE_ROLLUP_AND_STEPS if split.edges else SOURCE_ROLLUP


def _scan_errors(errored: QuerySet, group_by: list[str], limit: int | None = None) -> list[dict[str, Any]]:
    queryset, columns = _grouped(errored, group_by)
    grouped = queryset.values("error_type", *columns).annotate(
        count=Count("pk"), first_seen=Min("created_at"), last_seen=Max("created_at"), example=greatest_id("id")
    )
    if limit is None:
        return list(grouped.order_by())
    return list(grouped.order_by("-count", "error_type", *columns)[:limit])


def _error_rows(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Most errors first, then by key (None last), the same whichever way the rows were counted."""
    return sorted(rows, key=lambda row: (-row["count"], *((row[k] is None, row[k]) for k in keys)))


def _step_totals(
    organization: Organization, params: Mapping[str, Any] | QueryDict, group_by: list[str]
) -> tuple[dict[tuple, int], str]:
    """Ended steps per group (the errors report's denominators), exact.

    From the rollups when the filters allow; a range not on whole hours then reads the whole hours
    inside it from the rollups and counts only the ragged minutes at its ends from the steps.
    """
    if isinstance(params, QueryDict):
        params = params.copy()
        for name in _ERROR_SELECTING:
            params.pop(name, None)
    else:
        params = {k: v for k, v in params.items() if k not in _ERROR_SELECTING}
    filterset = step_filterset(organization=organization, params=params)
    return _counted(organization, filterset, filterset.qs.exclude(status=StepStatus.PENDING), group_by, "steps")


def _cancelled(organization: Organization, filterset: StepFilterSet) -> int:
    """The cancelled steps matching the filters (the errors report's `cancelled`), exact, read as _counted reads
    (the rollups' cancelled_steps for the whole hours, the steps of the ragged minutes)."""
    counts, _ = _counted(
        organization, filterset, filterset.qs.filter(status=StepStatus.CANCELLED), [], "cancelled_steps"
    )
    return sum(counts.values())


def _counted(
    organization: Organization, filterset: StepFilterSet, steps: QuerySet, group_by: list[str], column: str
) -> tuple[dict[tuple, int], str]:
    """`steps` (the filterset's steps of one kind) counted per group, exact, and what was read: the rollups' `column`
    (a COUNT_COLUMNS count of that kind) for the whole hours of the window and the steps of its ragged minutes when
    the filters allow, else a count of the steps."""
    rollup_filters = _rollup_filters(filterset)
    cleaned = filterset.form.cleaned_data
    split = window_split(start=cleaned.get("start"), end=cleaned.get("end"))
    if rollup_filters is None or split is None:  # no whole hour in the window: its steps are few
        return _count_steps(steps, group_by), SOURCE_STEPS
    columns = [ERROR_GROUPS[g] if g not in TIME_UNITS else g for g in group_by]
    totals = rollup_step_counts(
        organization=organization, start=split.inner_start, end=split.inner_end, filters=rollup_filters,
        group_by=columns, column=column,
    )  # fmt: skip
    counts = {tuple(_iso(v) if v != "" else None for v in key): n for key, n in (totals or {}).items()}
    for edge in _edges(steps, split):
        for key, n in _count_steps(edge, group_by).items():
            counts[key] = counts.get(key, 0) + n
    return counts, SOURCE_ROLLUP_AND_STEPS if split.edges else SOURCE_ROLLUP


def _edges(queryset: QuerySet, split: WindowSplit) -> list[QuerySet]:
    """`queryset` cut to each ragged edge of `split`."""
    return [queryset.filter(created_at__gte=low, created_at__lt=high) for low, high in split.edges]


def _count_steps(queryset: QuerySet, group_by: list[str]) -> dict[tuple, int]:
    queryset, columns = _grouped(queryset, group_by)
    if not columns:
        return {(): queryset.count()}
    counted = queryset.values(*columns).annotate(n=Count("pk")).order_by()
    return {tuple(_iso(row[c]) for c in columns): row["n"] for row in counted}
