"""Retention (steps.retention): old raw records go in batches, recent reports stay the same, rollups outlive them."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKeyScope, AuditEvent
from accounts.services import api_key_create
from agents.models import Run
from steps import services
from steps.models import (
    Message,
    ProviderTrace,
    RetentionRun,
    Step,
    StepMetrics,
    StepRollupDay,
    StepRollupHour,
)
from steps.retention import retention_apply
from steps.rollups import hour_of
from steps.runs import runs_delete_empty, runs_left_empty
from steps.services import StepMetricsIn
from steps.tasks import apply_retention
from steps.values import Usage
from tests.factories import AgentFactory, MessageFactory, OrganizationFactory, ProjectFactory, ProviderTraceFactory

pytestmark = pytest.mark.django_db


def _record(organization, *, days_ago: float, now, project=None, run=None, i: int = 0) -> Step:
    """One ended step through the real write path (which maintains the rollups), `days_ago` before `now`."""
    agent = AgentFactory(organization=organization, project=project)
    step = services.step_start(
        organization=organization, agent=agent, run=run, project=project, provider_name="openai", model="gpt-4o-mini",
        model_handle="openai/gpt-4o-mini", created_at=now - timedelta(days=days_ago), user_id=f"u-{i % 2}",
    )  # fmt: skip
    metrics = StepMetricsIn(ttft_ns=(60 + i) * 1_000_000, llm_request_ns=(500 + 7 * i) * 1_000_000)
    step = services.step_finish(
        step=step, usage=Usage(prompt_tokens=100 + i, completion_tokens=10 + i), metrics=metrics
    )
    MessageFactory(step=step, organization=organization)
    ProviderTraceFactory(step=step, organization=organization)
    return step


def _usage(client: APIClient, *, start, end) -> dict:
    body = client.get(
        "/v1/usage",
        {"group_by": "model,day", "start": start.isoformat().replace("+00:00", "Z"),
         "end": end.isoformat().replace("+00:00", "Z")},
    ).json()  # fmt: skip
    return {(r["model"], r["day"]): (r["steps"], r["prompt_tokens"], r["cost_usd"]) for r in body["data"]}


@pytest.fixture
def now():
    return hour_of(timezone.now())


def test_retention_leaves_no_step_older_than_n_days_and_the_last_n_days_report_unchanged(api_client, organization, now):
    organization.retention_days = 30
    organization.save()
    old_run = Run.objects.create(organization=organization, request_id="req-old")
    Run.objects.filter(pk=old_run.pk).update(created_at=now - timedelta(days=50))
    Message.objects.create(
        organization=organization, run=old_run, role="user", sequence_id=1, content=[], step_created_at=now
    )
    old = [_record(organization, days_ago=d, now=now, run=old_run if d == 50 else None, i=d) for d in (50, 45, 31)]
    recent = [_record(organization, days_ago=d, now=now, i=d) for d in (29, 10, 1)]
    recent_run = Run.objects.create(organization=organization, request_id="req-new")
    other = OrganizationFactory()  # no retention anywhere: untouched
    other_old = _record(other, days_ago=400, now=now)
    window = {"start": now - timedelta(days=30), "end": now}
    before = _usage(api_client, **window)
    old_window = {"start": now - timedelta(days=60), "end": now - timedelta(days=30)}
    old_report = _usage(api_client, **old_window)
    assert sum(v[0] for v in old_report.values()) == 3

    run = retention_apply(now=now, batch_size=2)

    assert not Step.objects.filter(organization=organization, created_at__lt=now - timedelta(days=30)).exists()
    assert set(Step.objects.filter(organization=organization).values_list("pk", flat=True)) == {s.pk for s in recent}
    assert Step.objects.filter(pk=other_old.pk).exists()
    assert not StepMetrics.objects.filter(step_id__in=[s.pk for s in old]).exists()
    assert not Message.objects.filter(step_id__in=[s.pk for s in old]).exists()
    assert not ProviderTrace.objects.filter(step_id__in=[s.pk for s in old]).exists()
    assert not Run.objects.filter(pk=old_run.pk).exists()  # left empty by retention, with its own message
    assert Run.objects.filter(pk=recent_run.pk).exists()  # empty but recent: still running, perhaps
    assert _usage(api_client, **window) == before
    # Rollups outlive the raw rows by default: last month's report still adds up.
    assert _usage(api_client, **old_window) == old_report
    stored = RetentionRun.objects.get(pk=run.pk)
    assert (stored.steps_removed, stored.metrics_removed, stored.provider_traces_removed, stored.runs_removed) == (
        3, 3, 3, 1,
    )  # fmt: skip
    assert stored.messages_removed == 4
    assert stored.finished_at is not None
    assert stored.policies == [
        {"organization": organization.pk, "project": None, "days": 30, "cutoff": (now - timedelta(days=30)).isoformat()}
    ]

    again = retention_apply(now=now)  # twice is harmless
    assert again.steps_removed == 0
    assert Step.objects.filter(organization=organization).count() == 3


def test_a_projects_retention_overrides_the_organizations_and_the_default_applies_to_the_rest(now):
    short = ProjectFactory(retention_days=5)
    organization = short.organization
    long = ProjectFactory(organization=organization, retention_days=100)
    plain = ProjectFactory(organization=organization)
    steps = {
        "short_old": _record(organization, days_ago=6, now=now, project=short),
        "short_new": _record(organization, days_ago=4, now=now, project=short),
        "long_kept": _record(organization, days_ago=50, now=now, project=long),
        "long_old": _record(organization, days_ago=101, now=now, project=long),
        "plain_old": _record(organization, days_ago=21, now=now, project=plain),
        "plain_new": _record(organization, days_ago=19, now=now, project=plain),
        "none_old": _record(organization, days_ago=21, now=now),
    }
    other = OrganizationFactory()
    other_old = _record(other, days_ago=21, now=now)
    other_new = _record(other, days_ago=2, now=now)

    with override_settings(STEPLENS_RETENTION_DAYS=20):
        apply_retention()  # the Celery task, at the real now: same days

    left = set(Step.objects.values_list("pk", flat=True))
    assert left == {steps["short_new"].pk, steps["long_kept"].pk, steps["plain_new"].pk, other_new.pk}
    assert other_old.pk not in left


def test_apply_retention_command_with_rollups_purges_old_rollup_rows_too(organization, now):
    organization.retention_days = 10
    organization.save()
    _record(organization, days_ago=40, now=now)
    _record(organization, days_ago=2, now=now)
    cutoff = now - timedelta(days=10)
    assert StepRollupHour.objects.filter(organization=organization, bucket__lt=cutoff).exists()

    call_command("apply_retention")
    assert StepRollupHour.objects.filter(organization=organization, bucket__lt=cutoff).exists()  # kept by default

    call_command("apply_retention", "--rollups")
    assert not StepRollupHour.objects.filter(organization=organization, bucket__lt=hour_of(cutoff)).exists()
    assert not StepRollupDay.objects.filter(organization=organization, bucket__lt=cutoff - timedelta(days=1)).exists()
    assert StepRollupHour.objects.filter(organization=organization, bucket__gte=cutoff).count() == 1
    assert RetentionRun.objects.latest("pk").rollup_rows_removed > 0


def test_retention_api_reads_and_sets_the_organizations_and_a_projects_days(api_client, organization):
    project = ProjectFactory(organization=organization)
    body = api_client.get("/v1/retention").json()
    assert body == {"default_days": None, "retention_days": None, "projects": []}

    body = api_client.put("/v1/retention", {"retention_days": 30}, format="json").json()
    assert body["retention_days"] == 30
    body = api_client.put("/v1/retention", {"retention_days": 7, "project": project.pk}, format="json").json()
    assert body["projects"] == [{"id": project.pk, "name": project.name, "retention_days": 7}]
    organization.refresh_from_db()
    project.refresh_from_db()
    assert (organization.retention_days, project.retention_days) == (30, 7)
    assert AuditEvent.objects.filter(organization=organization, action="retention.set").count() == 2

    body = api_client.put("/v1/retention", {"retention_days": None}, format="json").json()
    assert body["retention_days"] is None


def test_retention_api_refuses_bad_days_other_organizations_projects_and_weaker_keys(api_client, organization):
    response = api_client.put("/v1/retention", {"retention_days": 0}, format="json")
    assert response.status_code == 400
    assert "retention_days" in response.json()["fields"]

    foreign = ProjectFactory()
    response = api_client.put("/v1/retention", {"retention_days": 3, "project": foreign.pk}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]
    foreign.refresh_from_db()
    assert foreign.retention_days is None

    _, read_key = api_key_create(organization=organization, scope=ApiKeyScope.READ)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {read_key}")
    assert client.get("/v1/retention").status_code == 200  # reading is fine, setting needs a full key
    assert client.put("/v1/retention", {"retention_days": 3}, format="json").status_code == 403
    organization.refresh_from_db()
    assert organization.retention_days is None


def test_batches_walk_past_old_runs_that_still_have_steps_and_remove_every_empty_one(organization, now):
    """Runs older than the cutoff are visited oldest first from a cursor: the old runs that keep a recent step
    (and so stay) sit ahead of the empty ones, and every empty run is still removed, batch after batch."""
    organization.retention_days = 30
    organization.save()
    kept, empty = [], []
    for i in range(5):
        run = Run.objects.create(organization=organization, request_id=f"req-kept-{i}")
        Run.objects.filter(pk=run.pk).update(created_at=now - timedelta(days=60, minutes=10 - i))
        _record(organization, days_ago=1, now=now, run=run, i=i)  # a recent step keeps the old run
        kept.append(run.pk)
    for i in range(7):
        run = Run.objects.create(organization=organization, request_id=f"req-empty-{i}")
        Run.objects.filter(pk=run.pk).update(created_at=now - timedelta(days=59, minutes=i))
        empty.append(run.pk)

    run = retention_apply(now=now, batch_size=2)

    assert set(Run.objects.filter(organization=organization).values_list("pk", flat=True)) == set(kept)
    assert RetentionRun.objects.get(pk=run.pk).runs_removed == len(empty)


def _runs_and_messages(organization) -> tuple[set[str], set[str]]:
    return (
        set(Run.objects.filter(organization=organization).values_list("pk", flat=True)),
        set(Message.objects.filter(organization=organization).values_list("pk", flat=True)),
    )


def test_runs_delete_empty_removes_the_runs_no_step_is_left_in_with_their_messages_as_the_orm_delete_does(
    organization, now
):
    """The fast path (no collector; messages found per run) removes exactly what runs_left_empty(...).delete()
    removes: the empty runs and every message they hold, whatever its time; runs with a step stay, also a run
    whose only step is older than the run itself (an ingested run)."""
    empty = Run.objects.create(organization=organization, request_id="req-empty")
    for days in (3, 40, 400):  # step-less messages of the run, in different partitions on PostgreSQL
        MessageFactory(step=None, run=empty, organization=organization, step_created_at=now - timedelta(days=days))
    never = Run.objects.create(organization=organization, request_id="req-never")
    kept = Run.objects.create(organization=organization, request_id="req-kept")
    _record(organization, days_ago=1, now=now, run=kept)
    kept_message = MessageFactory(step=None, run=kept, organization=organization, step_created_at=now)
    earlier = Run.objects.create(organization=organization, request_id="req-earlier")
    _record(organization, days_ago=20, now=now, run=earlier)  # the step is 20 days older than its run
    ids = [empty.pk, never.pk, kept.pk, earlier.pk]
    assert set(runs_left_empty(Run.objects.filter(pk__in=ids)).values_list("pk", flat=True)) == {empty.pk, never.pk}

    with transaction.atomic():
        _, by_orm = runs_left_empty(Run.objects.filter(pk__in=ids)).delete()
        left_by_orm = _runs_and_messages(organization)
        transaction.set_rollback(True)
    with transaction.atomic():
        counts = runs_delete_empty(ids)

    assert counts == {label: n for label, n in by_orm.items() if n} == {Run._meta.label: 2, Message._meta.label: 3}
    assert _runs_and_messages(organization) == left_by_orm
    assert set(Run.objects.filter(pk__in=ids).values_list("pk", flat=True)) == {kept.pk, earlier.pk}
    assert not Message.objects.filter(run_id=empty.pk).exists()
    assert Message.objects.filter(pk=kept_message.pk).exists()
    assert runs_delete_empty([]) == {} and runs_delete_empty([kept.pk]) == {}


def test_retention_removes_the_runs_its_steps_left_empty_with_their_messages_and_counts_them(organization, now):
    organization.retention_days = 30
    organization.save()
    gone = Run.objects.create(organization=organization, request_id="req-gone")
    Run.objects.filter(pk=gone.pk).update(created_at=now - timedelta(days=61))
    for i in range(2):
        _record(organization, days_ago=60 + i, now=now, run=gone, i=i)
    MessageFactory(step=None, run=gone, organization=organization, step_created_at=now - timedelta(days=2))
    mixed = Run.objects.create(organization=organization, request_id="req-mixed")
    Run.objects.filter(pk=mixed.pk).update(created_at=now - timedelta(days=61))
    _record(organization, days_ago=60, now=now, run=mixed)
    recent_step = _record(organization, days_ago=10, now=now, run=mixed)
    messages_before = Message.objects.filter(organization=organization).count()

    record = retention_apply(now=now)

    assert set(Run.objects.filter(organization=organization).values_list("pk", flat=True)) == {mixed.pk}
    assert not Message.objects.filter(run_id=gone.pk).exists()
    assert list(Step.objects.filter(organization=organization).values_list("pk", flat=True)) == [recent_step.pk]
    assert record.runs_removed == 1
    assert record.steps_removed == record.metrics_removed == 3
    assert record.messages_removed == messages_before - Message.objects.filter(organization=organization).count()
    assert record.messages_removed == 4  # one per removed step, and the run's step-less one
