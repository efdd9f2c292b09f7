"""Writes of monitors: create, update, delete, rotate the secret; one evaluation cycle; one delivery attempt; the
test notification.

A cycle never waits for a notification: it stores a Delivery per target and queues `monitors.deliver` after its
transaction commits. Each cycle claims a monitor with one conditional UPDATE on the `evaluated_at` it read, so two
cycles running at once (a slow one overlapping the next) never record the same change twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization, Project
from config.errors import ApplicationError, NotFound
from monitors import evaluation, payloads
from monitors.models import (
    HISTORY_LENGTH,
    AlertEvent,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    GroupAlert,
    Monitor,
    MonitorState,
    Operator,
    TargetKind,
)
from monitors.notifications import (
    AddressRefused,
    AttemptResult,
    email_send,
    secret_decrypt,
    secret_encrypt,
    secret_new,
    url_check,
    webhook_send,
)
from steps.filters import FILTER_NAMES, METADATA_PREFIX, step_filterset

logger = logging.getLogger(__name__)

# Filters a monitor may not set: its window gives start and end.
_WINDOW_FILTERS = frozenset({"start", "end"})


# --- validation -----------------------------------------------------------------------------------


def monitor_filters_clean(*, organization: Organization, filters: Mapping[str, Any]) -> dict[str, Any]:
    """The filters as stored: GET /v1/steps parameters (metadata.<key> included), validated by the same
    StepFilterSet; a bad one is a 400 naming `filters.<name>`."""
    if not isinstance(filters, Mapping):
        raise ApplicationError("Invalid monitor.", extra={"filters": ["Must be an object of step filters."]})
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    for name, value in filters.items():
        if name in _WINDOW_FILTERS:
            errors[f"filters.{name}"] = ["The window sets start and end; use window_seconds."]
        elif name not in FILTER_NAMES and not name.startswith(METADATA_PREFIX):
            errors[f"filters.{name}"] = ["Unknown filter."]
        elif value is None or isinstance(value, dict) or (isinstance(value, list) and not value):
            errors[f"filters.{name}"] = ["Must be a string, a number, a boolean or a list of strings."]
        elif isinstance(value, list) and any(isinstance(item, dict | list) or item is None for item in value):
            errors[f"filters.{name}"] = ["Must be a list of strings."]
        else:
            cleaned[name] = list(value) if isinstance(value, tuple) else value  # kept as sent: PATCH can send it back
    if errors:
        raise ApplicationError("Invalid monitor.", extra=errors)
    _check_scoped_project_filter(organization, cleaned.get("project_id"))
    try:
        step_filterset(organization=organization, params=cleaned)
    except ApplicationError as exc:
        raise ApplicationError(
            "Invalid monitor.", extra={f"filters.{name}": messages for name, messages in exc.fields.items()}
        ) from exc
    return cleaned


def _check_scoped_project_filter(organization: Organization, value: Any) -> None:
    """A project-limited key's monitor cannot filter on another project (it would silently read the key's)."""
    scoped = getattr(organization, "scoped_project_id", None)
    if not scoped or value is None:
        return
    named = value if isinstance(value, list) else str(value).split(",")
    if any(str(item).strip() and str(item).strip() != scoped for item in named):
        raise NotFound(
            "Project not found.", extra={"filters.project_id": ["This API key is limited to another project."]}
        )


def targets_clean(targets: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Webhook URLs must reach a public address (unless STEPLENS_NOTIFY_ALLOW_PRIVATE)."""
    errors: dict[str, list[str]] = {}
    cleaned = []
    for index, target in enumerate(targets):
        if target["kind"] == TargetKind.WEBHOOK:
            try:
                url_check(target["url"], resolve=False)
            except AddressRefused as exc:
                errors[f"targets.{index}.url"] = [str(exc)]
            cleaned.append({"kind": TargetKind.WEBHOOK, "url": target["url"]})
        else:
            cleaned.append({"kind": TargetKind.EMAIL, "email": target["email"]})
    if errors:
        raise ApplicationError("Invalid monitor.", extra=errors)
    return cleaned


def _check_recovery(*, operator: str, threshold: float, recovery: float | None) -> None:
    if recovery is None:
        return
    upward = operator in (Operator.GT, Operator.GTE)
    if (upward and recovery > threshold) or (not upward and recovery < threshold):
        side = "at most" if upward else "at least"
        raise ApplicationError(
            "Invalid monitor.", extra={"recovery_threshold": [f"Must be {side} the threshold ({threshold:g})."]}
        )


