"""A real Celery worker over the real Redis broker, writing to the real database."""

import time
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.utils import timezone

from config.celery import app as celery_app
from steps.models import Step, StepProgression, StepStatus
from steps.tasks import fail_stale_steps
from tests.factories import StepFactory


@pytest.fixture
def celery_worker(redis_url, postgres, transactional_db):
    """A worker thread consuming from Redis; tasks are sent over the broker, not run eagerly."""
    saved = {k: celery_app.conf[k] for k in ("broker_url", "task_always_eager", "result_backend")}
    celery_app.conf.update(broker_url=redis_url, task_always_eager=False)
    try:
        with start_worker(
            celery_app, pool="solo", queues=["default", "runs", "ingest"], perform_ping_check=False, shutdown_timeout=10
        ) as worker:
            yield worker
    finally:
        celery_app.conf.update(saved)


def test_worker_over_redis_fails_a_step_left_pending_by_a_dead_worker(celery_worker):
    stale = StepFactory(created_at=timezone.now() - timedelta(hours=3), progression=StepProgression.STREAM_RECEIVED)
    fresh = StepFactory()

    fail_stale_steps.apply_async(kwargs={"older_than_seconds": 3600})

    deadline = time.monotonic() + 30
    while Step.objects.get(pk=stale.pk).status == StepStatus.PENDING and time.monotonic() < deadline:
        time.sleep(0.1)
    stale.refresh_from_db()
    assert stale.status == StepStatus.FAILED
    assert stale.error_type == "worker_lost"
    assert stale.progression == StepProgression.STREAM_RECEIVED
    assert Step.objects.get(pk=fresh.pk).status == StepStatus.PENDING
