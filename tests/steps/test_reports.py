"""GET /v1/usage and GET /v1/errors: numbers against values computed here from the rows, both ways of answering."""

import csv
import io
import statistics
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.services import api_key_create
from config.errors import ApplicationError
from steps import services
from steps.models import Step, StepRollupDay, StepRollupHour, StepStatus
from steps.reports import usage_report
from steps.rollups import step_rollups_rebuild
from steps.services import StepMetricsIn
from steps.values import Usage
from tests.factories import AgentFactory, OrganizationFactory, ProjectFactory, StepFactory

pytestmark = pytest.mark.django_db

DAY0 = datetime(2026, 2, 1, tzinfo=UTC)
MODELS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5")]


def _record(organization, agent, *, i: int, when: datetime, fail: bool = False, **start_kwargs) -> Step:
    """One step through the real write path (which maintains the rollups)."""
    provider, model = MODELS[i % 2]
    step = services.step_start(
        organization=organization, agent=agent, provider_name=provider, model=model, model_handle=f"{provider}/{model}",
        created_at=when, user_id=f"u-{i % 3}", tags=["vip"] if i % 4 == 0 else [],
        conversation_id=f"c-{i % 4}" if i % 5 else None, **start_kwargs,
    )  # fmt: skip
    metrics = StepMetricsIn(ttft_ns=(50 + 37 * i) * 1_000_000, llm_request_ns=(400 + 91 * i) * 1_000_000)
    if fail:
        return services.step_fail(
            step=step, error_type="rate_limit_error" if i % 2 else "api_timeout", message="boom", metrics=metrics
        )
    usage = Usage(
        prompt_tokens=1000 + 13 * i, completion_tokens=100 + i, cached_input_tokens=(200 + i) if i % 3 else 0,
        cache_write_tokens=50 if provider == "anthropic" else None, reasoning_tokens=i if i % 5 == 0 else None,
    )  # fmt: skip
    return services.step_finish(step=step, usage=usage, metrics=metrics)


@pytest.fixture
def dataset(organization):
    """40 ended steps over three days, two agents, two models, some failures; plus noise that must not count."""
    project = ProjectFactory(organization=organization)
    agents = [AgentFactory(organization=organization, project=project), AgentFactory(organization=organization)]
    for i in range(40):
        when = DAY0 + timedelta(hours=5 * i, minutes=7 * (i % 8))
        _record(organization, agents[i % 2], i=i, when=when, fail=i % 7 == 3)
    services.step_start(organization=organization, agent=agents[0], model="gpt-4o-mini", created_at=DAY0)  # pending
    other = OrganizationFactory()
    _record(other, AgentFactory(organization=other), i=1, when=DAY0 + timedelta(hours=1))
    return agents


def _expected(steps, key) -> dict:
    """The report's measures computed in Python from the step rows."""
    groups = defaultdict(list)
    for step in steps:
        groups[key(step)].append(step)
    result = {}
    for group, members in groups.items():
        prompt = sum(s.prompt_tokens or 0 for s in members)
        cached = sum(s.cached_input_tokens or 0 for s in members)
        latencies = sorted(s.latency_ns for s in members if s.latency_ns is not None)
        ttfts = sorted(s.ttft_ns for s in members if s.ttft_ns is not None)
        result[group] = {
            "steps": len(members),
            "prompt_tokens": prompt,
            "completion_tokens": sum(s.completion_tokens or 0 for s in members),
            "total_tokens": sum(s.total_tokens or 0 for s in members),
            "cached_input_tokens": cached,
            "cache_write_tokens": sum(s.cache_write_tokens or 0 for s in members),
            "reasoning_tokens": sum(s.reasoning_tokens or 0 for s in members),
            "cache_hit_ratio": round(cached / prompt, 6) if prompt else None,
            "cost_usd": sum((s.cost_usd or Decimal(0) for s in members), Decimal(0)),
            "error_count": sum(s.status == StepStatus.FAILED for s in members),
            "latency": latencies,
            "ttft": ttfts,
        }
    return result


def _percentile_ms(values: list[int], q: float) -> float:
    if len(values) == 1:
        return values[0] / 1e6
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] / 1e6


def _ended(organization):
    return list(Step.objects.filter(organization=organization).exclude(status=StepStatus.PENDING))


def _check_rows(rows, expected, key, *, exact_percentiles: bool):
    assert {key(r) for r in rows} == set(expected)
    for row in rows:
        want = expected[key(row)]
        for name in ("steps", "prompt_tokens", "completion_tokens", "total_tokens", "cached_input_tokens",
                     "cache_write_tokens", "reasoning_tokens", "cache_hit_ratio", "error_count"):  # fmt: skip
            assert row[name] == want[name], (name, row, want)
        assert Decimal(row["cost_usd"]) == want["cost_usd"]
        assert row["error_rate"] == round(want["error_count"] / want["steps"], 6)
        for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            for measure, values in (("latency", want["latency"]), ("ttft", want["ttft"])):
                exact = _percentile_ms(values, q)
                got = row[f"{measure}_ms_{label}"]
                if exact_percentiles:
                    assert got == pytest.approx(exact, abs=0.001), (measure, label)
                else:  # histogram: within one 26%-wide bucket
                    assert exact / 1.26 <= got <= exact * 1.26, (measure, label, got, exact)


def test_usage_by_model_and_day_from_rollups_matches_the_rows(api_client, organization, dataset):
    params = {"group_by": "model,day", "start": "2026-02-01T00:00:00Z", "end": "2026-02-10T00:00:00Z"}
    body = api_client.get("/v1/usage", params).json()

    assert body["source"] == "rollup"
    assert body["exact_percentiles"] is False
    expected = _expected(_ended(organization), key=lambda s: (s.model, s.created_at.date().isoformat()))
    _check_rows(body["data"], expected, key=lambda r: (r["model"], r["day"][:10]), exact_percentiles=False)


