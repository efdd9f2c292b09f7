"""Evaluation rules over stored steps: min_steps, the recovery margin against flapping, no_data, split monitors,
one report shared by many monitors, deleted steps, organization isolation, and the report's own numbers."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from monitors.evaluation import default_recovery, next_state, plan
from monitors.models import AlertEvent, GroupAlert, Monitor
from monitors.services import monitor_create, monitor_update, monitors_evaluate
from steps.models import Step
from steps.reports import usage_report
from steps.rollups import step_rollups_rebuild
from tests.factories import AgentFactory, OrganizationFactory, StepFactory


def _steps(agent, *, ok: int = 0, failed: int = 0, ago: timedelta = timedelta(seconds=30), **values) -> None:
    at = timezone.now() - ago
    for status, count in (("success", ok), ("failed", failed)):
        for _ in range(count):
            StepFactory(agent=agent, status=status, error_type="rate_limit_error" if status == "failed" else None,
                        created_at=at, completed_at=at, **values)  # fmt: skip


def _monitor(organization, **data) -> Monitor:
    base = {"name": "m", "metric": "error_rate", "operator": ">", "threshold": 0.2, "window_seconds": 600,
            "min_steps": 5}  # fmt: skip
    return monitor_create(organization=organization, data={**base, **data})[0]


def _state(monitor: Monitor) -> tuple[str, float | None]:
    monitor.refresh_from_db()
    return monitor.state, monitor.value


@pytest.mark.django_db
def test_no_alert_below_min_steps_then_alerting_once_enough_steps():
    agent = AgentFactory()
    monitor = _monitor(agent.organization, filters={"agent_id": agent.pk})
    _steps(agent, ok=1, failed=3)  # 75% errors, but 4 steps
    monitors_evaluate()
    assert _state(monitor) == ("no_data", 0.75)
    assert not AlertEvent.objects.exists()
    _steps(agent, ok=1)
    monitors_evaluate()
    assert _state(monitor) == ("alerting", 0.6)
    assert AlertEvent.objects.get().previous_state == "no_data"


@pytest.mark.django_db
def test_a_value_hovering_at_the_threshold_does_not_flap():
    agent = AgentFactory()
    monitor = _monitor(agent.organization, filters={"agent_id": agent.pk})
    assert default_recovery(operator=">", threshold=0.2) == pytest.approx(0.18)
    _steps(agent, ok=7, failed=3)  # 0.3
    monitors_evaluate()
    assert _state(monitor)[0] == "alerting"
    _steps(agent, ok=5)  # 3/15 = 0.2: no longer above the threshold, but above the 0.18 recovery line
    monitors_evaluate()
    assert _state(monitor) == ("alerting", 0.2)
    _steps(agent, failed=1)  # 4/16 = 0.25
    monitors_evaluate()
    _steps(agent, ok=3)  # 4/19 = 0.21
    monitors_evaluate()
    assert _state(monitor)[0] == "alerting"
    assert AlertEvent.objects.filter(monitor=monitor).count() == 1  # fired once, never resolved in between
    _steps(agent, ok=4)  # 4/23 = 0.174
    monitors_evaluate()
    assert _state(monitor)[0] == "ok"
    assert [e.state for e in AlertEvent.objects.filter(monitor=monitor).order_by("created_at")] == ["alerting", "ok"]


def test_state_rules_for_each_operator_and_an_explicit_recovery_threshold():
    below = Monitor(metric="steps", operator="<", threshold=100, min_steps=0)
    assert default_recovery(operator="<", threshold=100) == pytest.approx(110)
    assert next_state(previous="ok", value=99, steps=99, monitor=below) == "alerting"
    assert next_state(previous="alerting", value=105, steps=105, monitor=below) == "alerting"
    assert next_state(previous="alerting", value=110, steps=110, monitor=below) == "ok"
    explicit = Monitor(metric="error_rate", operator=">=", threshold=0.5, recovery_threshold=0.1, min_steps=1)
    assert next_state(previous="ok", value=0.5, steps=2, monitor=explicit) == "alerting"
    assert next_state(previous="alerting", value=0.11, steps=9, monitor=explicit) == "alerting"
    assert next_state(previous="alerting", value=0.09, steps=11, monitor=explicit) == "ok"
    assert next_state(previous="alerting", value=None, steps=11, monitor=explicit) == "no_data"


@pytest.mark.django_db
def test_a_monitor_sees_only_its_organizations_steps():
    mine, theirs = AgentFactory(), AgentFactory()
    monitor = _monitor(mine.organization, min_steps=1)  # no filter: the whole organization
    _steps(mine, ok=4)
    _steps(theirs, failed=50)
    monitors_evaluate()
    assert _state(monitor) == ("ok", 0.0)
    assert monitor.steps == 4


@pytest.mark.django_db
def test_steps_older_than_the_window_do_not_count_and_an_empty_window_is_no_data():
    agent = AgentFactory()
    monitor = _monitor(agent.organization, filters={"agent_id": agent.pk}, min_steps=1)
    _steps(agent, failed=5, ago=timedelta(minutes=11))
    _steps(agent, ok=2)
    monitors_evaluate()
    assert _state(monitor) == ("ok", 0.0)
    Step.objects.filter(agent=agent, status="success").delete()
    monitors_evaluate()
    assert _state(monitor) == ("no_data", None)


@pytest.mark.django_db
def test_deleted_steps_stop_counting_after_the_rollups_are_rebuilt():
    """Over a window of whole hours the report reads the rollups: deleting steps and rebuilding the rollups (what
    deletion jobs do) takes them out of the monitor's number."""
    agent = AgentFactory()
    organization = agent.organization
    monitor = _monitor(organization, metric="error_count", operator=">", threshold=2, window_seconds=7 * 86400,
                       min_steps=1, filters={"agent_id": agent.pk})  # fmt: skip
    _steps(agent, ok=2, failed=4, ago=timedelta(days=2))
    step_rollups_rebuild(organization=organization)
    monitors_evaluate()
    assert _state(monitor) == ("alerting", 4.0)
    Step.objects.filter(agent=agent, status="failed").delete()
    step_rollups_rebuild(organization=organization)
    monitors_evaluate()
    assert _state(monitor) == ("ok", 0.0)
    assert [e.state for e in AlertEvent.objects.order_by("created_at")] == ["alerting", "ok"]


