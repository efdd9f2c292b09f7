"""How a monitor's number and state are found: the rules (pure functions) and the report queries of a cycle.

**Value.** A monitor's value is the `metric` key of the `steps.reports.usage_report` row for its filters over
[end - window, end), `end` being the cycle's moment: exactly what `GET /v1/usage` answers for the same filters,
`start` and `end`. A split monitor reads one row per group (group_by = its dimension); steps without a value
for that dimension (no end user, say) form no group.

**States.** `no_data` while the window holds fewer than `min_steps` steps (or the metric has no value, e.g. no
step reported a TTFT); otherwise `alerting` when `value <operator> threshold`, else `ok`. **Recovery margin**
(hysteresis): an alerting monitor stays alerting while `value <operator> recovery_threshold`, so a value
hovering at the threshold does not flap. `recovery_threshold` defaults to the threshold moved by
STEPLENS_MONITOR_RECOVERY_MARGIN (10%) of its size towards the safe side: `error_rate > 0.2` resolves at 0.18 or
less; `steps < 100` resolves at 110 or more.

**Cost.** A report reads only the rollup columns its monitors' metrics need (`usage_report(measures=...)`), and a
cycle records each report's monitors in one UPDATE (PostgreSQL). A cycle runs one report per distinct
(organization, window, split, filters) — unsplit monitors that differ
only in one single-valued filter among agent_id, model_handle, model, provider and project_id share a report
grouped by that dimension (up to 100 values per report), so a thousand per-agent monitors over the same window
cost a handful of queries, each answering exactly what the per-agent query would.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings

from monitors.models import ADDITIVE_METRICS, GROUP_KEYS, Monitor, MonitorState, Operator
from steps.filters import MAX_FILTER_VALUES
from steps.reports import OUTPUT_KEYS, usage_report

# Single-valued filters that monitors may differ by and still share one report: filter -> usage_report group.
FOLDABLE = {
    "agent_id": "agent",
    "model_handle": "model_handle",
    "model": "model",
    "provider": "provider",
    "project_id": "project",
}


# --- rules ----------------------------------------------------------------------------------------


def breaches(*, value: float, operator: str, threshold: float) -> bool:
    """Whether `value <operator> threshold`."""
    if operator == Operator.GT:
        return value > threshold
    if operator == Operator.GTE:
        return value >= threshold
    if operator == Operator.LT:
        return value < threshold
    return value <= threshold


def default_recovery(*, operator: str, threshold: float, margin: float | None = None) -> float:
    """The threshold moved by `margin` (a fraction of its size, STEPLENS_MONITOR_RECOVERY_MARGIN) to the safe side."""
    margin = settings.STEPLENS_MONITOR_RECOVERY_MARGIN if margin is None else margin
    delta = abs(threshold) * margin
    return threshold - delta if operator in (Operator.GT, Operator.GTE) else threshold + delta


def recovery_of(monitor: Monitor) -> float:
    if monitor.recovery_threshold is not None:
        return monitor.recovery_threshold
    return default_recovery(operator=monitor.operator, threshold=monitor.threshold)


def next_state(*, previous: str, value: float | None, steps: int, monitor: Monitor) -> str:
    """The state after one evaluation (see the module docstring)."""
    if value is None or steps < monitor.min_steps:
        return MonitorState.NO_DATA
    limit = recovery_of(monitor) if previous == MonitorState.ALERTING else monitor.threshold
    return (
        MonitorState.ALERTING if breaches(value=value, operator=monitor.operator, threshold=limit) else MonitorState.OK
    )


def metric_value(row: Mapping[str, Any] | None, metric: str) -> float | None:
    """The metric of a report row as a number; a missing row is 0 for sums and no value otherwise."""
    if row is None:
        return 0.0 if metric in ADDITIVE_METRICS else None
    raw = row.get(metric)
    if raw is None:
        return None
    value = float(Decimal(raw)) if isinstance(raw, str) else float(raw)
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        return round((self.end - self.start).total_seconds())

    def params(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def window_of(monitor: Monitor, *, end: datetime) -> Window:
    return Window(start=end - timedelta(seconds=monitor.window_seconds), end=end)


def monitor_filters(monitor: Monitor) -> dict[str, Any]:
    """The monitor's step filters (its project included), without the window."""
    filters = dict(monitor.filters or {})
    if monitor.project_id:
        filters["project_id"] = [monitor.project_id]
    return filters


def group_filter(monitor: Monitor, group: str | None) -> dict[str, list[str]]:
    """The filter that selects one group of a split monitor."""
    if not monitor.group_by or group is None:
        return {}
    return {GROUP_KEYS[monitor.group_by][1]: [group]}


# --- planning and reading a cycle --------------------------------------------------------------


def _values(raw: Any) -> list[str]:
    if raw is None:
        return []
    items = raw if isinstance(raw, list | tuple) else [raw]
    return [str(item) for part in items for item in str(part).split(",") if item != ""]