@pytest.mark.parametrize(
    ("group_by", "step_key", "row_key"),
    [
        ("", lambda s: (), lambda r: ()),
        ("agent", lambda s: s.agent_id, lambda r: r["agent_id"]),
        ("provider,model_handle", lambda s: (s.provider_name, s.model_handle),
         lambda r: (r["provider"], r["model_handle"])),
        ("project", lambda s: s.project_id, lambda r: r["project_id"]),
        ("hour", lambda s: s.created_at.replace(minute=0, second=0, microsecond=0).isoformat(), lambda r: r["hour"]),
        ("week", lambda s: (s.created_at - timedelta(days=s.created_at.weekday())).date().isoformat(),
         lambda r: r["week"][:10]),
        ("user", lambda s: s.user_id, lambda r: r["user_id"]),
        ("conversation,run", lambda s: (s.conversation_id, s.run_id), lambda r: (r["conversation_id"], r["run_id"])),
    ],
)  # fmt: skip
@pytest.mark.parametrize("exact", [False, True])
def test_usage_groupings_match_the_rows_both_ways(
    api_client, organization, dataset, group_by, step_key, row_key, exact
):
    body = api_client.get("/v1/usage", {"group_by": group_by, "exact": str(exact).lower()}).json()
    # One end user or conversation a row reads the subject rollups; grouped with a run, only the steps have it.
    rollup_able = group_by.split(",")[0] not in {"user", "conversation"} or group_by in {"user", "conversation"}
    assert body["source"] == ("rollup" if rollup_able and not exact else "steps")
    exact_percentiles = body["source"] == "steps"
    if exact_percentiles and api_client_backend() != "postgresql":
        exact_percentiles = True  # SQLite computes them in Python, exactly as well
    _check_rows(body["data"], _expected(_ended(organization), step_key), row_key, exact_percentiles=exact_percentiles)


def api_client_backend() -> str:
    from django.db import connection

    return connection.vendor


def test_usage_with_agent_names(api_client, dataset):
    rows = api_client.get("/v1/usage", {"group_by": "agent"}).json()["data"]
    assert {r["agent_name"] for r in rows} == {a.name for a in dataset}


@pytest.mark.parametrize(
    ("params", "source"),
    [
        ({"user_id": "u-1"}, "steps"),
        ({"tags": "vip"}, "steps"),
        ({"status": "failed"}, "steps"),
        ({"agent_id": "AGENT", "model": "gpt-4o-mini"}, "rollup"),
        ({"start": "2026-02-02T10:30:00Z"}, "rollup+steps"),  # not on an hour: the first 30 minutes from the steps
        ({"start": "2026-02-02T05:00:00Z", "end": "2026-02-05T17:00:00Z"}, "rollup"),  # hours at both ragged ends
        ({"start": "2026-02-03T05:00:00Z", "end": "2026-02-03T17:00:00Z"}, "rollup"),  # within one day
        ({"start": "2026-02-03T05:10:00Z", "end": "2026-02-03T05:50:00Z"}, "steps"),  # no whole hour: a scan
    ],
)
def test_usage_filters_pick_the_right_source_and_the_right_steps(api_client, organization, dataset, params, source):
    params = {k: (dataset[0].id if v == "AGENT" else v) for k, v in params.items()}
    body = api_client.get("/v1/usage", {"group_by": "model", **params}).json()
    assert body["source"] == source, body

    steps = Step.objects.filter(organization=organization).exclude(status=StepStatus.PENDING)
    if "user_id" in params:
        steps = steps.filter(user_id=params["user_id"])
    if "tags" in params:
        steps = [s for s in steps if "vip" in s.tags]
    if "status" in params:
        steps = [s for s in steps if s.status == "failed"]
    if "agent_id" in params:
        steps = [s for s in steps if s.agent_id == params["agent_id"] and s.model == "gpt-4o-mini"]
    if "start" in params:
        steps = [s for s in steps if s.created_at >= datetime.fromisoformat(params["start"])]
    if "end" in params:
        steps = [s for s in steps if s.created_at < datetime.fromisoformat(params["end"])]
    expected = _expected(list(steps), key=lambda s: s.model)
    _check_rows(body["data"], expected, key=lambda r: r["model"], exact_percentiles=source == "steps")


def test_usage_rollups_built_by_rebuild_equal_those_kept_by_the_write_path(organization, dataset):
    kept = sorted(StepRollupHour.objects.filter(organization=organization).values_list("bucket", "model", "steps",
                  "prompt_tokens", "error_steps", "latency_h40", "cost_usd"))  # fmt: skip
    kept_days = StepRollupDay.objects.filter(organization=organization).count()
    step_rollups_rebuild(organization=organization)
    rebuilt = sorted(StepRollupHour.objects.filter(organization=organization).values_list("bucket", "model", "steps",
                     "prompt_tokens", "error_steps", "latency_h40", "cost_usd"))  # fmt: skip
    assert rebuilt == kept
    assert StepRollupDay.objects.filter(organization=organization).count() == kept_days


def test_finishing_a_step_twice_counts_it_once(organization):
    agent = AgentFactory(organization=organization)
    step = _record(organization, agent, i=2, when=DAY0)
    services.step_finish(step=step, usage=Usage(prompt_tokens=5, completion_tokens=5))
    services.step_fail(step=step, error_type="x", message="late")
    assert StepRollupHour.objects.get(organization=organization).steps == 1
    assert StepRollupDay.objects.get(organization=organization).steps == 1


def test_usage_of_another_organization_is_invisible(api_client):
    other = OrganizationFactory()
    _record(other, AgentFactory(organization=other), i=1, when=DAY0)
    for exact in ("false", "true"):
        assert api_client.get("/v1/usage", {"group_by": "model", "exact": exact}).json()["data"] == []
    assert api_client.get("/v1/errors").json()["data"] == []


# --- any window: rollups for the whole hours and days, steps for the ragged ends ----------------


