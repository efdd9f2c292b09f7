"""Runs executed by real Celery workers over the real Redis broker, landing in PostgreSQL.

The second test kills a worker process in the middle of a step and checks the re-delivered run.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection

from agents.models import Run, RunStatus, StopReason
from config.celery import app as celery_app
from runner.streams import RedisRunStream, set_run_stream
from steps.models import Step, StepProgression, StepStatus

ROOT = Path(__file__).resolve().parents[2]
USER = {"messages": [{"role": "user", "content": "Hello worker"}]}


@pytest.fixture
def broker(redis_url, postgres, transactional_db, settings):
    """Point the app, the settings and the run streams at Redis, with an empty queue."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    saved = {k: celery_app.conf[k] for k in ("broker_url", "task_always_eager", "result_backend")}
    celery_app.conf.update(broker_url=redis_url, task_always_eager=False, result_backend=None)
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.REDIS_URL = redis_url
    set_run_stream(RedisRunStream(redis_url))
    try:
        yield redis_url
    finally:
        set_run_stream(None)
        celery_app.conf.update(saved)


def test_runs_enqueued_through_the_api_are_executed_by_a_worker(broker, api_client, make_agent):
    agent = make_agent("scripted/weather-openai", tools=["get_weather"])
    with start_worker(celery_app, pool="threads", concurrency=2, queues=["runs"], perform_ping_check=False):
        response = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json")
        accepted = api_client.post(f"/v1/agents/{agent.pk}/messages/async", USER, format="json")
        deadline = time.monotonic() + 30
        while Run.objects.get(pk=accepted.json()["id"]).status != RunStatus.COMPLETED:
            assert time.monotonic() < deadline, "the background run did not finish"
            time.sleep(0.1)

    assert response.status_code == 200, response.content
    assert response.json()["stop_reason"] == "end_turn"
    for run_id in (response.json()["run_id"], accepted.json()["id"]):
        steps = Step.objects.filter(run_id=run_id)
        assert steps.count() == 2
        assert set(steps.values_list("status", flat=True)) == {StepStatus.SUCCESS}
        assert set(steps.values_list("provider_name", flat=True)) == {"openai"}


def _worker_process(redis_url: str) -> subprocess.Popen:
    db = connection.settings_dict
    database_url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "REDIS_URL": redis_url,
        "OTEL_SDK_DISABLED": "true",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "prefork", "-c", "1", "-Q", "runs",
         "--without-mingle", "--without-gossip", "-l", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killing_a_worker_mid_step_leaves_no_pending_step_and_the_run_finishes(broker, api_client, make_agent):
    # slow-echo streams its answer in 50 ms chunks: long enough to kill the worker while it streams.
    agent = make_agent("scripted/slow-echo")
    worker = _worker_process(broker)
    try:
        long_message = {"messages": [{"role": "user", "content": "please echo this " * 40}]}
        run_id = api_client.post(f"/v1/agents/{agent.pk}/messages/async", long_message, format="json").json()["id"]

        deadline = time.monotonic() + 60
        while not Step.objects.filter(run_id=run_id, progression=StepProgression.STREAM_RECEIVED).exists():
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the worker never started streaming"
            time.sleep(0.05)
        children = _children(worker.pid)
        assert children, "no pool process to kill"
        os.kill(children[0], signal.SIGKILL)  # the process running the task dies mid-stream

        deadline = time.monotonic() + 60
        while Run.objects.get(pk=run_id).status not in {RunStatus.COMPLETED, RunStatus.FAILED}:
            assert time.monotonic() < deadline, "the re-delivered run did not finish"
            time.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    run = Run.objects.get(pk=run_id)
    assert (run.status, run.stop_reason) == (RunStatus.COMPLETED, StopReason.END_TURN)
    steps = list(Step.objects.filter(run_id=run_id).order_by("created_at"))
    assert not [s for s in steps if s.status == StepStatus.PENDING]
    lost, finished = steps
    assert (lost.status, lost.error_type, lost.progression) == (
        StepStatus.FAILED, "worker_lost", StepProgression.STREAM_RECEIVED,
    )  # fmt: skip
    assert (finished.status, finished.step_number) == (StepStatus.SUCCESS, 1)
