"""Celery entry points of monitors: the periodic evaluation cycle and one notification delivery with retries."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from config.celery import Queue
from monitors.retention import alert_history_prune
from monitors.services import deliveries_requeue, delivery_attempt, monitors_evaluate


@shared_task(name="monitors.evaluate_monitors", queue=Queue.DEFAULT, acks_late=True, ignore_result=True)
def evaluate_monitors() -> dict:
    """One evaluation cycle (Celery beat, every STEPLENS_MONITOR_EVALUATE_SECONDS), then the deliveries whose task
    was lost are queued again (pending for twice the longest backoff)."""
    report = monitors_evaluate()
    deliveries_requeue(older_than=timedelta(seconds=2 * settings.STEPLENS_NOTIFY_RETRY_MAX_SECONDS + 60))
    return {"monitors": report.monitors, "queries": report.queries, "events": report.events,
            "seconds": round(report.seconds, 3)}  # fmt: skip


@shared_task(name="monitors.prune_alert_history", queue=Queue.DEFAULT, acks_late=True, ignore_result=True)
def prune_alert_history() -> dict:
    """Remove alert history older than STEPLENS_ALERT_RETENTION_DAYS (Celery beat, hourly by default)."""
    pruned = alert_history_prune()
    return {"events": pruned.events, "deliveries": pruned.deliveries, "attempts": pruned.attempts}


def backoff_seconds(attempt: int) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): doubling from the base, capped."""
    base = settings.STEPLENS_NOTIFY_RETRY_BASE_SECONDS
    return min(base * 2 ** (attempt - 1), settings.STEPLENS_NOTIFY_RETRY_MAX_SECONDS)


@shared_task(bind=True, name="monitors.deliver", queue=Queue.DEFAULT, acks_late=True, ignore_result=True,
             max_retries=None)  # fmt: skip
def deliver(self, *, delivery_id: int) -> None:
    """One attempt; on a retryable failure, the next one after a backoff, up to STEPLENS_NOTIFY_MAX_ATTEMPTS."""
    while True:
        outcome, attempts = delivery_attempt(
            delivery_id=delivery_id, max_attempts=settings.STEPLENS_NOTIFY_MAX_ATTEMPTS
        )
        if outcome is not None:
            return
        if not self.request.is_eager:
            raise self.retry(countdown=backoff_seconds(attempts), kwargs={"delivery_id": delivery_id})
        # Eager (the embedded mode, tests): no broker holds a countdown, and Celery's eager retry raises into the
        # caller; the next attempt runs at once (the attempts stay bounded by STEPLENS_NOTIFY_MAX_ATTEMPTS).