@pytest.fixture
def minute_steps(organization):
    """130 ended steps every 37 minutes (seconds apart too) over three and a half days from DAY0, some on a whole
    hour or a window bound exactly, across two agents, two models, a project and none; failed and cancelled ones;
    latencies and TTFTs over many histogram buckets. Plus a pending step and another organization's step."""
    project = ProjectFactory(organization=organization)
    agents = [AgentFactory(organization=organization, project=project), AgentFactory(organization=organization)]
    moments = [DAY0 + timedelta(minutes=37 * i, seconds=(i * 13) % 60) for i in range(120)]
    moments += [DAY0 + timedelta(hours=h) for h in (10, 11, 24, 25)]  # on whole hours and midnight
    moments += [datetime(2026, 2, 1, 5, 17, 30, tzinfo=UTC), datetime(2026, 2, 2, 21, 5, tzinfo=UTC)]  # on bounds
    moments += [datetime(2026, 2, 1, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 2, 2, 10, 59, tzinfo=UTC)]
    moments += [datetime(2026, 2, 2, 10, 41, tzinfo=UTC), datetime(2026, 2, 2, 11, 7, tzinfo=UTC)]
    moments += [datetime(2026, 2, 2, 9, 59, 59, 500000, tzinfo=UTC), datetime(2026, 2, 2, 11, tzinfo=UTC)]
    for i, when in enumerate(moments):
        _record(organization, agents[i % 2], i=i, when=when, fail=i % 7 == 3)
        if i % 11 == 5:  # ended without usage, as a run cancelled mid-step leaves it
            services.step_cancel(step=services.step_start(organization=organization, agent=agents[1], model="gpt-4o",
                                                          provider_name="openai", created_at=when))  # fmt: skip
    services.step_start(organization=organization, agent=agents[0], model="gpt-4o-mini", created_at=DAY0)  # pending
    other = OrganizationFactory()
    _record(other, AgentFactory(organization=other), i=1, when=DAY0 + timedelta(hours=10, minutes=30))
    return agents


# (start, end, source): every kind of window over the data above.
WINDOWS = [
    (None, None, "rollup"),
    ("2026-02-01T00:00:00Z", "2026-02-03T00:00:00Z", "rollup"),  # whole days
    ("2026-02-01T05:00:00Z", "2026-02-02T17:00:00Z", "rollup"),  # whole hours around whole days
    ("2026-02-01T05:17:30Z", "2026-02-03T00:00:00Z", "rollup+steps"),  # ragged start (a step on it)
    ("2026-02-01T00:00:00Z", "2026-02-02T21:05:00Z", "rollup+steps"),  # ragged end (a step on it, left out)
    ("2026-02-01T03:17:00Z", "2026-02-03T21:05:09.500000Z", "rollup+steps"),  # both ragged
    ("2026-02-01T23:10:00Z", "2026-02-02T01:50:00Z", "rollup+steps"),  # across UTC midnight, one whole hour
    ("2026-02-01T23:59:59Z", "2026-02-02T00:00:01Z", "steps"),  # two seconds around midnight
    ("2026-02-02T09:59:59Z", "2026-02-02T11:00:01Z", "rollup+steps"),  # one whole hour and a second each side
    ("2026-02-02T10:05:00Z", "2026-02-02T10:59:30Z", "steps"),  # within one hour
    ("2026-02-02T10:40:00Z", "2026-02-02T11:20:00Z", "steps"),  # across an hour, no whole one
    ("2026-02-02T10:30:00Z", None, "rollup+steps"),  # ragged start, no end
    (None, "2026-02-02T10:30:00+02:00", "rollup+steps"),  # ragged end, no start, another offset
    ("2026-01-20T00:00:30Z", "2026-03-01T00:00:00Z", "rollup+steps"),  # ragged edges without steps
]
GROUPINGS = [
    "", "model", "hour", "day", "week", "model,day", "agent,provider", "project,hour", "model_handle,week",
    "user", "conversation",  # the subject rollups (steps without a user or conversation: one group of their own)
]  # fmt: skip
EXACT_FIELDS = (
    "steps", "prompt_tokens", "completion_tokens", "total_tokens", "cached_input_tokens", "cache_write_tokens",
    "reasoning_tokens", "cache_hit_ratio", "cost_usd", "error_count", "error_rate",
)  # fmt: skip


def _step_key(step: Step, group_by: list[str]) -> tuple:
    """A step's group, as a report row names it."""
    from steps.reports import USAGE_GROUPS

    key = []
    for name in group_by:
        moment = step.created_at.astimezone(UTC)
        if name == "hour":
            key.append(moment.replace(minute=0, second=0, microsecond=0).isoformat())
        elif name == "day":
            key.append(moment.replace(hour=0, minute=0, second=0, microsecond=0).isoformat())
        elif name == "week":
            day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            key.append((day - timedelta(days=day.weekday())).isoformat())
        else:
            key.append(getattr(step, USAGE_GROUPS[name]) or None)
    return tuple(key)


def _row_key(row: dict, group_by: list[str]) -> tuple:
    from steps.reports import OUTPUT_KEYS

    return tuple(row[OUTPUT_KEYS[name]] for name in group_by)


def _histogram_percentiles_ms(steps: list[Step]) -> dict[str, float | None]:
    """The percentiles a histogram of these steps gives (steps.histograms), rounded as a report row rounds them."""
    from steps.histograms import BUCKETS, bucket_of, percentiles_from_counts

    result = {}
    for measure in ("latency", "ttft"):
        counts = [0] * BUCKETS
        for step in steps:
            value = getattr(step, f"{measure}_ns")
            if value is not None:
                counts[bucket_of(value)] += 1
        values = percentiles_from_counts(counts, [0.5, 0.95, 0.99])
        for label, value in zip(("p50", "p95", "p99"), values, strict=True):
            result[f"{measure}_ms_{label}"] = None if value is None else round(value / 1000) / 1000
    return result


def _window_params(start: str | None, end: str | None) -> dict[str, str]:
    return {k: v for k, v in (("start", start), ("end", end)) if v is not None}


def _window_steps(organization, start: str | None, end: str | None, **filters) -> list[Step]:
    steps = Step.objects.filter(organization=organization, **filters).exclude(status=StepStatus.PENDING)
    if start is not None:
        steps = steps.filter(created_at__gte=datetime.fromisoformat(start))
    if end is not None:
        steps = steps.filter(created_at__lt=datetime.fromisoformat(end))
    return list(steps)