@pytest.mark.django_db
def test_a_deletion_job_takes_the_deleted_steps_out_of_the_monitor_s_number():
    """DELETE /v1/steps subtracts what it deletes from the rollups the monitor reads: no rebuild needed."""
    from steps.deletion import deletion_create, deletion_run

    agent = AgentFactory()
    organization = agent.organization
    monitor = _monitor(organization, metric="error_count", operator=">", threshold=2, window_seconds=7 * 86400,
                       min_steps=1, filters={"agent_id": agent.pk})  # fmt: skip
    _steps(agent, ok=2, failed=4, ago=timedelta(days=2))
    _steps(AgentFactory(organization=organization), failed=3, ago=timedelta(days=2))  # another agent: kept
    step_rollups_rebuild(organization=organization)
    monitors_evaluate()
    assert _state(monitor) == ("alerting", 4.0)
    job = deletion_create(organization=organization, params={"agent_id": agent.pk, "status": "failed"})
    assert deletion_run(job_id=job.pk).steps_deleted == 4
    monitors_evaluate()
    assert _state(monitor) == ("ok", 0.0)
    assert Step.objects.filter(organization=organization, status="failed").count() == 3


@pytest.mark.django_db
def test_after_retention_a_monitor_reads_what_the_usage_report_reads(settings):
    """Retention removes old raw steps; rollups outlive them by default (README), so a monitor's number stays the
    report's number for the same window, whichever part of the window each reads."""
    from steps.retention import retention_apply

    agent = AgentFactory()
    organization = agent.organization
    monitor = _monitor(organization, metric="steps", operator=">", threshold=1000, window_seconds=7 * 86400,
                       min_steps=1, filters={"agent_id": agent.pk})  # fmt: skip
    _steps(agent, ok=5, failed=1, ago=timedelta(days=3))
    _steps(agent, ok=2, ago=timedelta(hours=2))
    step_rollups_rebuild(organization=organization)
    organization.retention_days = 1
    organization.save(update_fields=["retention_days"])
    assert retention_apply().steps_removed == 6
    monitors_evaluate()
    monitor.refresh_from_db()
    now = monitor.evaluated_at
    report = usage_report(organization=organization, filters={
        "agent_id": agent.pk, "start": (now - timedelta(seconds=monitor.window_seconds)).isoformat(),
        "end": now.isoformat()})  # fmt: skip
    assert monitor.value == report.rows[0]["steps"] == 8  # the 6 retained steps are in the rollups' whole hours


