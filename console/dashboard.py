"""The admin dashboard and errors pages' data, read from the same reports as the REST API (steps.reports).

Periods end at the next whole UTC hour and (for day buckets) start at a UTC midnight, so the reports
answer from the rollups exactly as `GET /v1/usage` and `GET /v1/errors` do with the same parameters.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from accounts.models import Organization
from steps.reports import errors_report, usage_report
from steps.selectors import step_queryset

# name -> (label, days; 0 means the last 24 hours in hourly buckets)
PERIODS = {
    "24h": ("Last 24 hours", 0),
    "7d": ("Last 7 days", 7),
    "30d": ("Last 30 days", 30),
    "90d": ("Last 90 days", 90),
}
DEFAULT_PERIOD = "7d"
TOP_AGENTS = 10


@dataclass(slots=True)
class Period:
    """A reporting window: [start, end) in UTC, its bucket (hour or day) and every bucket in it."""

    key: str
    label: str
    start: datetime
    end: datetime
    bucket: str

    def buckets(self) -> list[datetime]:
        step = timedelta(hours=1) if self.bucket == "hour" else timedelta(days=1)
        moments, moment = [], self.start
        while moment < self.end:
            moments.append(moment)
            moment += step
        return moments

    def bucket_label(self, moment: datetime) -> str:
        return moment.strftime("%H:00") if self.bucket == "hour" else moment.strftime("%b %d")

    def params(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def period_get(*, key: str | None, day: str | None = None, now: datetime | None = None) -> Period:
    """The period named `key` (24h, 7d, 30d, 90d), or one UTC day (`day=YYYY-MM-DD`, unless a key is given) by hour."""
    now = (now or timezone.now()).astimezone(UTC)
    if day and key not in PERIODS:
        try:
            start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
        except ValueError:
            start = None
        if start is not None:
            return Period(
                key="day",
                label=f"{start:%a %b %d, %Y} (UTC)",
                start=start,
                end=start + timedelta(days=1),
                bucket="hour",
            )
    key = key if key in PERIODS else DEFAULT_PERIOD
    label, days = PERIODS[key]
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if days == 0:
        return Period(key=key, label=label, start=end - timedelta(hours=24), end=end, bucket="hour")
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
    return Period(key=key, label=label, start=start, end=end, bucket="day")


def _parse(moment: str | None) -> datetime | None:
    return datetime.fromisoformat(moment).astimezone(UTC) if moment else None


def _float(value: Any) -> float:
    return float(Decimal(value)) if value not in (None, "") else 0.0


@dataclass(slots=True)
class Dashboard:
    """Everything the dashboard draws; every number comes from a usage or errors report row."""

    period: Period
    filters: dict[str, str]
    overall: dict[str, Any]
    by_time: list[dict[str, Any]]
    by_time_model: list[dict[str, Any]]
    by_model: list[dict[str, Any]]
    top_agents: list[dict[str, Any]]
    top_errors: list[dict[str, Any]]
    models: list[str]
    source: str
    exact_percentiles: bool
    rest_queries: dict[str, str] = field(default_factory=dict)


def dashboard_get(
    *, organization: Organization, period: Period, agent_id: str | None = None, model_handle: str | None = None
) -> Dashboard:
    """Usage and errors for a period, optionally for one agent and/or model handle."""
    filters = period.params()
    if agent_id:
        filters["agent_id"] = agent_id
    if model_handle:
        filters["model_handle"] = model_handle
    overall_report = usage_report(organization=organization, filters=filters)
    by_time = usage_report(organization=organization, filters=filters, group_by=[period.bucket])
    by_time_model = usage_report(organization=organization, filters=filters, group_by=[period.bucket, "model_handle"])
    by_model = usage_report(organization=organization, filters=filters, group_by=["model_handle"])
    by_agent = usage_report(organization=organization, filters=filters, group_by=["agent"])
    errors = errors_report(organization=organization, filters=filters)
    top_agents = sorted(by_agent.rows, key=lambda row: (-_float(row["cost_usd"]), -row["steps"]))[:TOP_AGENTS]
    model_cost: dict[str, float] = defaultdict(float)
    for row in by_time_model.rows:
        model_cost[row["model_handle"] or "(none)"] += _float(row["cost_usd"])
    models = sorted(model_cost, key=lambda name: (-model_cost[name], name))
    rest = {
        "overall": urlencode(filters),
        "by_time_model": urlencode({"group_by": f"{period.bucket},model_handle", **filters}),
        "by_time": urlencode({"group_by": period.bucket, **filters}),
        "by_model": urlencode({"group_by": "model_handle", **filters}),
        "by_agent": urlencode({"group_by": "agent", **filters}),
    }
    return Dashboard(
        period=period,
        filters=filters,
        overall=overall_report.rows[0] if overall_report.rows else {},
        by_time=by_time.rows,
        by_time_model=by_time_model.rows,
        by_model=by_model.rows,
        top_agents=top_agents,
        top_errors=errors.rows[:8],
        models=models,
        source=by_time_model.source,
        exact_percentiles=by_model.exact_percentiles,
        rest_queries=rest,
    )


def by_bucket(rows: list[dict[str, Any]], period: Period) -> dict[datetime, dict[str, Any]]:
    """Report rows keyed by their time bucket (hour or day)."""
    return {_parse(row[period.bucket]): row for row in rows if row.get(period.bucket)}


def by_bucket_and_model(rows: list[dict[str, Any]], period: Period) -> dict[tuple[datetime, str], dict[str, Any]]:
    return {(_parse(row[period.bucket]), row["model_handle"] or "(none)"): row for row in rows}


# --- errors ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ErrorGroup:
    """One error type over the period: the report's row plus a trend per bucket."""

    row: dict[str, Any]
    trend: list[int]


@dataclass(slots=True)
class ErrorsPage:
    period: Period
    filters: dict[str, str]
    groups: list[ErrorGroup]
    total_steps: int
    total_errors: int
    by_time: list[dict[str, Any]]
    rest_query: str


def errors_get(*, organization: Organization, period: Period, extra: dict[str, str] | None = None) -> ErrorsPage:
    """Errors grouped by type over the period (errors_report) with a per-bucket trend of each type."""
    filters = {**period.params(), **{k: v for k, v in (extra or {}).items() if v}}
    report = errors_report(organization=organization, filters=filters)
    trunc = TruncHour if period.bucket == "hour" else TruncDay
    counted = (
        step_queryset(organization=organization, filters=filters)
        .filter(error_type__isnull=False)
        .annotate(bucket=trunc("created_at", tzinfo=UTC))
        .values("error_type", "bucket")
        .annotate(n=Count("pk"))
        .order_by()
    )
    per_type: dict[str, dict[datetime, int]] = defaultdict(dict)
    for row in counted:
        per_type[row["error_type"]][row["bucket"].astimezone(UTC)] = row["n"]
    buckets = period.buckets()
    groups = [
        ErrorGroup(row=row, trend=[per_type[row["error_type"]].get(moment, 0) for moment in buckets])
        for row in report.rows
    ]
    by_time = usage_report(organization=organization, filters=filters, group_by=[period.bucket]).rows
    return ErrorsPage(
        period=period,
        filters=filters,
        groups=groups,
        total_steps=report.extra["total_steps"],
        total_errors=report.extra["total_errors"],
        by_time=by_time,
        rest_query=urlencode(filters),
    )