def _project(*, organization: Organization, project_id: str | None) -> Project | None:
    """The monitor's project. A key limited to a project puts its monitors in that project: none named (or null)
    means its project, another one is a 404 like a project that does not exist."""
    scoped = getattr(organization, "scoped_project_id", None)
    if scoped and project_id and project_id != scoped:
        raise NotFound("Project not found.", extra={"project_id": ["This API key is limited to another project."]})
    project_id = project_id or scoped
    if not project_id:
        return None
    project = Project.objects.filter(organization=organization, pk=project_id).first()
    if project is None:  # another organization's project looks the same as one that does not exist
        raise NotFound("Project not found.", extra={"project_id": ["No such project in this organization."]})
    return project


# --- create, update, delete -----------------------------------------------------------------------


@transaction.atomic
def monitor_create(*, organization: Organization, data: Mapping[str, Any]) -> tuple[Monitor, str]:
    """A new monitor and its webhook signing secret (returned once, stored encrypted). It starts in `no_data`
    and is evaluated by the next cycle."""
    project = _project(organization=organization, project_id=data.get("project_id"))
    _check_recovery(operator=data["operator"], threshold=data["threshold"], recovery=data.get("recovery_threshold"))
    secret = secret_new()
    monitor = Monitor.objects.create(
        organization=organization,
        project=project,
        name=data["name"],
        filters=monitor_filters_clean(organization=organization, filters=data.get("filters") or {}),
        metric=data["metric"],
        operator=data["operator"],
        threshold=data["threshold"],
        recovery_threshold=data.get("recovery_threshold"),
        window_seconds=data["window_seconds"],
        min_steps=data.get("min_steps", 1),
        group_by=data.get("group_by") or "",
        targets=targets_clean(data.get("targets") or []),
        enabled=data.get("enabled", True),
        secret_encrypted=secret_encrypt(secret),
    )
    return monitor, secret


# Changing any of these makes the last evaluation's state meaningless: the monitor starts over from no_data.
_DEFINITION = frozenset({"filters", "metric", "operator", "threshold", "recovery_threshold", "window_seconds",
                         "min_steps", "group_by", "project_id"})  # fmt: skip


@transaction.atomic
def monitor_update(*, monitor: Monitor, data: Mapping[str, Any]) -> Monitor:
    """Change some fields. A changed definition resets the state (no event: nothing was measured yet)."""
    organization = monitor.organization
    if "project_id" in data:
        monitor.project = _project(organization=organization, project_id=data["project_id"])
    if "filters" in data:
        monitor.filters = monitor_filters_clean(organization=organization, filters=data["filters"] or {})
    if "targets" in data:
        monitor.targets = targets_clean(data["targets"] or [])
    for name in ("name", "metric", "operator", "threshold", "recovery_threshold", "window_seconds", "min_steps",
                 "enabled"):  # fmt: skip
        if name in data:
            setattr(monitor, name, data[name])
    if "group_by" in data:
        monitor.group_by = data["group_by"] or ""
    _check_recovery(operator=monitor.operator, threshold=monitor.threshold, recovery=monitor.recovery_threshold)
    if _DEFINITION & set(data):
        monitor.state, monitor.value, monitor.steps, monitor.history = MonitorState.NO_DATA, None, None, []
        monitor.state_changed_at = monitor.evaluated_at = None
        monitor.group_alerts.all().delete()
    monitor.save()
    return monitor


def monitor_delete(*, monitor: Monitor) -> None:
    """Delete the monitor with its events and deliveries (queued deliveries find nothing and stop)."""
    monitor.delete()


def monitor_rotate_secret(*, monitor: Monitor) -> str:
    """A new signing secret, returned once; the old one stops signing at once."""
    secret = secret_new()
    Monitor.objects.filter(pk=monitor.pk).update(secret_encrypted=secret_encrypt(secret), updated_at=timezone.now())
    return secret


# --- one evaluation cycle ------------------------------------------------------------------------


