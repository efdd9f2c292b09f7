"""A cycle's reads and writes at scale: monitors over windows the rollups answer read only their metrics' columns
and still get the usage report's numbers; a report's monitors are recorded together, and a change is recorded
once even when two cycles overlap or a batched write fails."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError
from django.utils import timezone

from monitors import services
from monitors.models import AlertEvent, Monitor
from monitors.services import monitor_create, monitors_evaluate
from steps.reports import usage_report
from steps.rollups import step_rollups_rebuild
from tests.factories import AgentFactory, OrganizationFactory, StepFactory

pytestmark = pytest.mark.django_db

DAY = 86400


def _steps(organization, agents) -> None:
    """Steps hours and minutes ago (the window's whole hours come from the rollups, its edges from the steps)."""
    now = timezone.now()
    for index in range(36):
        at = now - timedelta(minutes=7 + 41 * index)
        StepFactory(
            agent=agents[index % len(agents)], status="failed" if index % 5 == 0 else "success",
            error_type="rate_limit_error" if index % 5 == 0 else None, created_at=at, completed_at=at,
            user_id=f"user-{index % 4}" if index % 6 else None, cost_usd=Decimal("0.013") * (index + 1),
            total_tokens=100 * index + 7, latency_ns=(index + 1) * 37_000_000, ttft_ns=(index + 3) * 11_000_000,
        )  # fmt: skip
    step_rollups_rebuild(organization=organization)


def _monitor(organization, **data) -> Monitor:
    base = {"name": "m", "operator": ">", "threshold": 0.5, "window_seconds": DAY, "min_steps": 1}
    return monitor_create(organization=organization, data={**base, **data})[0]


def test_monitors_over_whole_hours_read_the_usage_report_s_numbers():
    organization = OrganizationFactory()
    agents = [AgentFactory(organization=organization) for _ in range(3)]
    _steps(organization, agents)
    metrics = ("cost_usd", "error_rate", "latency_ms_p95", "ttft_ms_p50", "total_tokens", "steps", "error_count")
    split = [_monitor(organization, metric=metric, group_by="user", threshold=10**9) for metric in metrics]
    folded = [
        _monitor(organization, metric=metric, filters={"agent_id": agent.pk}, threshold=10**9)
        for metric in metrics
        for agent in agents
    ]
    now = timezone.now()
    report = monitors_evaluate(now=now)
    assert not report.errors
    window = {"start": (now - timedelta(seconds=DAY)).isoformat(), "end": now.isoformat()}
    per_user = usage_report(organization=organization, filters=window, group_by=["user"])
    assert per_user.source == "rollup+steps"
    for monitor in split:
        monitor.refresh_from_db()
        values = [float(row[monitor.metric]) for row in per_user.rows if row["user_id"] is not None]
        assert (monitor.state, monitor.value) == ("ok", max(values))
        assert monitor.steps == sum(row["steps"] for row in per_user.rows if row["user_id"] is not None)
    for monitor in folded:
        monitor.refresh_from_db()
        alone = usage_report(organization=organization, filters={**monitor.filters, **window}).rows[0]
        assert (monitor.state, monitor.value, monitor.steps) == ("ok", float(alone[monitor.metric]), alone["steps"])


def test_overlapping_cycles_record_a_change_once(monkeypatch):
    organization = OrganizationFactory()
    agents = [AgentFactory(organization=organization)]
    _steps(organization, agents)
    monitors = [_monitor(organization, metric="error_rate", threshold=0.1, filters={"agent_id": agents[0].pk}),
                _monitor(organization, metric="cost_usd", threshold=0.05, group_by="user")]  # fmt: skip
    real = services._group_alerts
    overlapped = []

    def slow_cycle_read_its_monitors_then_another_cycle_ran(found):
        monkeypatch.setattr(services, "_group_alerts", real)  # the other cycle is not slow
        overlapped.append(monitors_evaluate(now=timezone.now() - timedelta(seconds=1)))
        return real(found)

    monkeypatch.setattr(services, "_group_alerts", slow_cycle_read_its_monitors_then_another_cycle_ran)
    outer = monitors_evaluate(now=timezone.now())
    assert overlapped[0].events == 5  # error rate 0.2 > 0.1; four end users above 0.05 USD
    assert outer.events == 0  # its monitors were evaluated meanwhile: it records nothing
    assert AlertEvent.objects.count() == 5
    for monitor in monitors:
        monitor.refresh_from_db()
        assert monitor.state == "alerting" and len(monitor.history) == 1
    assert monitors_evaluate().events == 0  # the next cycle goes on from there: nothing changed


def test_a_failed_batched_write_records_the_monitors_one_by_one(monkeypatch, postgres):
    organization = OrganizationFactory()
    agents = [AgentFactory(organization=organization) for _ in range(2)]
    _steps(organization, agents)
    monitors = [_monitor(organization, metric="error_rate", threshold=0.1, filters={"agent_id": agent.pk})
                for agent in agents]  # fmt: skip
    claim = services._claim

    def failing(evaluated):
        claim(evaluated)  # the rows are written, then the statement fails: all of it is rolled back
        raise DatabaseError("lost connection")

    monkeypatch.setattr(services, "_claim", failing)
    report = monitors_evaluate()
    assert report.events == 2 and not report.errors
    for monitor in monitors:
        monitor.refresh_from_db()
        event = AlertEvent.objects.get(monitor=monitor)
        assert (event.previous_state, event.state, monitor.state) == ("no_data", "alerting", "alerting")
        assert len(monitor.history) == 1
