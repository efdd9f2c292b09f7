"""Celery entry points for OTLP ingest: take a batch id, call one service, own retries and nothing else."""

from celery import shared_task
from django.db import IntegrityError, InterfaceError, OperationalError

from config.celery import Queue
from traces.services import trace_batches_process, trace_batches_sweep


@shared_task(
    name="traces.process_ingest_batches",
    queue=Queue.INGEST,
    acks_late=True,
    reject_on_worker_lost=True,
    # Database trouble (connection, deadlock, a lost insert race): the batches went back to queued (or go back as
    # soon as the database answers); try again after 1, 2, 4, 8, then every 10 s, for about 5 minutes: an outage
    # costs at most 10 s of delay once it is over. Past that, the sweep re-sends tasks for what still waits.
    autoretry_for=(OperationalError, InterfaceError, IntegrityError),
    max_retries=30,
    retry_backoff=1,
    retry_backoff_max=10,
    retry_jitter=False,
)
def process_ingest_batches(*, batch_id: int | None = None) -> int:
    """Map staged OTLP batches, `batch_id` first plus others waiting; returns how many were claimed."""
    return trace_batches_process(batch_id=batch_id)


@shared_task(name="traces.sweep_ingest_batches", queue=Queue.INGEST, acks_late=True)
def sweep_ingest_batches() -> dict[str, int]:
    """Re-queue batches lost with their task or worker, drop old finished ones (Celery beat, safe any time)."""
    return trace_batches_sweep()
