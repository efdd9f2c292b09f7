"""Alert history retention: events, deliveries and attempts older than STEPLENS_ALERT_RETENTION_DAYS go, in
batches; each monitor's latest event, its current state and anything still being delivered stay."""

import io
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import timezone

from monitors.models import AlertEvent, Delivery, DeliveryAttempt, DeliveryStatus, GroupAlert, Monitor, MonitorState
from monitors.retention import alert_history_prune
from monitors.services import monitor_create
from monitors.tasks import prune_alert_history
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

BODY = {"metric": "steps", "operator": ">", "threshold": 1, "window_seconds": 600}


def _monitor(organization, name: str, **values) -> Monitor:
    monitor, _ = monitor_create(organization=organization, data={**BODY, "name": name, **values})
    return monitor


def _event(monitor: Monitor, *, days_ago: float, state: str = "alerting", group: str | None = None) -> AlertEvent:
    now = timezone.now()
    event = AlertEvent.objects.create(
        organization=monitor.organization, monitor=monitor, state=state, previous_state="ok", group=group,
        metric=monitor.metric, operator=monitor.operator, value=2, steps=2, threshold=1, recovery_threshold=0.9,
        window_start=now - timedelta(minutes=10), window_end=now,
    )  # fmt: skip
    # created_at is auto_now_add: set the age afterwards.
    AlertEvent.objects.filter(pk=event.pk).update(created_at=now - timedelta(days=days_ago))
    return event


def _delivery(monitor: Monitor, event: AlertEvent | None, *, days_ago: float, status: str = "delivered") -> Delivery:
    delivery = Delivery.objects.create(
        organization=monitor.organization, monitor=monitor, event=event, kind="webhook",
        destination="https://hooks.example.com/x", payload={"type": "alert"}, status=status, attempts=2,
    )  # fmt: skip
    for number in (1, 2):
        DeliveryAttempt.objects.create(delivery=delivery, number=number, status_code=500 if number == 1 else 200)
    Delivery.objects.filter(pk=delivery.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return delivery


@pytest.fixture
def history():
    organization = OrganizationFactory()
    busy = _monitor(organization, "busy")
    quiet = _monitor(organization, "quiet")
    split = _monitor(organization, "split", group_by="user")
    old = [_event(busy, days_ago=days) for days in (200, 150, 120, 100)]
    recent = _event(busy, days_ago=10)
    old_deliveries = [_delivery(busy, event, days_ago=100) for event in old]
    recent_delivery = _delivery(busy, recent, days_ago=10)
    # quiet's only event is a year old: it is its latest, so it stays, with its notification.
    quiet_latest = _event(quiet, days_ago=365)
    quiet_delivery = _delivery(quiet, quiet_latest, days_ago=365)
    # split: an old event whose notification is still being retried stays; another old one goes.
    split_pending = _event(split, days_ago=95, group="u-1")
    pending = _delivery(split, split_pending, days_ago=95, status=DeliveryStatus.PENDING)
    split_gone = _event(split, days_ago=94, group="u-2")
    split_latest = _event(split, days_ago=1, group="u-3")
    Monitor.objects.filter(pk=split.pk).update(state=MonitorState.ALERTING, value=2)
    GroupAlert.objects.create(monitor=split, group="u-1", value=2, steps=2, since=timezone.now() - timedelta(days=95))
    # Test notifications (no event): an old one goes, a recent one stays.
    old_test, recent_test = _delivery(busy, None, days_ago=91), _delivery(busy, None, days_ago=89)
    return {
        "monitors": (busy, quiet, split),
        "gone_events": [*old, split_gone],
        "kept_events": [recent, quiet_latest, split_pending, split_latest],
        "gone_deliveries": [*old_deliveries, old_test],
        "kept_deliveries": [recent_delivery, quiet_delivery, pending, recent_test],
    }


def test_old_alert_history_is_removed_in_batches_and_the_latest_event_and_pending_deliveries_stay(history):
    pruned = alert_history_prune(days=90, batch_size=2)
    assert (pruned.events, pruned.deliveries, pruned.attempts) == (5, 5, 10)
    assert pruned.batches >= 4  # five events and one test delivery, two per transaction
    assert set(AlertEvent.objects.values_list("pk", flat=True)) == {e.pk for e in history["kept_events"]}
    assert set(Delivery.objects.values_list("pk", flat=True)) == {d.pk for d in history["kept_deliveries"]}
    assert DeliveryAttempt.objects.count() == 2 * len(history["kept_deliveries"])
    assert not DeliveryAttempt.objects.filter(delivery_id__in=[d.pk for d in history["gone_deliveries"]]).exists()
    # The monitors' current state is untouched.
    _, _, split = history["monitors"]
    split.refresh_from_db()
    assert split.state == MonitorState.ALERTING and GroupAlert.objects.filter(monitor=split).count() == 1
    assert Monitor.objects.count() == 3
    # A second pass finds nothing more.
    again = alert_history_prune(days=90, batch_size=2)
    assert (again.events, again.deliveries, again.attempts) == (0, 0, 0)


def test_once_a_pending_delivery_ends_its_old_event_goes_too(history):
    alert_history_prune(days=90)
    Delivery.objects.filter(status=DeliveryStatus.PENDING).update(status=DeliveryStatus.FAILED)
    pruned = alert_history_prune(days=90)
    assert (pruned.events, pruned.deliveries) == (1, 1)
    _, _, split = history["monitors"]
    assert list(AlertEvent.objects.filter(monitor=split).values_list("group", flat=True)) == ["u-3"]


def test_the_setting_decides_and_empty_keeps_everything(history, settings):
    settings.STEPLENS_ALERT_RETENTION_DAYS = None
    assert alert_history_prune().cutoff is None
    assert AlertEvent.objects.count() == 9 and Delivery.objects.count() == 9
    settings.STEPLENS_ALERT_RETENTION_DAYS = 120
    pruned = alert_history_prune()
    # Older than 120 days: three of busy's old events (the fourth is 100 days old); the year-old latest stays.
    assert pruned.events == 3 and AlertEvent.objects.count() == 6


def test_the_beat_task_and_the_command_prune(history, settings):
    assert django_settings.CELERY_BEAT_SCHEDULE["prune-alert-history"]["task"] == "monitors.prune_alert_history"
    settings.STEPLENS_ALERT_RETENTION_DAYS = 160
    assert prune_alert_history.delay().get() == {"events": 1, "deliveries": 1, "attempts": 2}
    out = io.StringIO()
    call_command("prune_alert_history", "--days", "90", stdout=out)
    assert "Removed 4 alert events, 4 deliveries and 8 attempts" in out.getvalue()
    settings.STEPLENS_ALERT_RETENTION_DAYS = None
    out = io.StringIO()
    call_command("prune_alert_history", stdout=out)
    assert "nothing removed" in out.getvalue()
