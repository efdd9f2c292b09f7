"""Retention: remove raw step records older than each organization's (or project's) retention: whole partitions
where it can (PostgreSQL), otherwise in short batches.

Which retention applies to a step: its project's `retention_days` when set, else its organization's, else the
`STEPLENS_RETENTION_DAYS` default; empty everywhere means keep forever. Each batch (at most
STEPLENS_RETENTION_BATCH_SIZE steps) is its own short transaction, so no lock is held for long and ingest and
reads go on meanwhile; a crash mid-way loses nothing, the next run picks up where the last one stopped.

On PostgreSQL the steps tables are partitioned by time (steps.partitions). First, a partition interval [lo, hi)
is dropped whole (steps, metrics, messages and provider traces at once) when everything in it is past its
retention: every (organization, project) with steps there, and with step-less messages there, has a cutoff at or
after `hi`, and no step there is still pending. Who has rows there is read from the partition itself with index
probes (one per organization and project, not a scan). The DEFAULT partition is never dropped. A drop waits at
most STEPLENS_PARTITION_LOCK_TIMEOUT_MS for its lock and is otherwise left for the next run. Then the batches
remove the rest (and the runs left empty).

The usage, errors and subject rollups are NOT touched by default: they are small (one row per hour and
dimension), and keeping them is what lets last year's costs still add up after the raw rows are gone. Pass
`purge_rollups=True` (`manage.py apply_retention --rollups`) to remove the rollup rows whose whole bucket is
older than the cutoff too.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Organization, Project
from agents.models import Run
from steps.models import (
    ErrorRollupDay,
    ErrorRollupHour,
    Message,
    ProviderTrace,
    RetentionRun,
    Step,
    StepMetrics,
    StepRollupDay,
    StepRollupHour,
    SubjectRollupDay,
    SubjectRollupHour,
)
from steps.partitions import (
    PARTITIONED_TABLES,
    DroppedPartition,
    is_partitioned,
    partitions_drop,
    partitions_drop_detached,
    partitions_list,
)
from steps.runs import runs_delete_empty

HOUR_ROLLUPS = (StepRollupHour, SubjectRollupHour, ErrorRollupHour)
DAY_ROLLUPS = (StepRollupDay, SubjectRollupDay, ErrorRollupDay)


@dataclass(frozen=True)
class RetentionPolicy:
    """Steps of `organization_id` older than `cutoff`: of one project, or of every project without its own days."""

    organization_id: str
    days: int
    cutoff: datetime
    project_id: str | None = None  # None: the organization's policy, minus the projects that have their own
    own_project_ids: tuple[str, ...] = ()

    def scope(self, project_field: str, *, blank_is_none: bool = False) -> Q:
        """The rows this policy covers, by their project column (rollups store '' for no project)."""
        if self.project_id is not None:
            return Q(**{project_field: self.project_id})
        if not self.own_project_ids:
            return Q()
        return ~Q(**{f"{project_field}__in": self.own_project_ids}) | (
            Q(**{project_field: ""}) if blank_is_none else Q(**{f"{project_field}__isnull": True})
        )

    def describe(self) -> dict[str, object]:
        return {
            "organization": self.organization_id,
            "project": self.project_id,
            "days": self.days,
            "cutoff": self.cutoff.isoformat(),
        }


def retention_policies(*, now: datetime) -> Iterator[RetentionPolicy]:
    """Every retention in force: one per project with its own days, one per organization with days (or default)."""
    default = settings.STEPLENS_RETENTION_DAYS
    own: dict[str, list[tuple[str, int]]] = {}
    for project_id, organization_id, days in Project.objects.filter(retention_days__isnull=False).values_list(
        "id", "organization_id", "retention_days"
    ):
        own.setdefault(organization_id, []).append((project_id, days))
    organizations = (
        Organization.objects.all()
        if default is not None
        else Organization.objects.filter(Q(retention_days__isnull=False) | Q(pk__in=list(own)))
    )
    for organization_id, org_days in organizations.order_by("pk").values_list("id", "retention_days"):
        projects = own.get(organization_id, [])
        for project_id, days in projects:
            yield RetentionPolicy(organization_id, days, now - timedelta(days=days), project_id=project_id)
        days = org_days if org_days is not None else default
        if days is not None:
            yield RetentionPolicy(
                organization_id, days, now - timedelta(days=days), own_project_ids=tuple(p for p, _ in projects)
            )


def _delete_in_batches(
    queryset: QuerySet,
    *,
    batch_size: int,
    time_field: str = "created_at",
    delete: Callable[[list[Any]], dict[str, int]] | None = None,
) -> Iterator[dict[str, int]]:
    """Delete `queryset`'s rows oldest first, `batch_size` at a time, each batch its own transaction.

    Walked in (`time_field`, pk) order from a cursor, so each batch reads the next rows of the (organization,
    time) index instead of sorting every matching row again: a row the condition keeps (a run that still has
    steps) is passed once, not once per batch. The condition is checked again in the deleting transaction.
    `delete` (pks -> rows removed per model label) replaces `queryset.filter(pk__in=pks).delete()`; it may
    delete fewer (it checks a condition of its own)."""
    after: tuple[datetime, Any] | None = None
    while True:
        page = queryset.order_by(time_field, "pk")
        if after is not None:
            page = page.filter(Q(**{f"{time_field}__gt": after[0]}) | Q(**{time_field: after[0], "pk__gt": after[1]}))
        rows = list(page.values_list(time_field, "pk")[:batch_size])
        if not rows:
            return
        pks = [pk for _, pk in rows]
        with transaction.atomic():
            counts = delete(pks) if delete is not None else queryset.filter(pk__in=pks).delete()[1]
        yield counts
        if len(rows) < batch_size:
            return
        after = rows[-1]


def retention_apply(
    *, now: datetime | None = None, purge_rollups: bool = False, batch_size: int | None = None
) -> RetentionRun:
    """Apply every retention once and record what was removed (one RetentionRun row, saved after each policy)."""
    now = now or timezone.now()
    batch_size = batch_size or settings.STEPLENS_RETENTION_BATCH_SIZE
    record = RetentionRun.objects.create(started_at=now, purge_rollups=purge_rollups)
    _drop_partitions(record, now=now)
    for policy in retention_policies(now=now):
        record.policies.append(policy.describe())
        old_steps = Step.objects.filter(
            policy.scope("project_id"), organization_id=policy.organization_id, created_at__lt=policy.cutoff
        )
        for counts in _delete_in_batches(old_steps, batch_size=batch_size):
            record.steps_removed += counts.get(Step._meta.label, 0)
            record.metrics_removed += counts.get(StepMetrics._meta.label, 0)
            record.messages_removed += counts.get(Message._meta.label, 0)
            record.provider_traces_removed += counts.get(ProviderTrace._meta.label, 0)
        # Runs older than the cutoff that no step is left in (their steps just went, or they never had one):
        # a run that old is long finished (a run's hard time limit is minutes), so nothing still writes to it.
        # Walked from the (organization, created_at) index; which of them are empty is checked per batch, in its
        # transaction (steps.runs: one index probe per run and partition, not a scan of the steps).
        old_runs = Run.objects.filter(
            policy.scope("project_id"), organization_id=policy.organization_id, created_at__lt=policy.cutoff
        )
        for counts in _delete_in_batches(old_runs, batch_size=batch_size, delete=runs_delete_empty):
            record.runs_removed += counts.get(Run._meta.label, 0)
            record.messages_removed += counts.get(Message._meta.label, 0)
        if purge_rollups:
            record.rollup_rows_removed += _purge_rollups(policy, batch_size=batch_size)
        record.save()
    record.finished_at = timezone.now()
    record.save()
    return record


STEPS, METRICS, MESSAGES, PROVIDER_TRACES = (table for table, _ in PARTITIONED_TABLES)


def _cutoffs(now: datetime) -> Callable[[str, str | None], datetime | None]:
    """(organization id, project id or None) -> the cutoff of the retention in force there (None: forever)."""
    default = settings.STEPLENS_RETENTION_DAYS
    org_days = dict(Organization.objects.values_list("id", "retention_days"))
    project_days = dict(Project.objects.filter(retention_days__isnull=False).values_list("id", "retention_days"))

    def cutoff(organization_id: str, project_id: str | None) -> datetime | None:
        days = project_days.get(project_id) if project_id is not None else None
        if days is None:
            days = org_days.get(organization_id)
        if days is None:
            days = default
        return None if days is None else now - timedelta(days=days)

    return cutoff


def _distinct(cursor: Any, table: str, column: str, where: str = "TRUE") -> list[Any]:
    """The distinct non-NULL values of an indexed column of one partition: a loose index scan (one probe each)."""
    cursor.execute(
        f'WITH RECURSIVE v AS (SELECT min("{column}") AS x FROM "{table}" WHERE {where} '
        f'UNION ALL SELECT (SELECT min("{column}") FROM "{table}" WHERE {where} AND "{column}" > v.x) FROM v '
        f"WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL"
    )
    return [x for (x,) in cursor.fetchall()]


def _owners(
    names: dict[str, str], *, project_org: dict[str, str], own_days: set[str]
) -> set[tuple[str, str | None]] | None:
    """Who has rows in one interval's partitions: (organization, project or None); None when a step there is still
    pending (it may yet be written to, so the interval is not dropped). A project without retention days of its
    own (not in `own_days`) has its organization's cutoff, so its step-less messages count as (organization,
    None) and their runs are looked up only in organizations with such projects."""
    owners: set[tuple[str, str | None]] = set()
    with connection.cursor() as cursor:
        steps = names[STEPS]
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM \"{steps}\" WHERE status = 'pending')")
        if cursor.fetchone()[0]:
            return None
        for organization_id in _distinct(cursor, steps, "organization_id"):
            cursor.execute(
                f'SELECT EXISTS (SELECT 1 FROM "{steps}" WHERE organization_id = %s AND project_id IS NULL)',
                [organization_id],
            )
            if cursor.fetchone()[0]:
                owners.add((organization_id, None))
        owners |= {(project_org.get(p, ""), p) for p in _distinct(cursor, steps, "project_id")}
        if MESSAGES in names:  # messages without a step are partitioned by their own time: whose runs are they?
            messages = names[MESSAGES]
            cursor.execute(f'SELECT DISTINCT organization_id FROM "{messages}" WHERE step_id IS NULL')
            with_own_days = {project_org.get(p) for p in own_days}
            for (organization_id,) in cursor.fetchall():
                if organization_id not in with_own_days:
                    owners.add((organization_id, None))
                    continue
                cursor.execute(
                    f'SELECT DISTINCT r.project_id FROM (SELECT DISTINCT run_id FROM "{messages}" '
                    f"WHERE step_id IS NULL AND organization_id = %s) m "
                    f"LEFT JOIN {Run._meta.db_table} r ON r.id = m.run_id",
                    [organization_id],
                )
                owners |= {(organization_id, project_id) for (project_id,) in cursor.fetchall()}
    return owners


def _drop_partitions(record: RetentionRun, *, now: datetime) -> None:
    """Drop every partition interval whose rows are all past their retention (see the module docstring)."""
    if not is_partitioned():
        return
    for dropped in partitions_drop_detached():  # what a run that died between detaching and dropping left
        _record_drop(record, dropped)
    cutoff_of = _cutoffs(now)
    project_org = dict(Project.objects.values_list("id", "organization_id"))
    own_days = set(Project.objects.filter(retention_days__isnull=False).values_list("id", flat=True))
    by_bounds: dict[tuple[datetime, datetime], dict[str, str]] = {}
    for partition in partitions_list():
        if not partition.is_default and partition.upper <= now:
            by_bounds.setdefault((partition.lower, partition.upper), {})[partition.table] = partition.name
    for (lower, upper), names in sorted(by_bounds.items()):
        if STEPS not in names:
            continue
        owners = _owners(names, project_org=project_org, own_days=own_days)
        if not owners:  # a step still pending; or empty (kept: a late span of that interval still has a home)
            continue
        cutoffs = [cutoff_of(organization_id, project_id) for organization_id, project_id in owners]
        if any(cutoff is None or cutoff < upper for cutoff in cutoffs):
            continue
        dropped = partitions_drop(
            lower, upper, lock_timeout_ms=settings.STEPLENS_PARTITION_LOCK_TIMEOUT_MS, names=names
        )
        if dropped is not None:
            _record_drop(record, dropped)


def _record_drop(record: RetentionRun, dropped: DroppedPartition) -> None:
    record.partitions_dropped.append(dropped.describe())
    record.steps_removed += dropped.rows.get(STEPS, 0)
    record.metrics_removed += dropped.rows.get(METRICS, 0)
    record.messages_removed += dropped.rows.get(MESSAGES, 0)
    record.provider_traces_removed += dropped.rows.get(PROVIDER_TRACES, 0)
    record.save()


def _purge_rollups(policy: RetentionPolicy, *, batch_size: int) -> int:
    """Remove the rollup rows whose whole bucket (hour or day) ends at or before the cutoff."""
    removed = 0
    for models, span in ((HOUR_ROLLUPS, timedelta(hours=1)), (DAY_ROLLUPS, timedelta(days=1))):
        for model in models:
            old = model.objects.filter(
                policy.scope("project_id", blank_is_none=True),
                organization_id=policy.organization_id,
                bucket__lte=policy.cutoff - span,
            )
            for counts in _delete_in_batches(old, batch_size=batch_size, time_field="bucket"):
                removed += counts.get(model._meta.label, 0)
    return removed
