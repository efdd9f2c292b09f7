"""Deletion (DELETE /v1/steps, steps.deletion): rows go, rollups are subtracted and equal a rebuild, jobs resume."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import Count, Sum
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKeyScope
from accounts.services import api_key_create
from agents.models import Run
from steps import deletion, services
from steps import tasks as steps_tasks
from steps.models import (
    DeletionJob,
    DeletionStatus,
    ErrorRollupDay,
    ErrorRollupHour,
    Message,
    ProviderTrace,
    Step,
    StepMetrics,
    StepRollupDay,
    StepRollupHour,
    StepStatus,
    SubjectRollupDay,
    SubjectRollupHour,
)
from steps.rollups import step_rollups_rebuild
from steps.services import StepMetricsIn
from steps.values import Usage
from tests.factories import AgentFactory, MessageFactory, OrganizationFactory, ProviderTraceFactory

pytestmark = pytest.mark.django_db

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)
TABLES = (StepRollupHour, StepRollupDay, SubjectRollupHour, SubjectRollupDay, ErrorRollupHour, ErrorRollupDay)


def _record(organization, agent, *, i: int, run=None) -> Step:
    """One step through the real write path; users u-0..u-2, some failed, spread over three days."""
    step = services.step_start(
        organization=organization, agent=agent, run=run, provider_name="openai", model=f"m-{i % 2}",
        model_handle=f"openai/m-{i % 2}", created_at=DAY0 + timedelta(hours=3 * i, minutes=i),
        user_id=f"u-{i % 3}", conversation_id=f"c-{i % 4}",
    )  # fmt: skip
    metrics = StepMetricsIn(ttft_ns=(50 + 37 * i) * 1_000_000, llm_request_ns=(400 + 91 * i) * 1_000_000)
    if i % 5 == 2:
        step = services.step_fail(step=step, error_type="rate_limit_error", message="boom", metrics=metrics)
    else:
        step = services.step_finish(
            step=step, usage=Usage(prompt_tokens=100 + i, completion_tokens=10 + i), metrics=metrics
        )
    MessageFactory(step=step, organization=organization)
    ProviderTraceFactory(step=step, organization=organization)
    return step


@pytest.fixture
def world(organization):
    agent = AgentFactory(organization=organization)
    runs = [Run.objects.create(organization=organization, agent=agent, request_id=f"req-{n}") for n in range(3)]
    steps = [_record(organization, agent, i=i, run=runs[i % 3]) for i in range(24)]
    other = OrganizationFactory()
    other_steps = [_record(other, AgentFactory(organization=other), i=i) for i in range(6)]
    return {"runs": runs, "steps": steps, "other": other, "other_steps": other_steps}


def _rollup_rows(organization) -> dict:
    """Every row of the six rollup tables of `organization`, keyed by table, without ids."""
    out = {}
    for model in TABLES:
        rows = model.objects.filter(organization=organization).values()
        out[model.__name__] = sorted(
            (tuple(sorted((k, str(v)) for k, v in row.items() if k != "id")) for row in rows), key=str
        )
    return out


def _assert_rollups_equal_a_rebuild(organization) -> None:
    maintained = _rollup_rows(organization)
    step_rollups_rebuild(organization=organization)
    assert maintained == _rollup_rows(organization)


def _assert_usage_equals_the_steps(organization) -> None:
    ended = Step.objects.filter(organization=organization).exclude(status=StepStatus.PENDING)
    direct = ended.aggregate(n=Count("pk"), prompt=Sum("prompt_tokens"), cost=Sum("cost_usd"))
    rolled = StepRollupHour.objects.filter(organization=organization).aggregate(
        n=Sum("steps"), prompt=Sum("prompt_tokens"), cost=Sum("cost_usd")
    )
    assert (rolled["n"] or 0) == direct["n"]
    assert (rolled["prompt"] or 0) == (direct["prompt"] or 0)
    assert Decimal(rolled["cost"] or 0) == Decimal(direct["cost"] or 0)


def test_delete_by_user_id_leaves_no_step_of_that_user_and_rollups_equal_a_rebuild(
    api_client, organization, world, django_capture_on_commit_callbacks
):
    gone = [s for s in world["steps"] if s.user_id == "u-1"]
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.delete("/v1/steps?user_id=u-1")
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    assert response.json()["steps_total"] == len(gone)

    body = api_client.get(f"/v1/deletions/{job_id}").json()
    assert body["status"] == "succeeded"
    assert body["progress"] == 1.0
    assert (body["steps_deleted"], body["provider_traces_deleted"]) == (len(gone), len(gone))
    assert body["messages_deleted"] == len(gone)
    assert not Step.objects.filter(organization=organization, user_id="u-1").exists()
    ids = [s.pk for s in gone]
    assert not StepMetrics.objects.filter(step_id__in=ids).exists()
    assert not Message.objects.filter(step_id__in=ids).exists()
    assert not ProviderTrace.objects.filter(step_id__in=ids).exists()
    assert Step.objects.filter(organization=organization).count() == 24 - len(gone)
    assert Step.objects.filter(organization=world["other"]).count() == 6  # other organization untouched
    _assert_usage_equals_the_steps(organization)
    usage = api_client.get("/v1/usage", {"group_by": "user"}).json()["data"]
    assert {row["user_id"] for row in usage} == {"u-0", "u-2"}
    _assert_rollups_equal_a_rebuild(organization)
    _assert_rollups_equal_a_rebuild(world["other"])


def test_a_run_left_empty_is_deleted_and_deleting_twice_is_harmless(organization, world):
    run = world["runs"][0]
    job = deletion.deletion_create(organization=organization, params={"run_id": run.pk})
    job = deletion.deletion_run(job_id=job.pk, batch_size=3)
    assert job.status == DeletionStatus.SUCCEEDED
    assert job.runs_deleted == 1
    assert not Run.objects.filter(pk=run.pk).exists()
    assert Run.objects.filter(pk=world["runs"][1].pk).exists()
    again = deletion.deletion_run(job_id=job.pk)
    assert again.steps_deleted == job.steps_deleted
    second = deletion.deletion_run(
        job_id=deletion.deletion_create(organization=organization, params={"run_id": run.pk}).pk
    )
    assert (second.steps_total, second.steps_deleted, second.status) == (0, 0, DeletionStatus.SUCCEEDED)
    _assert_rollups_equal_a_rebuild(organization)


def test_a_job_resumes_after_a_crash_mid_way(organization, world, monkeypatch):
    job = deletion.deletion_create(organization=organization, params={"model": "m-0"})
    real = deletion._subtract_rollups
    calls = {"n": 0}

    def crash_on_third_batch(steps):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker killed")
        real(steps)

    monkeypatch.setattr(deletion, "_subtract_rollups", crash_on_third_batch)
    with pytest.raises(RuntimeError):
        deletion.deletion_run(job_id=job.pk, batch_size=2)
    half = DeletionJob.objects.get(pk=job.pk)
    assert (half.status, half.error) == (DeletionStatus.FAILED, "RuntimeError")
    assert half.steps_deleted == 4  # two whole batches; the crashed one rolled back entirely
    assert Step.objects.filter(organization=organization, model="m-0").count() == 12 - 4
    _assert_usage_equals_the_steps(organization)  # consistent mid-way too

    monkeypatch.setattr(deletion, "_subtract_rollups", real)
    done = deletion.deletion_run(job_id=job.pk, batch_size=2)
    assert done.status == DeletionStatus.SUCCEEDED
    assert (done.steps_deleted, done.error) == (12, "")
    assert not Step.objects.filter(organization=organization, model="m-0").exists()
    _assert_usage_equals_the_steps(organization)
    _assert_rollups_equal_a_rebuild(organization)


def test_no_filter_is_a_400_and_nothing_is_deleted(api_client, organization, world):
    for url in ("/v1/steps", "/v1/steps?user_id=", "/v1/steps?tags_match=all"):
        response = api_client.delete(url)
        assert response.status_code == 400
        assert "filter" in response.json()["fields"]
    response = api_client.delete("/v1/steps?status=nope")
    assert response.status_code == 400
    assert "status" in response.json()["fields"]
    response = api_client.delete("/v1/steps?limit=5")
    assert response.status_code == 400
    assert Step.objects.filter(organization=organization).count() == 24
    assert not DeletionJob.objects.exists()


def test_another_organizations_steps_and_jobs_are_out_of_reach(
    api_client, organization, world, django_capture_on_commit_callbacks
):
    other_step = world["other_steps"][0]
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.delete(f"/v1/steps?request_id={other_step.request_id or 'none'}&user_id=u-0")
    assert response.status_code == 202
    assert Step.objects.filter(organization=world["other"]).count() == 6
    foreign = deletion.deletion_create(organization=world["other"], params={"user_id": "u-0"})
    assert api_client.get(f"/v1/deletions/{foreign.pk}").status_code == 404


def test_delete_needs_a_full_key(organization, world):
    _, read_key = api_key_create(organization=organization, scope=ApiKeyScope.READ)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {read_key}")
    assert client.delete("/v1/steps?user_id=u-1").status_code == 403
    assert Step.objects.filter(organization=organization, user_id="u-1").exists()


def _age(job_id: str, seconds: float) -> None:
    DeletionJob.objects.filter(pk=job_id).update(updated_at=timezone.now() - timedelta(seconds=seconds))


def test_the_sweep_resumes_a_failed_job_and_a_lost_one_until_they_finish(organization, world, monkeypatch, settings):
    """A batch that failed (say, on a database outage) and a job whose task the broker lost are both queued again by
    the beat sweep once nothing has happened for STEPLENS_DELETION_RESUME_SECONDS, and finish."""
    settings.STEPLENS_DELETION_RESUME_SECONDS = 300
    failed = deletion.deletion_create(organization=organization, params={"model": "m-0"})
    real = deletion._subtract_rollups

    def outage(steps):
        raise RuntimeError("database went away")

    monkeypatch.setattr(deletion, "_subtract_rollups", outage)
    with pytest.raises(RuntimeError):
        deletion.deletion_run(job_id=failed.pk, batch_size=2)
    monkeypatch.setattr(deletion, "_subtract_rollups", real)
    lost = deletion.deletion_create(organization=organization, params={"model": "m-1"})  # never started

    queued = []
    monkeypatch.setattr(steps_tasks.run_deletion, "delay", lambda job_id: queued.append(job_id))
    assert steps_tasks.resume_deletions.apply().get() == 0  # both too recent: a running job is left alone
    _age(failed.pk, 301)
    _age(lost.pk, 301)
    assert steps_tasks.resume_deletions.apply().get() == 2
    assert sorted(queued) == sorted([failed.pk, lost.pk])
    for job_id in queued:
        steps_tasks.run_deletion.apply(args=[job_id]).get()

    for job_id, model, attempts in ((failed.pk, "m-0", 2), (lost.pk, "m-1", 1)):
        job = DeletionJob.objects.get(pk=job_id)
        assert (job.status, job.error, job.attempts) == (DeletionStatus.SUCCEEDED, "", attempts)
        assert not Step.objects.filter(organization=organization, model=model).exists()
    _assert_usage_equals_the_steps(organization)
    _assert_rollups_equal_a_rebuild(organization)
    _age(failed.pk, 3600)
    assert steps_tasks.resume_deletions.apply().get() == 0  # finished jobs are never queued again
    assert settings.CELERY_BEAT_SCHEDULE["resume-deletions"]["task"] == steps_tasks.resume_deletions.name


def test_a_job_that_keeps_failing_stops_being_resumed_at_the_attempt_limit(organization, world, monkeypatch, settings):
    settings.STEPLENS_DELETION_MAX_ATTEMPTS = 3
    job = deletion.deletion_create(organization=organization, params={"model": "m-0"})

    def broken(steps):
        raise RuntimeError("always")

    monkeypatch.setattr(deletion, "_subtract_rollups", broken)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            deletion.deletion_run(job_id=job.pk, batch_size=2)
        _age(job.pk, 3600)
    stuck = DeletionJob.objects.get(pk=job.pk)
    assert (stuck.status, stuck.attempts, stuck.error) == (DeletionStatus.FAILED, 3, "RuntimeError")
    assert deletion.deletions_to_resume(now=timezone.now()) == []
    assert Step.objects.filter(organization=organization, model="m-0").count() == 12  # nothing half done
