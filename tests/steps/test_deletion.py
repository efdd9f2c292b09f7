"""Deletion (DELETE /v1/steps, steps.deletion): rows go, rollups are subtracted and equal a rebuild, jobs resume."""

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKeyScope
from accounts.services import api_key_create
from agents.models import Run
from steps import deletion, rollups, services
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
from steps.partitions import partition_floor, partition_interval, partitions_ensure
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


# --- the errors rollups refreshed per key, rows deleted partition by partition ----------------------------------


def _step(organization, agent, *, step_id: str, user_id: str, when: datetime, error: str | None = None, run=None):
    """One ended step through the real write path, with its metrics, a message and a provider trace."""
    step = services.step_start(
        organization=organization, step_id=step_id, agent=agent, run=run, provider_name="openai", model="m-0",
        model_handle="openai/m-0", created_at=when, user_id=user_id, conversation_id=f"c-{user_id}",
    )  # fmt: skip
    metrics = StepMetricsIn(ttft_ns=90_000_000, llm_request_ns=700_000_000)
    if error:
        step = services.step_fail(step=step, error_type=error, message="boom", metrics=metrics)
    else:
        step = services.step_finish(step=step, usage=Usage(prompt_tokens=120, completion_tokens=12), metrics=metrics)
    MessageFactory(step=step, organization=organization)
    ProviderTraceFactory(step=step, organization=organization)
    return step


def _error_row(model, organization, bucket: datetime, error_type: str = "timeout"):
    return model.objects.filter(organization=organization, bucket=bucket, error_type=error_type).first()


@pytest.mark.parametrize(("batch_size", "keys_per_statement"), [(3, 100), (500, 1)])
def test_errors_rollups_are_refreshed_per_hour_and_key_and_equal_a_rebuild(
    organization, monkeypatch, batch_size, keys_per_statement
):
    """The deleted errors were the first seen, last seen and example of their hour; one hour's only error goes with
    its row; the day keeps the errors of its other hours; another error type in the same hour is left as it was.
    In batches of 3 steps, and in one batch whose keys are refreshed one statement each."""
    monkeypatch.setattr(rollups, "_REFRESH_CHUNK", keys_per_statement)
    agent = AgentFactory(organization=organization)
    h0, h1, h2 = DAY0 + timedelta(hours=10), DAY0 + timedelta(hours=13), DAY0 + timedelta(hours=15)
    day1 = DAY0 + timedelta(days=1)
    _step(organization, agent, step_id="step-k-gone-1", user_id="gone", when=h0 + timedelta(minutes=5), error="timeout")
    _step(organization, agent, step_id="step-k-stay", user_id="stay", when=h0 + timedelta(minutes=20), error="timeout")
    _step(
        organization, agent, step_id="step-z-gone-2", user_id="gone", when=h0 + timedelta(minutes=50), error="timeout"
    )
    _step(organization, agent, step_id="step-m-stay", user_id="stay", when=h0 + timedelta(minutes=30), error="rate")
    _step(organization, agent, step_id="step-k-gone-3", user_id="gone", when=h1 + timedelta(minutes=1), error="timeout")
    _step(organization, agent, step_id="step-a-stay", user_id="stay", when=h2 + timedelta(minutes=9), error="timeout")
    _step(organization, agent, step_id="step-y-gone-4", user_id="gone", when=day1 + timedelta(hours=2), error="timeout")
    for i in range(4):
        _step(organization, agent, step_id=f"step-ok-{i}", user_id="gone", when=h0 + timedelta(minutes=i))
        _step(organization, agent, step_id=f"step-ok-stay-{i}", user_id="stay", when=h1 + timedelta(minutes=i))
    before = _error_row(ErrorRollupDay, organization, DAY0)
    assert (before.count, before.example_step_id) == (5, "step-z-gone-2")
    rate_before = (
        _error_row(ErrorRollupHour, organization, h0, "rate"),
        _error_row(ErrorRollupDay, organization, DAY0, "rate"),
    )

    job = deletion.deletion_run(
        job_id=deletion.deletion_create(organization=organization, params={"user_id": "gone"}).pk,
        batch_size=batch_size,
    )
    assert (job.status, job.steps_deleted) == (DeletionStatus.SUCCEEDED, 8)

    hour = _error_row(ErrorRollupHour, organization, h0)
    stay_at = h0 + timedelta(minutes=20)
    assert (hour.count, hour.first_seen, hour.last_seen, hour.example_step_id) == (1, stay_at, stay_at, "step-k-stay")
    assert _error_row(ErrorRollupHour, organization, h1) is None  # its only error was deleted
    assert _error_row(ErrorRollupHour, organization, h2).count == 1
    day = _error_row(ErrorRollupDay, organization, DAY0)
    assert (day.count, day.first_seen, day.last_seen, day.example_step_id) == (
        2, stay_at, h2 + timedelta(minutes=9), "step-k-stay"
    )  # fmt: skip
    assert _error_row(ErrorRollupDay, organization, day1) is None
    assert not ErrorRollupHour.objects.filter(organization=organization, bucket__gte=day1).exists()
    rate_after = (
        _error_row(ErrorRollupHour, organization, h0, "rate"),
        _error_row(ErrorRollupDay, organization, DAY0, "rate"),
    )
    assert [(r.pk, r.count, r.example_step_id) for r in rate_after] == [
        (r.pk, r.count, r.example_step_id) for r in rate_before
    ]  # another key of the same hour and day: not rewritten
    _assert_usage_equals_the_steps(organization)
    _assert_rollups_equal_a_rebuild(organization)


