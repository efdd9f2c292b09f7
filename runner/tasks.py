"""Celery entry points for agent runs: take a run id, call the loop, own retries and nothing else.

The task names keep their `agents.` prefix from before this module moved to the runner app: messages already queued
and the beat schedule (CELERY_BEAT_SCHEDULE) name the tasks by these strings.
"""

from celery import shared_task
from django.conf import settings

from agents.services import RunLeased
from config.celery import Queue
from runner.loop import run_execute
from runner.services import runs_recover_stale


@shared_task(
    bind=True,
    name="agents.run_agent",
    queue=Queue.RUNS,
    acks_late=True,
    reject_on_worker_lost=True,
    # The soft limit raises inside the loop, which ends the run as failed with its steps closed.
    soft_time_limit=settings.STEPLENS_RUN_SOFT_TIME_LIMIT,
    time_limit=settings.STEPLENS_RUN_SOFT_TIME_LIMIT + 60,
    # A run held by a live worker is tried again when that worker's lease would expire; the sweep is the backstop.
    max_retries=5,
)
def run_agent(self, run_id: str) -> str:
    """Execute or resume one run; a re-delivered run continues after its last finished step."""
    try:
        return run_execute(run_id=run_id).status
    except RunLeased as exc:
        raise self.retry(countdown=exc.retry_in, exc=exc) from exc


@shared_task(name="agents.recover_stale_runs", queue=Queue.DEFAULT, acks_late=True)
def recover_stale_runs() -> dict[str, int]:
    """Resume or fail runs whose worker stopped heartbeating, re-send runs whose task was lost (Celery beat)."""
    outcome = runs_recover_stale()
    return {"resumed": outcome.resumed, "failed": outcome.failed, "requeued": outcome.requeued}