@dataclass(slots=True)
class CycleReport:
    """What a cycle did: monitors evaluated, reports run, events recorded, deliveries queued, seconds, errors."""

    monitors: int = 0
    queries: int = 0
    events: int = 0
    deliveries: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def monitors_evaluate(*, now: datetime | None = None, organization: Organization | None = None) -> CycleReport:
    """Evaluate every enabled monitor (of `organization`, or all) at `now`; record state changes as alert events
    and queue their notifications. One failing report marks its monitors' `last_error` and the cycle goes on."""
    started = time.perf_counter()
    end = now or timezone.now()
    monitors = Monitor.objects.filter(enabled=True).select_related("organization")
    if organization is not None:
        monitors = monitors.filter(organization=organization)
    monitors = list(monitors)
    alerting = _group_alerts([m for m in monitors if m.group_by and m.state == MonitorState.ALERTING])
    report = CycleReport(monitors=len(monitors))
    for query in evaluation.plan(monitors):
        report.queries += 1
        try:
            window, rows = evaluation.run_query(query, end=end)
        except ApplicationError as exc:
            message = f"{exc.message} {exc.fields}"
            report.errors.append(message)
            Monitor.objects.filter(pk__in=[m.pk for m, _ in query.members]).update(last_error=message[:2000])
            continue
        with transaction.atomic():
            if not _record_batch(query, rows, window=window, alerting=alerting, report=report):
                for monitor, fold_value in query.members:
                    found = rows.get(fold_value, [])
                    try:
                        with transaction.atomic():  # a savepoint: one monitor's failed write leaves the others'
                            _record(monitor, found, window=window, alerting=alerting.get(monitor.pk, {}),
                                    report=report)  # fmt: skip
                    except DatabaseError as exc:
                        logger.exception("monitor %s: its evaluation could not be recorded", monitor.pk)
                        report.errors.append(f"{monitor.pk}: {type(exc).__name__}")
    report.seconds = time.perf_counter() - started
    return report


def _group_alerts(monitors: list[Monitor]) -> dict[str, dict[str, GroupAlert]]:
    found: dict[str, dict[str, GroupAlert]] = {}
    for alert in GroupAlert.objects.filter(monitor__in=monitors):
        found.setdefault(alert.monitor_id, {})[alert.group] = alert
    return found


# The fields a cycle writes to a monitor (state_changed_at only when the state changed).
_RECORDED = ("value", "steps", "evaluated_at", "history", "last_error", "state", "state_changed_at")
# One statement claims and records a report's monitors (PostgreSQL): each row only where it still holds the
# evaluated_at and state the cycle read, as the single-row UPDATE of `_record` does.
_CLAIM_SQL = """
UPDATE {table} AS m SET value = v.value, steps = v.steps, evaluated_at = v.evaluated_at, history = v.history,
    last_error = '', state = v.state,
    state_changed_at = CASE WHEN v.changed THEN v.evaluated_at ELSE m.state_changed_at END
FROM (VALUES {rows}) AS v(id, value, steps, evaluated_at, history, state, changed, read_evaluated_at, read_state)
WHERE m.id = v.id AND m.evaluated_at IS NOT DISTINCT FROM v.read_evaluated_at AND m.state = v.read_state
RETURNING m.id
"""
_CLAIM_ROW = "(%s, %s::double precision, %s::bigint, %s::timestamptz, %s::jsonb, %s, %s::boolean, %s::timestamptz, %s)"


def _outcome(
    monitor: Monitor, rows: list[dict[str, Any]], *, window: evaluation.Window, alerting: dict[str, GroupAlert]
) -> tuple[evaluation.Outcome, dict[str, Any]]:
    """The evaluation and the values to record."""
    if monitor.group_by:
        outcome = evaluation.evaluate_split(monitor, rows, alerting)
    else:
        outcome = evaluation.evaluate_single(monitor, rows)
    history = [*(monitor.history or []), [window.end.isoformat(), outcome.value]][-HISTORY_LENGTH:]
    values: dict[str, Any] = {"value": outcome.value, "steps": outcome.steps, "evaluated_at": window.end,
                              "history": history, "last_error": "", "state": outcome.state}  # fmt: skip
    if outcome.state != monitor.state:
        values["state_changed_at"] = window.end
    return outcome, values


def _record_batch(
    query: evaluation.Query,
    rows: Mapping[str | None, list[dict[str, Any]]],
    *,
    window: evaluation.Window,
    alerting: Mapping[str, dict[str, GroupAlert]],
    report: CycleReport,
) -> bool:
    """Record a report's monitors with one UPDATE (PostgreSQL), then the events of those claimed, in a savepoint.
    False when not done: another database, or a write failed (rolled back, the monitors as read): the caller
    records them one by one then, so one monitor's failed write leaves the others'."""
    if connections[Monitor.objects.db].vendor != "postgresql":
        return False
    read = [(monitor, {name: getattr(monitor, name) for name in _RECORDED}) for monitor, _ in query.members]
    counted = CycleReport()
    try:
        with transaction.atomic():
            evaluated = []
            for monitor, fold_value in query.members:
                outcome, values = _outcome(monitor, rows.get(fold_value, []), window=window,
                                           alerting=alerting.get(monitor.pk, {}))  # fmt: skip
                evaluated.append((monitor, outcome, values))
            claimed = _claim(evaluated)
            for monitor, outcome, values in evaluated:
                if monitor.pk in claimed:  # else another cycle evaluated it meanwhile, or its definition changed
                    _recorded(monitor, outcome, values, window=window, report=counted)
    except DatabaseError:
        logger.exception("monitors of one report: recorded one by one after a failed write")
        for monitor, fields in read:
            for name, value in fields.items():
                setattr(monitor, name, value)
        return False
    report.events += counted.events
    report.deliveries += counted.deliveries
    return True