@pytest.mark.parametrize(("start", "end", "source"), WINDOWS)
def test_usage_on_any_window_equals_a_scan_and_the_histogram_of_its_steps(
    api_client, organization, minute_steps, start, end, source
):
    """For every window and grouping: counts, tokens, cost and errors equal the exact scan's; percentiles equal
    those of a histogram of the window's steps (the rollups' buckets merged with the ragged steps' buckets)."""
    window = _window_params(start, end)
    in_window = _window_steps(organization, start, end)
    assert in_window or start == "2026-01-20T00:00:30Z"
    for group_by in GROUPINGS:
        names = group_by.split(",") if group_by else []
        body = api_client.get("/v1/usage", {"group_by": group_by, **window}).json()
        scan = api_client.get("/v1/usage", {"group_by": group_by, "exact": "true", **window}).json()
        assert (body["source"], scan["source"]) == (source, "steps"), (group_by, body)
        assert body["exact_percentiles"] is (source == "steps")
        assert [_row_key(r, names) for r in body["data"]] == [_row_key(r, names) for r in scan["data"]], group_by
        groups = defaultdict(list)
        for step in in_window:
            groups[_step_key(step, names)].append(step)
        assert {_row_key(r, names) for r in body["data"]} == set(groups) - ({()} if not in_window else set())
        for got, scanned in zip(body["data"], scan["data"], strict=True):
            assert {k: got[k] for k in EXACT_FIELDS} == {k: scanned[k] for k in EXACT_FIELDS}, (group_by, got)
            if source != "steps":
                assert {k: got[k] for k in (*LATENCY_KEYS, *TTFT_KEYS)} == _histogram_percentiles_ms(
                    groups[_row_key(got, names)]
                ), (group_by, got)


LATENCY_KEYS = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99")
TTFT_KEYS = ("ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99")


def test_usage_on_a_ragged_window_with_rollup_filters_reads_the_rollups(api_client, organization, minute_steps):
    window = {"start": "2026-02-01T03:17:00Z", "end": "2026-02-03T21:05:09Z"}
    params = {"agent_id": minute_steps[0].id, "model": "gpt-4o-mini,claude-sonnet-4-5", "group_by": "provider,day"}
    body = api_client.get("/v1/usage", {**params, **window}).json()
    scan = api_client.get("/v1/usage", {**params, **window, "exact": "true"}).json()
    assert body["source"] == "rollup+steps"
    assert body["data"] and [{k: r[k] for k in EXACT_FIELDS} for r in body["data"]] == [
        {k: r[k] for k in EXACT_FIELDS} for r in scan["data"]
    ]
    steps = _window_steps(organization, window["start"], window["end"], agent_id=minute_steps[0].id)
    assert sum(r["steps"] for r in body["data"]) == len(steps)


def test_usage_on_a_ragged_window_with_a_filter_the_rollups_lack_scans(api_client, organization, minute_steps):
    window = {"start": "2026-02-01T03:17:00Z", "end": "2026-02-03T21:05:09Z"}
    body = api_client.get("/v1/usage", {"user_id": "u-1", "group_by": "model", **window}).json()
    assert (body["source"], body["exact_percentiles"]) == ("steps", True)
    steps = _window_steps(organization, window["start"], window["end"], user_id="u-1")
    _check_rows(body["data"], _expected(steps, key=lambda s: s.model), key=lambda r: r["model"], exact_percentiles=True)


def test_usage_limit_keeps_the_first_groups_either_way(api_client, minute_steps):
    window = {"start": "2026-02-01T03:17:00Z", "end": "2026-02-02T21:05:09Z"}
    body = api_client.get("/v1/usage", {"group_by": "hour", "limit": 5, **window}).json()
    scan = api_client.get("/v1/usage", {"group_by": "hour", "limit": 5, "exact": "true", **window}).json()
    assert body["source"] == "rollup+steps" and body["truncated"] is scan["truncated"] is True
    assert [r["hour"] for r in body["data"]] == [r["hour"] for r in scan["data"]]
    assert len(body["data"]) == 5


@pytest.mark.parametrize(("start", "end", "source"), WINDOWS[3:10])
def test_usage_window_totals_for_monitors_equal_the_steps_summed_as_the_rollups_sum_them(
    organization, minute_steps, start, end, source
):
    from steps.report_windows import steps_totals
    from steps.reports import usage_window_totals

    moments = {k: datetime.fromisoformat(v) for k, v in _window_params(start, end).items()}
    window = Step.objects.filter(organization=organization, created_at__gte=moments["start"],
                                 created_at__lt=moments["end"])  # fmt: skip
    cases = (
        ([], {}, {}),
        (["model", "hour"], {"provider": ["openai"]}, {"provider_name": "openai"}),
        (["user"], {}, {}),  # the subject rollups, and the steps without a user as a group of their own
        (["conversation"], {"model": ["gpt-4o-mini"]}, {"model": "gpt-4o-mini"}),
    )
    for group_by, filters, narrowed in cases:
        totals = usage_window_totals(organization=organization, filters=filters, group_by=group_by, **moments)
        assert totals.source == source
        scanned = window.filter(**narrowed)
        columns = [{"user": "user_id", "conversation": "conversation_id"}.get(g, g) for g in group_by]
        expected = steps_totals(scanned, columns)
        assert set(totals.groups) == set(expected), group_by
        for key, row in totals.groups.items():
            want = expected[key]
            assert (row.counts, row.cost_usd, list(row.latency), list(row.ttft)) == (
                want.counts, want.cost_usd, list(want.latency), list(want.ttft)
            ), (group_by, key)  # fmt: skip


def test_usage_window_totals_take_any_step_filter(organization, minute_steps):
    from steps.reports import usage_window_totals

    start, end = datetime(2026, 2, 1, 3, 17, tzinfo=UTC), datetime(2026, 2, 3, 21, 5, tzinfo=UTC)
    totals = usage_window_totals(
        organization=organization, start=start, end=end, filters={"tags": "vip", "start": "2020-01-01T00:00:00Z"}
    )
    vip = [s for s in _window_steps(organization, start.isoformat(), end.isoformat()) if "vip" in s.tags]
    assert totals.source == "steps"
    assert totals.groups[()].counts["steps"] == len(vip) > 0
    for bad in ({"filters": {"status": "bogus"}}, {"group_by": ["colour"]}):
        with pytest.raises(ApplicationError):
            usage_window_totals(organization=organization, start=start, end=end, **bad)


