"""Celery entry points for agent runs: take a run id, call the loop, own retries and nothing else."""

from celery import shared_task
from django.conf import settings

from agents.loop import run_execute
from config.celery import Queue


@shared_task(
    name="agents.run_agent",
    queue=Queue.RUNS,
    acks_late=True,
    reject_on_worker_lost=True,
    # The soft limit raises inside the loop, which ends the run as failed with its steps closed.
    soft_time_limit=settings.STEPLENS_RUN_SOFT_TIME_LIMIT,
    time_limit=settings.STEPLENS_RUN_SOFT_TIME_LIMIT + 60,
)
def run_agent(run_id: str) -> str:
    """Execute or resume one run; a re-delivered run continues after its last finished step."""
    return run_execute(run_id=run_id).status