def _claim(evaluated: list[tuple[Monitor, evaluation.Outcome, dict[str, Any]]]) -> set[str]:
    """The ids of the monitors updated (claimed) by one UPDATE ... FROM (VALUES ...)."""
    claimed: set[str] = set()
    for index in range(0, len(evaluated), 1000):
        chunk = evaluated[index : index + 1000]
        params: list[Any] = []
        for monitor, _, values in chunk:
            params += [monitor.pk, values["value"], values["steps"], values["evaluated_at"],
                       json.dumps(values["history"]), values["state"], "state_changed_at" in values,
                       monitor.evaluated_at, monitor.state]  # fmt: skip
        sql = _CLAIM_SQL.format(table=Monitor._meta.db_table, rows=", ".join([_CLAIM_ROW] * len(chunk)))
        with connections[Monitor.objects.db].cursor() as cursor:
            cursor.execute(sql, params)
            claimed.update(pk for (pk,) in cursor.fetchall())
    return claimed


def _record(
    monitor: Monitor,
    rows: list[dict[str, Any]],
    *,
    window: evaluation.Window,
    alerting: dict[str, GroupAlert],
    report: CycleReport,
) -> None:
    outcome, values = _outcome(monitor, rows, window=window, alerting=alerting)
    claimed = Monitor.objects.filter(
        Q(evaluated_at=monitor.evaluated_at) if monitor.evaluated_at else Q(evaluated_at__isnull=True),
        pk=monitor.pk,
        state=monitor.state,
    ).update(**values)
    if not claimed:  # another cycle evaluated it meanwhile, or a user changed its definition
        return
    _recorded(monitor, outcome, values, window=window, report=report)


def _recorded(
    monitor: Monitor,
    outcome: evaluation.Outcome,
    values: dict[str, Any],
    *,
    window: evaluation.Window,
    report: CycleReport,
) -> None:
    """After the claim: the monitor as recorded, its alert events, group alerts and queued notifications."""
    changed = "state_changed_at" in values
    previous_state = monitor.state
    for name, value in values.items():
        setattr(monitor, name, value)
    events: list[AlertEvent] = []
    if monitor.group_by:
        # In bulk: a split monitor's first cycle may put thousands of groups in alert. A GroupAlert keeps the value
        # it fired with; alerts that go on are not rewritten every cycle.
        fired, ended = [], []
        for change in outcome.changes:
            events.append(_event(monitor, window, change.previous, change.state, change.value, change.steps,
                                 group=change.group))  # fmt: skip
            if change.state == MonitorState.ALERTING:
                fired.append(GroupAlert(monitor=monitor, group=change.group, value=change.value, steps=change.steps,
                                        since=window.end))  # fmt: skip
            else:
                ended.append(change.group)
        GroupAlert.objects.bulk_create(fired, batch_size=1000)
        for index in range(0, len(ended), 1000):
            GroupAlert.objects.filter(monitor=monitor, group__in=ended[index : index + 1000]).delete()
    elif changed:
        events.append(_event(monitor, window, previous_state, outcome.state, outcome.value, outcome.steps, group=None))
    if not events:
        return
    AlertEvent.objects.bulk_create(events, batch_size=1000)
    report.events += len(events)
    notifying = [e for e in events if MonitorState.ALERTING in (e.state, e.previous_state)]
    limit = settings.STEPLENS_MONITOR_MAX_NOTIFICATIONS_PER_CYCLE
    if len(notifying) > limit:
        logger.warning("monitor %s: %d alert events this cycle, notifying the first %d", monitor.pk,
                       len(notifying), limit)  # fmt: skip
    deliveries = []
    for event in notifying[:limit]:
        payload = payloads.event_payload(monitor=monitor, event=event)
        deliveries.extend(_deliveries(monitor, payload, event=event))
    _queue(deliveries)
    report.deliveries += len(deliveries)


