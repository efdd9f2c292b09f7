"""Celery entry points for steps: thin wrappers around one service each."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from config.celery import Queue
from steps.deletion import deletion_run, deletions_to_resume
from steps.partitions import partitions_ensure_ahead
from steps.retention import retention_apply
from steps.services import steps_fail_stale


@shared_task(name="steps.fail_stale_steps", queue=Queue.DEFAULT, acks_late=True)
def fail_stale_steps(*, older_than_seconds: int | None = None) -> int:
    """Fail steps left pending by a dead worker (scheduled by Celery beat, safe to run any time)."""
    seconds = older_than_seconds if older_than_seconds is not None else settings.STEPLENS_STALE_STEP_SECONDS
    return steps_fail_stale(older_than=timedelta(seconds=seconds))


@shared_task(name="steps.apply_retention", queue=Queue.DEFAULT, acks_late=True)
def apply_retention() -> int:
    """Remove raw records older than their retention (scheduled by Celery beat); returns the steps removed.

    Safe to run twice at once or after a crash: each batch deletes only rows still there."""
    return retention_apply().steps_removed


@shared_task(name="steps.run_deletion", queue=Queue.DEFAULT, acks_late=True)
def run_deletion(job_id: str) -> int:
    """Run (or resume, when the broker redelivers it after a worker died) a deletion job; returns steps deleted."""
    return deletion_run(job_id=job_id).steps_deleted


@shared_task(name="steps.resume_deletions", queue=Queue.DEFAULT, acks_late=True)
def resume_deletions() -> int:
    """Queue again the deletion jobs that stopped without finishing (Celery beat); returns how many were queued.

    Two runs of one job at once are harmless (each batch locks the job row), so a slow job queued again is safe."""
    job_ids = deletions_to_resume(now=timezone.now())
    for job_id in job_ids:
        run_deletion.delay(job_id)
    return len(job_ids)


@shared_task(name="steps.ensure_partitions", queue=Queue.DEFAULT, acks_late=True)
def ensure_partitions() -> list[str]:
    """Create the partitions of the next STEPLENS_PARTITION_AHEAD intervals (Celery beat; PostgreSQL, else a no-op).

    Idempotent; a lock it cannot have within STEPLENS_PARTITION_LOCK_TIMEOUT_MS fails this run, the next one
    creates them (they are made intervals ahead, so a missed run costs nothing)."""
    return partitions_ensure_ahead(now=timezone.now(), lock_timeout_ms=settings.STEPLENS_PARTITION_LOCK_TIMEOUT_MS)