def test_dashboard_on_a_ragged_period_adds_up_like_a_scan(organization, minute_steps):
    from console.dashboard import Period, dashboard_get

    period = Period(key="custom", label="custom", start=datetime(2026, 2, 1, 3, 17, tzinfo=UTC),
                    end=datetime(2026, 2, 3, 21, 5, 9, tzinfo=UTC), bucket="day")  # fmt: skip
    dashboard = dashboard_get(organization=organization, period=period)
    steps = _window_steps(organization, period.start.isoformat(), period.end.isoformat())
    assert dashboard.source == "rollup+steps"
    assert dashboard.overall["steps"] == len(steps)
    assert Decimal(dashboard.overall["cost_usd"]) == sum((s.cost_usd or Decimal(0) for s in steps), Decimal(0))
    assert sum(row["steps"] for row in dashboard.by_time) == len(steps)
    assert {row["day"][:10] for row in dashboard.by_time} == {"2026-02-01", "2026-02-02", "2026-02-03"}


# --- CSV ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["format", "accept"])
def test_usage_as_csv_has_the_same_numbers(api_client, dataset, how):
    params = {"group_by": "model,day"}
    json_rows = api_client.get("/v1/usage", params).json()["data"]
    if how == "format":
        response = api_client.get("/v1/usage", {**params, "format": "csv"})
    else:
        response = api_client.get("/v1/usage", params, HTTP_ACCEPT="text/csv")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == len(json_rows)
    for got, want in zip(rows, json_rows, strict=True):
        assert got["model"] == want["model"]
        assert int(got["steps"]) == want["steps"]
        assert int(got["total_tokens"]) == want["total_tokens"]
        assert Decimal(got["cost_usd"]) == Decimal(want["cost_usd"])
        assert float(got["latency_ms_p95"]) == want["latency_ms_p95"]


def test_errors_as_csv(api_client, dataset):
    response = api_client.get("/v1/errors?format=csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {r["error_type"] for r in rows} == {"rate_limit_error", "api_timeout"}


def test_csv_errors_are_still_json(api_client, dataset):
    response = api_client.get("/v1/usage", {"format": "csv", "group_by": "colour"})
    assert response.status_code == 400
    assert response.json()["fields"]["group_by"]


# --- bad parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/v1/usage", "group_by=colour", "group_by"),
        ("/v1/usage", "group_by=day,week", "group_by"),
        ("/v1/usage", "group_by=day,day", "group_by"),
        ("/v1/usage", "exact=perhaps", "exact"),
        ("/v1/usage", "limit=-1", "limit"),
        ("/v1/usage", "format=xml", "format"),
        ("/v1/usage", "status=bogus", "status"),
        ("/v1/usage", "start=not-a-date", "start"),
        ("/v1/usage", "bogus=1", "bogus"),
        ("/v1/errors", "group_by=user", "group_by"),
        ("/v1/errors", "min_latency_ms=abc", "min_latency_ms"),
        ("/v1/errors", "end=2026-02-30T00:00:00Z", "end"),
        ("/v1/runs/run-x/usage", "limit=5", "limit"),
    ],
)
def test_report_parameters_are_validated(api_client, path, query, field):
    response = api_client.get(f"{path}?{query}")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]


# --- errors report ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "window",
    [
        {},
        {"start": "2026-02-02T03:17:00Z", "end": "2026-02-06T21:05:00Z"},  # ragged ends: rollups + steps
        {"start": "2026-02-03T00:00:00Z", "end": "2026-02-03T00:30:00Z"},  # under an hour
        {"start": "2026-02-01T04:30:00Z", "end": "2026-02-01T12:00:00Z"},  # two steps, no failure
    ],
)
def test_errors_report_counts_shares_and_examples(api_client, organization, dataset, window):
    body = api_client.get("/v1/errors", {"group_by": "model", **window}).json()

    steps = _ended(organization)
    if window:
        start, end = (datetime.fromisoformat(window[k]) for k in ("start", "end"))
        steps = [s for s in steps if start <= s.created_at < end]
    failed = [s for s in steps if s.error_type]
    totals = defaultdict(int)
    for s in steps:
        totals[s.model] += 1
    groups = defaultdict(list)
    for s in failed:
        groups[(s.error_type, s.model)].append(s)
    assert body["total_steps"] == len(steps)
    assert body["total_errors"] == len(failed)
    assert {(r["error_type"], r["model"]) for r in body["data"]} == set(groups)
    for row in body["data"]:
        members = groups[(row["error_type"], row["model"])]
        assert row["count"] == len(members)
        assert row["steps"] == totals[row["model"]]
        assert row["share"] == round(len(members) / totals[row["model"]], 6)
        assert datetime.fromisoformat(row["first_seen"]) == min(s.created_at for s in members)
        assert datetime.fromisoformat(row["last_seen"]) == max(s.created_at for s in members)
        assert row["example_step_id"] in {s.id for s in members}
    counts = [r["count"] for r in body["data"]]
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("exact", [False, True])
def test_usage_and_errors_agree_that_an_error_is_a_failed_step_and_count_cancelled_apart(
    api_client, organization, dataset, exact
):
    for i in range(3):  # runs cancelled mid-step: ended steps, not errors
        step = services.step_start(
            organization=organization, agent=dataset[0], provider_name="openai", model="gpt-4o-mini",
            created_at=DAY0 + timedelta(hours=2 * i, minutes=11),
        )  # fmt: skip
        services.step_cancel(step=step)
    failed = Step.objects.filter(organization=organization, status=StepStatus.FAILED).count()
    assert failed > 0

    usage = api_client.get("/v1/usage", {"exact": str(exact).lower()}).json()
    errors = api_client.get("/v1/errors", {"start": "2026-01-31T23:59:30Z"} if exact else {}).json()
    assert usage["source"] == ("steps" if exact else "rollup")
    assert usage["data"][0]["error_count"] == errors["total_errors"] == failed
    assert usage["data"][0]["steps"] == errors["total_steps"] == 40 + 3
    assert errors["cancelled"] == 3
    assert "cancelled" not in {row["error_type"] for row in errors["data"]}
    assert "failed steps" in usage["counts"] and "failed steps" in errors["counts"]
    # A rebuild of the rollups from the steps gives the same answer.
    step_rollups_rebuild(organization=organization)
    assert api_client.get("/v1/errors").json()["total_errors"] == failed


