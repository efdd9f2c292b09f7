"""Monitors (a threshold on a report metric over a sliding window of any step filter), their alert events and the
notifications those events send.

A monitor's number is a `steps.reports.usage_report` value for its filters over [now - window, now): the same
arithmetic as `GET /v1/usage`, so the two always agree. See monitors/evaluation.py for the states and the
recovery margin, monitors/notifications.py for the webhook signature.
"""

import uuid

from django.db import models

from accounts.models import Organization, Project


def new_monitor_id() -> str:
    return f"monitor-{uuid.uuid4()}"


def new_alert_id() -> str:
    return f"alert-{uuid.uuid4()}"


class Metric(models.TextChoices):
    """Report row keys a monitor may watch (every one is a key of a usage_report row)."""

    ERROR_RATE = "error_rate"
    ERROR_COUNT = "error_count"
    STEPS = "steps"
    COST_USD = "cost_usd"
    TOTAL_TOKENS = "total_tokens"
    LATENCY_MS_P50 = "latency_ms_p50"
    LATENCY_MS_P95 = "latency_ms_p95"
    LATENCY_MS_P99 = "latency_ms_p99"
    TTFT_MS_P50 = "ttft_ms_p50"
    TTFT_MS_P95 = "ttft_ms_p95"
    TTFT_MS_P99 = "ttft_ms_p99"


# Metrics that are sums: a window without steps has the value 0 rather than no value.
ADDITIVE_METRICS = frozenset({Metric.ERROR_COUNT, Metric.STEPS, Metric.COST_USD, Metric.TOTAL_TOKENS})


class Operator(models.TextChoices):
    GT = ">"
    GTE = ">="
    LT = "<"
    LTE = "<="


class MonitorState(models.TextChoices):
    OK = "ok"
    ALERTING = "alerting"
    NO_DATA = "no_data"


class GroupBy(models.TextChoices):
    """Dimensions a monitor may be split by: usage_report group names."""

    USER = "user"
    CONVERSATION = "conversation"
    AGENT = "agent"
    MODEL = "model"
    PROJECT = "project"


# group_by -> (key of the report row, step filter that selects one group)
GROUP_KEYS = {
    GroupBy.USER: ("user_id", "user_id"),
    GroupBy.CONVERSATION: ("conversation_id", "conversation_id"),
    GroupBy.AGENT: ("agent_id", "agent_id"),
    GroupBy.MODEL: ("model", "model"),
    GroupBy.PROJECT: ("project_id", "project_id"),
}

MIN_WINDOW_SECONDS = 5 * 60
MAX_WINDOW_SECONDS = 7 * 24 * 3600
# Values of the console sparkline kept per monitor (one per evaluation: the last hour at one a minute).
HISTORY_LENGTH = 60


class Monitor(models.Model):
    """A threshold on one metric of the usage report, for a step filter over a sliding window.

    `state`, `value`, `steps` and `history` are the last evaluation's outcome (for a split monitor: alerting when
    any group is, and the value of the worst group). `secret_encrypted` is the webhook signing secret, encrypted
    with a key derived from DJANGO_SECRET_KEY (it must be readable to sign; it is shown once, at creation).
    """

    id = models.CharField(primary_key=True, max_length=64, default=new_monitor_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="monitors")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="monitors")
    name = models.CharField(max_length=200)
    filters = models.JSONField(default=dict, blank=True, help_text="GET /v1/steps parameters, without start/end.")
    metric = models.CharField(max_length=32, choices=Metric.choices)
    operator = models.CharField(max_length=2, choices=Operator.choices)
    threshold = models.FloatField()
    recovery_threshold = models.FloatField(
        null=True, blank=True, help_text="Where an alert resolves; default: the threshold less the recovery margin."
    )
    window_seconds = models.PositiveIntegerField()
    min_steps = models.PositiveIntegerField(default=1)
    group_by = models.CharField(max_length=16, choices=GroupBy.choices, blank=True, default="")
    targets = models.JSONField(default=list, blank=True)
    secret_encrypted = models.TextField(editable=False)
    enabled = models.BooleanField(default=True)

    state = models.CharField(max_length=16, choices=MonitorState.choices, default=MonitorState.NO_DATA)
    value = models.FloatField(null=True, blank=True)
    steps = models.PositiveBigIntegerField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    history = models.JSONField(default=list, blank=True, help_text="[[evaluated_at, value], ...], oldest first.")
    last_error = models.TextField(blank=True, default="")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "name"], name="monitor_org_name")]

    def __str__(self) -> str:
        return self.name


class GroupAlert(models.Model):
    """One alerting group of a split monitor, with the value and steps it fired with. Only alerting groups have a
    row: a monitor split by end user over 10,000 users keeps a row per user in trouble, not per user."""

    monitor = models.ForeignKey(Monitor, on_delete=models.CASCADE, related_name="group_alerts")
    group = models.CharField(max_length=200)
    value = models.FloatField(null=True, blank=True)
    steps = models.PositiveBigIntegerField(null=True, blank=True)
    since = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["monitor", "group"], name="group_alert_unique")]

    def __str__(self) -> str:
        return f"{self.monitor_id} {self.group}"


class AlertEvent(models.Model):
    """A change of state of a monitor (or of one group of a split monitor), with what was measured and where."""

    id = models.CharField(primary_key=True, max_length=64, default=new_alert_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="alert_events")
    monitor = models.ForeignKey(Monitor, on_delete=models.CASCADE, related_name="events")
    group_by = models.CharField(max_length=16, blank=True, default="")
    group = models.CharField(max_length=200, null=True, blank=True)
    state = models.CharField(max_length=16, choices=MonitorState.choices)
    previous_state = models.CharField(max_length=16, choices=MonitorState.choices)
    metric = models.CharField(max_length=32, choices=Metric.choices)
    operator = models.CharField(max_length=2, choices=Operator.choices)
    value = models.FloatField(null=True, blank=True)
    steps = models.PositiveBigIntegerField(default=0)
    threshold = models.FloatField()
    recovery_threshold = models.FloatField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    filters = models.JSONField(default=dict, blank=True, help_text="The filters of the window, group included.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="alert_org_created"),
            models.Index(fields=["monitor", "-created_at"], name="alert_monitor_created"),
        ]

    def __str__(self) -> str:
        return f"{self.monitor_id}: {self.previous_state} -> {self.state}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class TargetKind(models.TextChoices):
    WEBHOOK = "webhook"
    EMAIL = "email"


class Delivery(models.Model):
    """One notification to one target: an alert event's, or a test's (event null). Sent by a Celery task with
    retries; every attempt is a DeliveryAttempt."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="deliveries")
    monitor = models.ForeignKey(Monitor, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(AlertEvent, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries")
    kind = models.CharField(max_length=16, choices=TargetKind.choices)
    destination = models.CharField(max_length=2000)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["status", "updated_at"], name="delivery_status_updated")]

    def __str__(self) -> str:
        return f"{self.kind} {self.destination} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try at sending a Delivery: the HTTP status code (webhooks), or the error, and how long it took."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    error = models.TextField(blank=True, default="")
    duration_ms = models.FloatField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="delivery_attempt_unique")]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error}"