def _explained_deletes(sql_list: list[str]) -> dict[str, set[str]]:
    """PostgreSQL: per DELETE of the steps or their children, the partitions its plan touches (pruned ones absent)."""
    tables = ("steps_step", "steps_stepmetrics", "steps_message", "traces_providertrace")
    out = {}
    for sql in sql_list:
        if not sql.startswith("DELETE FROM") or not any(f'"{t}"' in sql.split(" WHERE ")[0] for t in tables):
            continue
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
            raw = cursor.fetchone()[0]
        plan = json.dumps(raw if not isinstance(raw, str) else json.loads(raw))
        out[sql] = {name for name in re.findall(r'"Relation Name": "([^"]+)"', plan) if name != sql.split('"')[1]}
    return out


def test_steps_over_several_partitions_go_with_their_children_and_each_delete_touches_one_partition(organization):
    """A user's steps in three weekly partitions and one far older (the DEFAULT partition on PostgreSQL), each with
    metrics, a message and a provider trace; batches that straddle partitions. The counts are exact, nothing of the
    user is left, the other user keeps everything, and on PostgreSQL each DELETE's plan touches one partition."""
    week0 = partition_floor(DAY0)
    partitions_ensure(week0, week0 + 3 * partition_interval())
    agent = AgentFactory(organization=organization)
    times = [week0 + timedelta(days=7 * w, hours=h) for w in range(3) for h in (1, 30, 100)]
    times.append(datetime(2019, 6, 3, 12, tzinfo=UTC))  # before any partition: DEFAULT
    gone = [_step(organization, agent, step_id=f"step-g{i:02d}", user_id="gone", when=t) for i, t in enumerate(times)]
    stay = [_step(organization, agent, step_id=f"step-s{i:02d}", user_id="stay", when=t) for i, t in enumerate(times)]
    gone_ids = [s.pk for s in gone]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute('SELECT DISTINCT tableoid::regclass::text FROM "steps_step" WHERE id = ANY(%s)', [gone_ids])
            assert len(cursor.fetchall()) == 4

    job = deletion.deletion_create(organization=organization, params={"user_id": "gone"})
    with CaptureQueriesContext(connection) as queries:
        job = deletion.deletion_run(job_id=job.pk, batch_size=4)
    assert (job.status, job.steps_deleted, job.provider_traces_deleted) == (DeletionStatus.SUCCEEDED, 10, 10)
    assert job.messages_deleted == 10
    for model in (StepMetrics, Message, ProviderTrace):
        assert not model.objects.filter(step_id__in=gone_ids).exists()
        assert model.objects.filter(step_id__in=[s.pk for s in stay]).count() == 10
    assert not Step.objects.filter(pk__in=gone_ids).exists()
    assert Step.objects.filter(organization=organization, user_id="stay").count() == 10
    _assert_rollups_equal_a_rebuild(organization)

    if connection.vendor == "postgresql":
        explained = _explained_deletes([q["sql"] for q in queries])
        for sql, touched in explained.items():
            assert len(touched) == 1, f"{sorted(touched)} for {sql}"
        assert len(set().union(*explained.values())) == 4 * 4  # four tables, four partitions each


def test_a_run_with_a_step_left_in_another_partition_stays_until_its_last_step_goes(organization):
    """Runs are created now, their (ingested) steps long before: nothing bounds where a run's steps are. The run
    stays while any step is left, then goes with its messages of no step, counted."""
    week0 = partition_floor(DAY0)
    partitions_ensure(week0, week0 + 3 * partition_interval())
    agent = AgentFactory(organization=organization)
    run = Run.objects.create(organization=organization, agent=agent, request_id="req-otlp")
    _step(organization, agent, step_id="step-r1", user_id="gone", when=week0 + timedelta(hours=5), run=run)
    _step(organization, agent, step_id="step-r2", user_id="stay", when=week0 + timedelta(days=15), run=run)
    MessageFactory(step=None, run=run, organization=organization, step_created_at=week0 + timedelta(hours=4))
    assert run.created_at > Step.objects.get(pk="step-r2").created_at

    first = deletion.deletion_run(
        job_id=deletion.deletion_create(organization=organization, params={"user_id": "gone"}).pk
    )
    assert (first.steps_deleted, first.messages_deleted, first.runs_deleted) == (1, 1, 0)
    assert Run.objects.filter(pk=run.pk).exists()
    assert Message.objects.filter(run=run, step__isnull=True).count() == 1

    second = deletion.deletion_run(
        job_id=deletion.deletion_create(organization=organization, params={"user_id": "stay"}).pk
    )
    assert (second.steps_deleted, second.messages_deleted, second.runs_deleted) == (1, 2, 1)
    assert not Run.objects.filter(pk=run.pk).exists()
    assert not Message.objects.filter(run_id=run.pk).exists()
    _assert_rollups_equal_a_rebuild(organization)


def test_the_deleted_children_are_every_model_that_references_a_step_or_a_run():
    """Rows are deleted directly, without Django's collector: a new foreign key to Step or Run must be handled here
    (its on_delete rule applied), or this fails."""
    assert {r.related_model for r in Step._meta.related_objects} == set(deletion._CHILDREN)
    assert all(r.on_delete.__name__ == "CASCADE" for r in Step._meta.related_objects)
    assert {r.related_model for r in Run._meta.related_objects} == {Step, Message}