def test_errors_report_by_day_and_agent_with_an_error_type_filter(api_client, organization, dataset):
    body = api_client.get("/v1/errors", {"group_by": "agent,day", "error_type": "api_timeout"}).json()
    steps = _ended(organization)
    per_group = defaultdict(int)
    for s in steps:
        per_group[(s.agent_id, s.created_at.date())] += 1
    timeouts = [s for s in steps if s.error_type == "api_timeout"]
    assert sum(r["count"] for r in body["data"]) == len(timeouts)
    for row in body["data"]:
        assert row["error_type"] == "api_timeout"
        key = (row["agent_id"], datetime.fromisoformat(row["day"]).date())
        assert row["steps"] == per_group[key], "the denominator ignores the error_type filter"
        assert row["agent_name"]


def test_errors_report_on_factory_rows_without_rollups(api_client, organization):
    agent = AgentFactory(organization=organization)
    t = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    StepFactory.create_batch(3, agent=agent, status="success", created_at=t)
    StepFactory(agent=agent, status="failed", error_type="boom", created_at=t)
    body = api_client.get("/v1/errors", {"start": "2026-01-05T10:00:01Z"}).json()
    assert body["data"][0]["share"] == 0.25  # the ragged first hour is counted from the steps
    body = api_client.get("/v1/errors", {"user_id": "nobody-in-particular"}).json()
    assert (body["source"], body["data"]) == ("steps", [])


def _error_rollups(organization):
    from steps.models import ErrorRollupDay, ErrorRollupHour

    fields = ("bucket", "error_type", "agent_id", "model", "count", "first_seen", "last_seen", "example_step_id")
    return [
        sorted(model.objects.filter(organization=organization).values_list(*fields))
        for model in (ErrorRollupHour, ErrorRollupDay)
    ]


def test_errors_rollups_kept_by_the_write_path_equal_a_rebuild(organization, dataset):
    kept = _error_rollups(organization)
    failed = Step.objects.filter(organization=organization, error_type__isnull=False)
    assert sum(row[4] for row in kept[0]) == sum(row[4] for row in kept[1]) == failed.count() > 0
    step_rollups_rebuild(organization=organization)
    assert _error_rollups(organization) == kept


def test_bulk_recorded_steps_reach_the_errors_rollups(organization):
    from steps.services import StepRecord, steps_record_many

    when = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)
    records = [
        StepRecord(
            trace_id="a" * 32,
            span_id=f"{i:016x}",
            usage=Usage(prompt_tokens=1, completion_tokens=1),
            created_at=when + timedelta(minutes=i),
            completed_at=when + timedelta(minutes=i, seconds=1),
            provider_name="openai",
            model="gpt-4o",
            error_type="rate_limit" if i < 3 else None,
            error_message="429" if i < 3 else None,
        )
        for i in range(5)
    ]
    steps = steps_record_many(organization=organization, records=records)
    hour, day = _error_rollups(organization)
    failed = sorted((s for s in steps if s.error_type), key=lambda s: s.created_at)
    assert [(r[1], r[3], r[4]) for r in hour] == [("rate_limit", "gpt-4o", 3)] == [(r[1], r[3], r[4]) for r in day]
    assert (hour[0][5], hour[0][6]) == (failed[0].created_at, failed[-1].created_at)
    assert hour[0][7] == max(s.id for s in failed)


@pytest.mark.parametrize("group_by", ["", "model", "agent,day", "provider,model,day"])
@pytest.mark.parametrize(
    "window",
    [
        {},
        {"start": "2026-02-02T03:17:00Z", "end": "2026-02-06T21:05:00Z"},  # ragged ends: rollups + steps
        {"start": "2026-02-02T00:00:00Z", "end": "2026-02-05T00:00:00Z"},  # whole days
    ],
)
def test_errors_report_from_rollups_equals_a_scan_of_the_steps(api_client, dataset, group_by, window):
    """Same rows, counts, first/last seen and examples from the errors rollups as from the steps (a status
    filter, which selects the same failed steps, sends the report to the scan)."""
    from_rollups = api_client.get("/v1/errors", {"group_by": group_by, **window}).json()
    scanned = api_client.get("/v1/errors", {"group_by": group_by, "status": "failed,cancelled", **window}).json()
    # The status filter scans the errors; their denominators (which ignore it) still come from the rollups.
    assert from_rollups["source"] == ("rollup+steps" if "T03:17" in window.get("start", "") else "rollup")
    assert scanned["source"] == "rollup+steps"
    assert from_rollups["data"] and from_rollups["data"] == scanned["data"]
    assert from_rollups["total_errors"] == scanned["total_errors"]


# --- PostgreSQL ---------------------------------------------------------------------------------


def test_exact_percentiles_come_from_percentile_cont_on_postgres(postgres, api_client, organization, dataset):
    body = api_client.get("/v1/usage", {"group_by": "model", "exact": "true"}).json()
    expected = _expected(_ended(organization), key=lambda s: s.model)
    _check_rows(body["data"], expected, key=lambda r: r["model"], exact_percentiles=True)


# --- throttling and schema ----------------------------------------------------------------------


def _throttled_statuses(api_client, monkeypatch, times: list[float]) -> list:
    """The responses to GET /v1/steps at each of `times` (seconds) under a 3/minute rate."""
    from django.conf import settings

    from config.throttling import ApiKeyRateThrottle

    clock = iter(times)
    monkeypatch.setattr(ApiKeyRateThrottle, "timer", staticmethod(lambda: next(clock)))
    rest = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api_key": "3/minute"}}
    with override_settings(REST_FRAMEWORK=rest):
        return [api_client.get("/v1/steps") for _ in times]


