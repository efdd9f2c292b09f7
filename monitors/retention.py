"""Retention of the alert history: alert events, their deliveries and the deliveries' attempts older than
STEPLENS_ALERT_RETENTION_DAYS are removed in short batches (Celery beat, `monitors.prune_alert_history`).

What is always kept: a monitor's current state (the Monitor row, its GroupAlert rows and its sparkline `history`,
which the evaluation already caps at HISTORY_LENGTH values), its latest alert event whatever its age (the event
that explains the current state), and anything still being delivered (a pending delivery and its event). Test
notifications (deliveries without an event) age out the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from monitors.models import AlertEvent, Delivery, DeliveryAttempt, DeliveryStatus


@dataclass(slots=True)
class AlertHistoryPruned:
    """What one pass removed, and the cutoff it used (None: retention is off, nothing was looked at)."""

    cutoff: datetime | None
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    batches: int = 0


def alert_history_prune(
    *, now: datetime | None = None, days: int | None = None, batch_size: int | None = None
) -> AlertHistoryPruned:
    """Remove alert events created before now - `days` (default STEPLENS_ALERT_RETENTION_DAYS; None: keep
    forever), with their deliveries and attempts, and test deliveries as old; at most `batch_size` (default
    STEPLENS_RETENTION_BATCH_SIZE) events or deliveries per transaction. Keeps each monitor's latest event and
    every event with a delivery still pending. Safe to run twice at once: a batch deletes only rows still there."""
    days = settings.STEPLENS_ALERT_RETENTION_DAYS if days is None else days
    if not days:
        return AlertHistoryPruned(cutoff=None)
    cutoff = (now or timezone.now()) - timedelta(days=days)
    size = batch_size or settings.STEPLENS_RETENTION_BATCH_SIZE
    report = AlertHistoryPruned(cutoff=cutoff)
    newer = AlertEvent.objects.filter(monitor=OuterRef("monitor"), created_at__gt=OuterRef("created_at"))
    pending = Delivery.objects.filter(event=OuterRef("pk"), status=DeliveryStatus.PENDING)
    old_events = (
        AlertEvent.objects.filter(created_at__lt=cutoff)
        .filter(Exists(newer))  # a monitor's latest event is kept
        .exclude(Exists(pending))
        .order_by("created_at")
    )
    while ids := list(old_events.values_list("pk", flat=True)[:size]):
        with transaction.atomic():
            deliveries = Delivery.objects.filter(event_id__in=ids)
            report.attempts += DeliveryAttempt.objects.filter(delivery__in=deliveries).delete()[0]
            report.deliveries += deliveries.delete()[0]
            report.events += AlertEvent.objects.filter(pk__in=ids).delete()[0]
        report.batches += 1
        if len(ids) < size:
            break
    old_tests = (
        Delivery.objects.filter(event__isnull=True, created_at__lt=cutoff)
        .exclude(status=DeliveryStatus.PENDING)
        .order_by("created_at")
    )
    while ids := list(old_tests.values_list("pk", flat=True)[:size]):
        with transaction.atomic():
            report.attempts += DeliveryAttempt.objects.filter(delivery_id__in=ids).delete()[0]
            report.deliveries += Delivery.objects.filter(pk__in=ids).delete()[0]
        report.batches += 1
        if len(ids) < size:
            break
    return report
