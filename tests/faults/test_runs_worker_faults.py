"""Workers killed under running runs: every run ends in a final state within the documented bound, no step stays
pending, and no (run, step number, attempt) is recorded twice.

Real processes on loopback: a Redis of the test's own (restarted in the lost-task case), prefork Celery workers
against the test's PostgreSQL database. The bounds are small here (STEPLENS_STALE_RUN_SECONDS=6, a 1 s heartbeat);
the test process plays Celery beat by calling the sweeps every second.
"""

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from agents.models import Run
from agents.services import agent_create
from runner.services import run_enqueue, run_start, runs_recover_stale
from steps.models import Step, StepProgression
from steps.services import steps_fail_stale
from tests.faults.runs_support import (
    OwnRabbit,
    OwnRedis,
    children,
    count,
    database_url,
    kill_tree,
    start_runs_worker,
    stop_services,
    use_broker,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.worker]

STALE_SECONDS = 6
BOUNDS = {
    "STEPLENS_STALE_RUN_SECONDS": str(STALE_SECONDS),
    "STEPLENS_RUN_HEARTBEAT_SECONDS": "1",
    "STEPLENS_LLM_RETRY_BASE_SECONDS": "0.1",
}
# Every run must be final this long after the fault: the bound plus time to resume and stream the answers again.
DEADLINE_SECONDS = STALE_SECONDS + 120


@pytest.fixture
def cluster(postgres, transactional_db, settings, monkeypatch, tmp_path) -> Iterator[dict]:
    """Our own Redis as broker and stream, the test process sending tasks to it, and the workers it starts."""
    redis = OwnRedis()
    redis.start()
    with use_broker(redis.url, monkeypatch):
        settings.CELERY_TASK_ALWAYS_EAGER = False
        settings.STEPLENS_STALE_RUN_SECONDS = STALE_SECONDS
        env = worker_env(database_url(), broker_url=redis.url, redis_url=redis.url, **BOUNDS)
        services: list = []
        try:
            yield {"redis": redis, "env": env, "logs": tmp_path, "services": services}
        finally:
            stop_services(services)
            redis.stop()


@pytest.fixture
def rabbit_cluster(postgres, transactional_db, settings, monkeypatch, tmp_path) -> Iterator[dict]:
    """The production default: a RabbitMQ node of our own as broker, our own Redis for the streams."""
    rabbit, redis = OwnRabbit(), OwnRedis()
    redis.start()
    services: list = []
    try:
        rabbit.start()
        with use_broker(rabbit.url, monkeypatch):
            settings.CELERY_TASK_ALWAYS_EAGER = False
            settings.STEPLENS_STALE_RUN_SECONDS = STALE_SECONDS
            env = worker_env(database_url(), broker_url=rabbit.url, redis_url=redis.url, **BOUNDS)
            yield {"env": env, "logs": tmp_path, "services": services}
    finally:
        stop_services(services)
        rabbit.destroy()
        redis.stop()


def _start_worker(cluster: dict, name: str, *, concurrency: int = 2):
    worker = start_runs_worker(cluster["env"], cluster["logs"], name=name, concurrency=concurrency)
    cluster["services"].append(worker)
    return worker


def _slow_runs(organization, n: int) -> list[str]:
    agent = agent_create(organization=organization, name="slow", model_handle="scripted/slow-echo")
    text = "please echo this answer slowly " * 30  # about 45 chunks of 50 ms: seconds of streaming
    run_ids = []
    for index in range(n):
        run = run_start(
            organization=organization, agent=agent, request_id=f"fault-{index}",
            messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
        )  # fmt: skip
        run_enqueue(run=run)
        run_ids.append(run.pk)
    return run_ids


def _wait_streaming(run_ids: list[str], worker) -> None:
    streaming = Step.objects.filter(run_id__in=run_ids, progression=StepProgression.STREAM_RECEIVED, status="pending")
    wait_until(lambda: streaming.exists() or worker.process.poll() is not None, timeout=120, what="a run streaming")
    assert worker.process.poll() is None, worker.tail()


def _sweep_until_final(run_ids: list[str]) -> None:
    """What Celery beat does in production, every second, until every run is final (or the deadline fails)."""
    unfinished = Run.objects.filter(pk__in=run_ids).exclude(status__in=["completed", "failed", "cancelled"])

    def settled() -> bool:
        runs_recover_stale()
        steps_fail_stale(older_than=timedelta(hours=1))
        return not unfinished.exists()

    wait_until(settled, timeout=DEADLINE_SECONDS, interval=1, what="every run final")


def _assert_nothing_unfinished(run_ids: list[str]) -> None:
    counts = count(run_ids)
    assert (counts.runs_unfinished, counts.steps_pending, counts.duplicate_attempts) == (0, 0, 0), counts
    assert counts.run_states == {"completed": len(run_ids)}, counts
    assert Step.objects.filter(run_id__in=run_ids, error_type="worker_lost").exists()


def test_a_worker_tree_killed_mid_run_leaves_every_run_completed_by_a_new_worker(cluster, organization):
    first = _start_worker(cluster, "first")
    run_ids = _slow_runs(organization, 3)
    _wait_streaming(run_ids, first)

    kill_tree(first)  # the worker and its pool children die at once; their tasks stay unacknowledged
    _start_worker(cluster, "second")
    _sweep_until_final(run_ids)

    _assert_nothing_unfinished(run_ids)


def test_on_rabbitmq_a_killed_worker_tree_returns_its_tasks_at_once_and_every_run_completes(
    rabbit_cluster, organization
):
    first = _start_worker(rabbit_cluster, "first")
    run_ids = _slow_runs(organization, 3)
    _wait_streaming(run_ids, first)

    kill_tree(first)  # the broker sees the connection close and requeues the unacknowledged tasks
    _start_worker(rabbit_cluster, "second")
    _sweep_until_final(run_ids)

    _assert_nothing_unfinished(run_ids)


def test_a_killed_prefork_child_is_replaced_and_its_run_completes(cluster, organization):
    worker = _start_worker(cluster, "parent", concurrency=1)
    run_ids = _slow_runs(organization, 1)
    _wait_streaming(run_ids, worker)
    (child,) = children(worker.process.pid)

    os.kill(child, signal.SIGKILL)
    _sweep_until_final(run_ids)

    assert worker.process.poll() is None, "the worker's parent process must survive its child"
    _assert_nothing_unfinished(run_ids)
    assert child not in children(worker.process.pid)


def test_a_task_lost_with_the_broker_still_ends_every_run(cluster, organization):
    first = _start_worker(cluster, "first", concurrency=1)
    run_ids = _slow_runs(organization, 3)  # one streams, two wait in the queue
    _wait_streaming(run_ids, first)

    kill_tree(first)
    cluster["redis"].restart(down_for=1)  # nothing on disk: the queue and the unacknowledged tasks are gone
    time.sleep(0.5)
    _start_worker(cluster, "second")
    _sweep_until_final(run_ids)

    _assert_nothing_unfinished(run_ids)
