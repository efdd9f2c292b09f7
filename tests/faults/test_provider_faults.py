"""Each provider fault of the built-in scripted scenarios, run through a real Celery worker, ends the run and every
step in a truthful final state: a retried fault leaves the failed attempt recorded with its error and the next
attempt's success; a fault that cannot be retried fails the run with its error; nothing stays pending.

Real processes on loopback: a Redis of the test's own as broker and stream, one prefork worker for the module.
"""

from collections.abc import Iterator

import pytest

from agents.models import Run, RunStatus
from agents.services import agent_create
from runner.services import run_enqueue, run_start
from steps.models import Step, StepStatus
from tests.faults.runs_support import (
    OwnRedis,
    count,
    database_url,
    start_runs_worker,
    stop_services,
    use_broker,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.worker]

# scenario -> (run status, run stop reason, the steps' (status, error_type) in attempt order)
FAULTS = {
    "rate-limited-openai": ("completed", "end_turn", [("failed", "rate_limit"), ("success", None)]),
    "overloaded-anthropic": ("completed", "end_turn", [("failed", "overloaded"), ("success", None)]),
    "server-error-google": ("completed", "end_turn", [("failed", "provider_error"), ("success", None)]),
    "context-overflow-openai": ("failed", "llm_api_error", [("failed", "context_window_exceeded")]),
    "truncated-anthropic": ("failed", "llm_api_error", [("failed", "malformed_stream")] * 3),
    "incomplete-responses": ("completed", "max_tokens_exceeded", [("success", None)]),
}


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[OwnRedis]:
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        from tests.conftest import require_service

        require_service("PostgreSQL", "the worker is another process: set DATABASE_URL=postgres://...")
    redis = OwnRedis()
    redis.start()
    with django_db_blocker.unblock():
        env = worker_env(database_url(), broker_url=redis.url, redis_url=redis.url,
                         STEPLENS_LLM_RETRY_BASE_SECONDS="0.1", STEPLENS_LLM_RETRY_MAX_SECONDS="1")  # fmt: skip
    service = start_runs_worker(env, tmp_path_factory.mktemp("provider-faults"), name="providers")
    try:
        yield redis
    finally:
        stop_services([service])
        redis.stop()


@pytest.mark.parametrize("scenario", sorted(FAULTS))
def test_a_provider_fault_ends_the_run_and_its_steps_truthfully(
    scenario, worker, postgres, transactional_db, settings, monkeypatch, organization
):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    with use_broker(worker.url, monkeypatch):
        agent = agent_create(organization=organization, name=scenario, model_handle=f"scripted/{scenario}")
        run = run_start(
            organization=organization, agent=agent, request_id=f"fault-{scenario}",
            messages=[{"role": "user", "content": [{"type": "text", "text": "Tell me something."}]}],
        )  # fmt: skip
        run_enqueue(run=run)
        finished = Run.objects.filter(pk=run.pk, status__in=["completed", "failed", "cancelled"])
        wait_until(finished.exists, timeout=120, what=f"the {scenario} run to end")

    run.refresh_from_db()
    status, stop_reason, steps = FAULTS[scenario]
    recorded = list(Step.objects.filter(run=run).order_by("step_number", "attempt"))
    assert (run.status, run.stop_reason) == (status, stop_reason)
    assert [(s.status, s.error_type) for s in recorded] == steps
    assert [(s.step_number, s.attempt) for s in recorded] == [(1, n) for n in range(1, len(steps) + 1)]
    counts = count([run.pk])
    assert (counts.runs_unfinished, counts.steps_pending, counts.duplicate_attempts) == (0, 0, 0)
    for step in recorded:
        assert step.completed_at is not None
        if step.status == StepStatus.FAILED:
            assert step.error_data and step.error_data.get("message"), step.error_data
    if run.status == RunStatus.FAILED:
        assert run.error is not None and run.error["type"] == steps[-1][1]
        assert recorded[-1].stop_reason == stop_reason