def _fold(filters: Mapping[str, Any], group_by: str) -> tuple[str | None, str | None]:
    """(filter name, its one value) to fold on, or (None, None). A split monitor is not folded: its report already
    has a row per group, and crossing those with the folded dimension costs more than one indexed report each."""
    if group_by:
        return None, None
    for name, group in FOLDABLE.items():
        if group == group_by:
            continue
        values = _values(filters.get(name))
        if len(values) == 1 and len(set(values)) == 1:
            return name, values[0]
    return None, None


def _frozen(filters: Mapping[str, Any]) -> tuple:
    return tuple(sorted((key, tuple(sorted(_values(value)))) for key, value in filters.items()))


@dataclass(slots=True)
class Query:
    """One usage report of a cycle and the monitors it answers."""

    organization: Any
    window_seconds: int
    group_by: str
    fold: str | None
    filters: dict[str, Any]
    members: list[tuple[Monitor, str | None]] = field(default_factory=list)


def plan(monitors: Iterable[Monitor]) -> list[Query]:
    """Monitors grouped into the fewest reports that answer each of them exactly."""
    queries: dict[tuple, Query] = {}
    for monitor in monitors:
        filters = monitor_filters(monitor)
        fold, value = _fold(filters, monitor.group_by)
        rest = {k: v for k, v in filters.items() if k != fold}
        key = (monitor.organization_id, monitor.window_seconds, monitor.group_by, fold, _frozen(rest))
        query = queries.get(key)
        if query is None:
            query = queries[key] = Query(monitor.organization, monitor.window_seconds, monitor.group_by, fold, rest)
        query.members.append((monitor, value))
    return list(queries.values())


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for index in range(0, len(items), size):
        yield list(items[index : index + size])


def run_query(query: Query, *, end: datetime) -> tuple[Window, dict[str | None, list[dict[str, Any]]]]:
    """The report rows of a query, by the folded filter's value (None when nothing is folded)."""
    window = Window(start=end - timedelta(seconds=query.window_seconds), end=end)
    group_by = [query.group_by] if query.group_by else []
    # Only its monitors' metrics: the rollups then sum the few columns those need (the values are the same).
    measures = sorted({monitor.metric for monitor, _ in query.members})
    if query.fold is None:
        report = usage_report(organization=query.organization, filters={**query.filters, **window.params()},
                              group_by=group_by, measures=measures)  # fmt: skip
        return window, {None: report.rows}
    fold_group = FOLDABLE[query.fold]
    fold_key = OUTPUT_KEYS[fold_group]
    values = sorted({value for _, value in query.members if value is not None})
    rows: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for chunk in _chunks(values, MAX_FILTER_VALUES):
        report = usage_report(
            organization=query.organization, filters={**query.filters, query.fold: chunk, **window.params()},
            group_by=[fold_group, *group_by], measures=measures,
        )  # fmt: skip
        for row in report.rows:
            rows[row.get(fold_key)].append(row)
    return window, rows


@dataclass(slots=True)
class GroupOutcome:
    """A group of a split monitor that started or stopped alerting."""

    group: str
    previous: str
    state: str
    value: float | None
    steps: int


@dataclass(slots=True)
class Outcome:
    """What one evaluation found for one monitor."""

    state: str
    value: float | None
    steps: int
    changes: list[GroupOutcome] = field(default_factory=list)  # split monitors: groups that changed state


def evaluate_single(monitor: Monitor, rows: list[dict[str, Any]]) -> Outcome:
    row = rows[0] if rows else None
    steps = int(row["steps"]) if row else 0
    value = metric_value(row, monitor.metric)
    return Outcome(state=next_state(previous=monitor.state, value=value, steps=steps, monitor=monitor), value=value,
                   steps=steps)  # fmt: skip


def evaluate_split(monitor: Monitor, rows: list[dict[str, Any]], alerting: Mapping[str, Any]) -> Outcome:
    """Each group on its own; only alerting groups are remembered (`alerting`: group -> its GroupAlert)."""
    key = GROUP_KEYS[monitor.group_by][0]
    seen: set[str] = set()
    outcome = Outcome(state=MonitorState.NO_DATA, value=None, steps=0)
    worst: float | None = None
    higher_is_worse = monitor.operator in (Operator.GT, Operator.GTE)
    for row in rows:
        group = row.get(key)
        if group is None:
            continue
        group = str(group)
        seen.add(group)
        steps = int(row["steps"])
        value = metric_value(row, monitor.metric)
        outcome.steps += steps
        previous = MonitorState.ALERTING if group in alerting else MonitorState.OK
        state = next_state(previous=previous, value=value, steps=steps, monitor=monitor)
        if state != MonitorState.NO_DATA and value is not None:
            if worst is None or (value > worst if higher_is_worse else value < worst):
                worst = value
            if outcome.state == MonitorState.NO_DATA:
                outcome.state = MonitorState.OK
        if state == MonitorState.ALERTING:
            outcome.state = MonitorState.ALERTING
        if state != previous and MonitorState.ALERTING in (state, previous):
            outcome.changes.append(GroupOutcome(group, previous, state, value, steps))
    for group in alerting:
        if group not in seen:
            outcome.changes.append(GroupOutcome(group, MonitorState.ALERTING, MonitorState.NO_DATA, None, 0))
    outcome.value = worst
    return outcome