def _event(
    monitor: Monitor,
    window: evaluation.Window,
    previous: str,
    state: str,
    value: float | None,
    steps: int,
    *,
    group: str | None,
) -> AlertEvent:
    return AlertEvent(
        organization_id=monitor.organization_id,
        monitor=monitor,
        group_by=monitor.group_by,
        group=group,
        state=state,
        previous_state=previous,
        metric=monitor.metric,
        operator=monitor.operator,
        value=value,
        steps=steps,
        threshold=monitor.threshold,
        recovery_threshold=evaluation.recovery_of(monitor),
        window_start=window.start,
        window_end=window.end,
        filters={**evaluation.monitor_filters(monitor), **evaluation.group_filter(monitor, group)},
        created_at=timezone.now(),
    )


# --- deliveries -----------------------------------------------------------------------------------


def _deliveries(monitor: Monitor, payload: dict[str, Any], *, event: AlertEvent | None) -> list[Delivery]:
    rows = []
    for target in monitor.targets or []:
        destination = target.get("url") if target["kind"] == TargetKind.WEBHOOK else target.get("email")
        delivery = Delivery(organization_id=monitor.organization_id, monitor=monitor, event=event,
                            kind=target["kind"], destination=destination, payload=payload)  # fmt: skip
        rows.append(delivery)
    return Delivery.objects.bulk_create(rows)


def _queue(deliveries: list[Delivery]) -> None:
    from monitors.tasks import deliver  # tasks import this module: a top-level import would be a cycle

    for delivery in deliveries:
        transaction.on_commit(lambda pk=delivery.pk: deliver.delay(delivery_id=pk))


@transaction.atomic
def monitor_test_send(*, monitor: Monitor) -> list[Delivery]:
    """A sample notification to each of the monitor's targets, delivered like an alert's (retries and log)."""
    if not monitor.targets:
        raise ApplicationError(
            "The monitor has no notification targets.", extra={"targets": ["Add a target."]}, status_code=409
        )
    deliveries = _deliveries(monitor, payloads.test_payload(monitor=monitor), event=None)
    _queue(deliveries)
    return deliveries


@transaction.atomic
def deliveries_requeue(*, older_than: timedelta) -> int:
    """Queue again the deliveries still pending with no attempt for `older_than`: their task was lost (a broker
    that kept nothing across a restart). A task that merely waits for its backoff is left alone as long as
    `older_than` exceeds the longest backoff; a duplicate finds the delivery done and does nothing."""
    stale = list(
        Delivery.objects.filter(status=DeliveryStatus.PENDING, updated_at__lt=timezone.now() - older_than)
        .order_by("updated_at")
        .values_list("pk", flat=True)[:1000]
    )
    if stale:
        Delivery.objects.filter(pk__in=stale).update(updated_at=timezone.now())
        _queue([Delivery(pk=pk) for pk in stale])
    return len(stale)


def delivery_attempt(*, delivery_id: int, max_attempts: int) -> tuple[bool | None, int]:
    """One attempt at a pending delivery, logged, and the number of attempts made so far. True: delivered; False:
    failed for good (a final answer, or the `max_attempts`-th failure); None: try again later. A delivery that is
    gone or no longer pending is left alone (a task delivered twice)."""
    delivery = Delivery.objects.select_related("monitor").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return (delivery is not None and delivery.status == DeliveryStatus.DELIVERED), 0
    if delivery.kind == TargetKind.WEBHOOK:
        secret = secret_decrypt(delivery.monitor.secret_encrypted)
        if secret is None:
            result = AttemptResult(ok=False, error="The signing secret cannot be read: rotate it.", retry=False)
        else:
            result = webhook_send(url=delivery.destination, payload=delivery.payload, secret=secret,
                                  delivery_id=delivery.pk)  # fmt: skip
    else:
        result = email_send(address=delivery.destination, payload=delivery.payload)
    number = delivery.attempts + 1
    if result.ok:
        status = DeliveryStatus.DELIVERED
    elif number >= max_attempts or not result.retry:
        status = DeliveryStatus.FAILED
    else:
        status = DeliveryStatus.PENDING
    with transaction.atomic():
        DeliveryAttempt.objects.create(delivery=delivery, number=number, status_code=result.status_code, ok=result.ok,
                                       error=result.error, duration_ms=round(result.seconds * 1000, 3))  # fmt: skip
        Delivery.objects.filter(pk=delivery.pk).update(
            attempts=number, status=status, last_status_code=result.status_code, last_error=result.error,
            updated_at=timezone.now(),
        )  # fmt: skip
    if status == DeliveryStatus.PENDING:
        return None, number
    return status == DeliveryStatus.DELIVERED, number