def test_throttling_per_key_answers_429_with_retry_after_until_the_window_ends(api_client, monkeypatch):
    from django.core.cache import cache

    cache.clear()
    # Window [6000, 6060): three allowed, then 429 telling the client to come back at 6060.
    responses = _throttled_statuses(api_client, monkeypatch, [6000.0, 6010.0, 6020.0, 6030.5, 6059.2, 6060.0])
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429, 200]
    assert responses[3]["Retry-After"] == "30" and responses[4]["Retry-After"] == "1"
    assert responses[3].json()["error"] == "throttled"


def test_throttling_counts_each_key_on_its_own(api_client, organization, monkeypatch):
    from django.core.cache import cache

    cache.clear()
    assert [r.status_code for r in _throttled_statuses(api_client, monkeypatch, [0.0] * 4)] == [200, 200, 200, 429]
    _, other_key = api_key_create(organization=organization, name="second")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {other_key}")
    assert [r.status_code for r in _throttled_statuses(other, monkeypatch, [1.0, 2.0])] == [200, 200]


def test_throttle_counters_are_shared_through_redis(api_client, api_key, monkeypatch, redis_url):
    """With CACHE_URL on Redis, every web process counts against the same integer per key and window."""
    import redis

    from accounts.selectors import api_key_authenticate

    key_id = api_key_authenticate(raw_key=api_key).pk
    # A prefix of this test's own: other processes sharing this Redis (a gunicorn started by another test, whose
    # key may have the same id on SQLite) count under theirs, so only this test's counters match the pattern.
    prefix = f"throttle-test-{uuid.uuid4().hex}"
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": prefix,
        }
    }
    client = redis.Redis.from_url(redis_url)
    pattern = f"{prefix}:*throttle:api_key:{key_id}:*"
    try:
        with override_settings(CACHES=caches):
            responses = _throttled_statuses(api_client, monkeypatch, [120.0, 121.0, 122.0, 123.0])
            assert [r.status_code for r in responses] == [200, 200, 200, 429]
            # Another process sees the same counter: a plain integer in Redis, not per-process state.
            keys = [k.decode() for k in client.keys(pattern)]
            assert len(keys) == 1 and keys[0].endswith(f":{key_id}:60:2")
            assert int(client.get(keys[0])) == 4
            assert 0 < client.ttl(keys[0]) <= 61
    finally:
        for key in client.keys(pattern):
            client.delete(key)


def test_openapi_schema_describes_every_query_endpoint(client):
    response = client.get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    for path in ("/v1/steps", "/v1/steps/{step_id}", "/v1/steps/{step_id}/messages", "/v1/steps/{step_id}/metrics",
                 "/v1/steps/{step_id}/trace", "/v1/steps/{step_id}/feedback", "/v1/requests/{request_id}",
                 "/v1/runs/{run_id}/usage", "/v1/usage", "/v1/errors"):  # fmt: skip
        assert path in schema["paths"], path
    list_params = {p["name"] for p in schema["paths"]["/v1/steps"]["get"]["parameters"]}
    assert {"agent_id", "tags", "tags_match", "start", "end", "min_ttft_ms", "cursor", "limit", "order"} <= list_params
    assert "ApiKeyAuth" in schema["components"]["securitySchemes"]
    assert "TypedMessage" in schema["components"]["schemas"]


def test_migration_rebuilds_the_error_rollup_rows_that_counted_cancelled_steps(organization):
    import importlib
    from types import SimpleNamespace

    from django.apps import apps
    from django.db import connection

    from steps.models import ErrorRollupDay, ErrorRollupHour

    migration = importlib.import_module("steps.migrations.0006_error_rollups_failed_only")
    agent = AgentFactory(organization=organization)
    other = OrganizationFactory()
    t = datetime(2026, 3, 2, 8, 15, tzinfo=UTC)
    StepFactory(agent=agent, status="cancelled", error_type="cancelled", created_at=t)
    StepFactory(agent=agent, status="failed", error_type="cancelled", created_at=t)  # an ingested span can say so
    StepFactory(agent=agent, status="failed", error_type="cancelled", created_at=t + timedelta(hours=2))
    StepFactory(agent=agent, status="failed", error_type="rate_limit", created_at=t)
    StepFactory(agent=AgentFactory(organization=other), status="cancelled", error_type="cancelled", created_at=t)
    step_rollups_rebuild(organization=organization)
    step_rollups_rebuild(organization=other)
    truth = _error_rollups(organization), _error_rollups(other)
    assert sum(row[4] for row in truth[0][1]) == 3  # two 'cancelled' failures and one rate limit
    assert truth[1] == [[], []]
    # What the old write path left: the cancelled steps counted under their error type, in both organizations.
    for model, bucket in ((ErrorRollupHour, t.replace(minute=0)), (ErrorRollupDay, t.replace(hour=0, minute=0))):
        model.objects.filter(organization=organization, error_type="cancelled").update(count=99)
        model.objects.create(
            organization=other, bucket=bucket, error_type="cancelled", agent_id="x", count=1,
            first_seen=t, last_seen=t, example_step_id="step-x",
        )  # fmt: skip

    # The function reads only the editor's connection (SQLite's editor cannot open inside a test transaction).
    migration.rebuild_cancelled_error_rows(apps, SimpleNamespace(connection=connection))

    assert (_error_rollups(organization), _error_rollups(other)) == truth


MEASURES = ["steps", "error_count", "error_rate", "cost_usd", "total_tokens", "prompt_tokens", "cache_hit_ratio",
            "latency_ms_p50", "latency_ms_p95", "ttft_ms_p99"]  # fmt: skip