@pytest.mark.django_db
def test_a_split_monitor_alerts_per_end_user_and_names_the_group():
    agent = AgentFactory()
    monitor = _monitor(agent.organization, metric="cost_usd", threshold=50, min_steps=1, group_by="user",
                       window_seconds=3600)  # fmt: skip
    _steps(agent, ok=3, user_id="alice", cost_usd=Decimal("20"))  # 60 > 50
    _steps(agent, ok=2, user_id="bob", cost_usd=Decimal("20"))  # 40
    _steps(agent, ok=9, cost_usd=Decimal("20"))  # no end user: no group
    monitors_evaluate()
    assert _state(monitor) == ("alerting", 60.0)
    event = AlertEvent.objects.get()
    assert (event.group_by, event.group, event.value, event.filters) == ("user", "alice", 60.0, {"user_id": ["alice"]})
    assert list(GroupAlert.objects.values_list("group", flat=True)) == ["alice"]
    _steps(agent, ok=1, user_id="bob", cost_usd=Decimal("20"))  # bob reaches 60 too
    monitors_evaluate()
    assert sorted(GroupAlert.objects.values_list("group", flat=True)) == ["alice", "bob"]
    assert AlertEvent.objects.count() == 2  # alice's alert goes on without a new event
    Step.objects.filter(user_id="alice").delete()
    monitors_evaluate()
    alice = AlertEvent.objects.filter(group="alice").order_by("-created_at").first()
    assert (alice.previous_state, alice.state) == ("alerting", "no_data")
    assert list(GroupAlert.objects.values_list("group", flat=True)) == ["bob"]


@pytest.mark.django_db
def test_monitors_differing_by_one_agent_share_one_report_with_the_same_numbers():
    organization = OrganizationFactory()
    agents = [AgentFactory(organization=organization) for _ in range(4)]
    monitors = []
    for index, agent in enumerate(agents):
        _steps(agent, ok=5 + index, failed=index, latency_ns=(index + 1) * 10**8)
        for metric in ("error_rate", "latency_ms_p95", "steps"):
            monitors.append(_monitor(organization, metric=metric, filters={"agent_id": agent.pk}, min_steps=1))
    assert len(plan(Monitor.objects.all())) == 1
    now = timezone.now()
    report = monitors_evaluate(now=now)
    assert (report.monitors, report.queries) == (12, 1)
    for monitor in monitors:
        monitor.refresh_from_db()
        alone = usage_report(
            organization=organization,
            filters={**monitor.filters, "start": (now - timedelta(seconds=600)).isoformat(), "end": now.isoformat()},
        ).rows[0]
        assert monitor.value == pytest.approx(float(alone[monitor.metric]), rel=1e-12)


@pytest.mark.django_db
def test_changing_the_definition_starts_over_and_disabled_monitors_are_skipped():
    agent = AgentFactory()
    monitor = _monitor(agent.organization, filters={"agent_id": agent.pk})
    _steps(agent, ok=2, failed=4)
    monitors_evaluate()
    assert _state(monitor)[0] == "alerting"
    monitor_update(monitor=monitor, data={"threshold": 0.9})
    assert _state(monitor) == ("no_data", None)
    monitors_evaluate()
    assert _state(monitor)[0] == "ok"
    monitor_update(monitor=monitor, data={"enabled": False, "threshold": 0.1})
    assert monitors_evaluate().monitors == 0
    assert _state(monitor) == ("no_data", None)


@pytest.mark.django_db
def test_the_evaluate_monitors_command_runs_one_cycle():
    from io import StringIO

    from django.core.management import CommandError, call_command

    agent = AgentFactory()
    monitor = _monitor(agent.organization, filters={"agent_id": agent.pk})
    _steps(agent, ok=2, failed=4)
    out = StringIO()
    call_command("evaluate_monitors", "--organization", agent.organization.name, stdout=out)
    assert "1 monitors, 1 reports, 1 alert events" in out.getvalue()
    assert _state(monitor)[0] == "alerting"
    with pytest.raises(CommandError):
        call_command("evaluate_monitors", "--organization", "nope", stdout=out)