@pytest.mark.parametrize("group_by", [["user"], ["conversation"], ["agent"], ["model", "day"], []])
@pytest.mark.parametrize(
    ("start", "end"),
    [
        (DAY0 + timedelta(minutes=23), DAY0 + timedelta(days=8, minutes=11)),  # days, hours and ragged edges
        (DAY0 + timedelta(hours=5), DAY0 + timedelta(hours=30)),  # whole hours only
    ],
)
def test_a_report_of_some_measures_has_the_full_report_s_values(organization, dataset, group_by, start, end):
    """usage_report(measures=...) (the monitors' reads: only the columns a metric needs) changes no number."""
    filters = {"start": start.isoformat(), "end": end.isoformat()}
    full = usage_report(organization=organization, filters=filters, group_by=group_by)
    assert full.source.startswith("rollup") and full.rows
    keys = [{"provider": "provider"}.get(g, {"user": "user_id", "conversation": "conversation_id",
                                               "agent": "agent_id"}.get(g, g)) for g in group_by]  # fmt: skip
    for measure in MEASURES:
        some = usage_report(organization=organization, filters=filters, group_by=group_by, measures=[measure])
        assert some.source == full.source
        expected = [{k: row[k] for k in [*keys, "steps", measure]} for row in full.rows]
        assert [{k: row[k] for k in [*keys, "steps", measure]} for row in some.rows] == expected
        assert set(some.rows[0]) <= {*keys, "agent_name", "steps", measure}
    both = usage_report(organization=organization, filters=filters, group_by=group_by,
                        measures=["error_rate", "ttft_ms_p95"])  # fmt: skip
    assert [(r["error_rate"], r["ttft_ms_p95"]) for r in both.rows] == [
        (r["error_rate"], r["ttft_ms_p95"]) for r in full.rows
    ]


def _cancel(organization, agent, when, **kwargs):
    step = services.step_start(
        organization=organization, agent=agent, provider_name="openai", model="gpt-4o-mini", created_at=when, **kwargs
    )  # fmt: skip
    services.step_cancel(step=step)
    return step


def _cancelled_columns(organization):
    from steps.models import SubjectRollupDay, SubjectRollupHour

    return [
        sorted(
            model.objects.filter(organization=organization, cancelled_steps__gt=0).values_list(
                "bucket", "agent_id", "model", "cancelled_steps", *(("kind", "subject_id") if "Subject" in name else ())
            )
        )
        for name, model in (
            ("StepRollupHour", StepRollupHour), ("StepRollupDay", StepRollupDay),
            ("SubjectRollupHour", SubjectRollupHour), ("SubjectRollupDay", SubjectRollupDay),
        )
    ]  # fmt: skip


def test_the_errors_report_counts_cancelled_steps_from_the_rollups_and_the_ragged_minutes(
    api_client, organization, dataset
):
    """`cancelled`: the rollups' cancelled_steps for whole hours, the steps of the ragged minutes, exact either way."""
    whens = [DAY0 + timedelta(hours=2, minutes=11), DAY0 + timedelta(hours=9, minutes=59), DAY0 + timedelta(days=1)]
    for i, when in enumerate(whens):
        _cancel(organization, dataset[i % 2], when, user_id="u-c", conversation_id="c-c" if i else None)
    _cancel(OrganizationFactory(), AgentFactory(), DAY0 + timedelta(hours=3))  # another organization's
    hours = StepRollupHour.objects.filter(organization=organization, cancelled_steps__gt=0)
    assert sorted(hours.values_list("bucket", "cancelled_steps")) == [
        (DAY0 + timedelta(hours=2), 1), (DAY0 + timedelta(hours=9), 1), (DAY0 + timedelta(days=1), 1),
    ]  # fmt: skip
    kept = _cancelled_columns(organization)
    step_rollups_rebuild(organization=organization)
    assert _cancelled_columns(organization) == kept  # the write path and the rebuild agree

    windows = [
        ({}, 3),  # all time: the rollups
        ({"start": (DAY0 + timedelta(hours=2, minutes=30)).isoformat()}, 2),  # a ragged start past the first one
        ({"start": (DAY0 + timedelta(hours=2, minutes=5)).isoformat(),
          "end": (DAY0 + timedelta(hours=9, minutes=59)).isoformat()}, 1),  # ragged ends: 02:11 in, 09:59 out
        ({"agent_id": dataset[0].pk}, 2),
        ({"status": "cancelled"}, 3),  # not a rollup filter: the steps
    ]  # fmt: skip
    for params, want in windows:
        body = api_client.get("/v1/errors", params).json()
        assert body["cancelled"] == want, (params, body["cancelled"])
        assert body["cancelled"] == Step.objects.filter(
            organization=organization, status=StepStatus.CANCELLED,
            **({"agent_id": params["agent_id"]} if "agent_id" in params else {}),
            **({"created_at__gte": params["start"]} if "start" in params else {}),
            **({"created_at__lt": params["end"]} if "end" in params else {}),
        ).count()  # fmt: skip
    # The whole hours come from the rollups, not the steps: a rollup count changed behind the report's back shows.
    days = StepRollupDay.objects.filter(organization=organization, cancelled_steps__gt=0).update(cancelled_steps=5)
    assert days == 3  # day 0 for each agent, day 1
    assert api_client.get("/v1/errors").json()["cancelled"] == 15


def test_migration_fills_cancelled_steps_of_the_rollup_rows(organization, dataset):
    import importlib
    from types import SimpleNamespace

    from django.apps import apps
    from django.db import connection

    from steps.models import SubjectRollupDay, SubjectRollupHour

    migration = importlib.import_module("steps.migrations.0017_rollup_cancelled_steps")
    other = OrganizationFactory()
    for i in range(5):
        when = DAY0 + timedelta(hours=3 * i, minutes=13)
        _cancel(organization, dataset[i % 2], when, user_id=f"u-{i % 2}", conversation_id="c-1" if i % 3 else None)
    _cancel(other, AgentFactory(organization=other), DAY0 + timedelta(minutes=5), user_id="u-0")
    truth = _cancelled_columns(organization), _cancelled_columns(other)
    # hours: 5; days: one per agent; subjects by hour: 5 users' and 3 conversations'; by day: 2 users', 2 conversations'
    assert [len(rows) for rows in truth[0]] == [5, 2, 8, 4]
    for model in (StepRollupHour, StepRollupDay, SubjectRollupHour, SubjectRollupDay):  # as before the migration
        model.objects.update(cancelled_steps=0)

    # The function reads only the editor's connection (SQLite's editor cannot open inside a test transaction).
    migration.backfill(apps, SimpleNamespace(connection=connection))

    assert (_cancelled_columns(organization), _cancelled_columns(other)) == truth
