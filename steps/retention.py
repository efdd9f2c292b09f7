"""Retention: remove raw step records older than each organization's (or project's) retention, in short batches.

Which retention applies to a step: its project's `retention_days` when set, else its organization's, else the
`STEPLENS_RETENTION_DAYS` default; empty everywhere means keep forever. Each batch (at most
STEPLENS_RETENTION_BATCH_SIZE steps) is its own short transaction, so no lock is held for long and ingest and
reads go on meanwhile; a crash mid-way loses nothing, the next run picks up where the last one stopped.

The usage, errors and subject rollups are NOT touched by default: they are small (one row per hour and
dimension), and keeping them is what lets last year's costs still add up after the raw rows are gone. Pass
`purge_rollups=True` (`manage.py apply_retention --rollups`) to remove the rollup rows whose whole bucket is
older than the cutoff too.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
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


def _delete_in_batches(queryset: QuerySet, *, batch_size: int) -> Iterator[dict[str, int]]:
    """Delete `queryset`'s rows oldest first, `batch_size` at a time, each batch its own transaction."""
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return
        with transaction.atomic():
            _, counts = queryset.model.objects.filter(pk__in=ids).delete()
        yield counts
        if len(ids) < batch_size:
            return


def retention_apply(
    *, now: datetime | None = None, purge_rollups: bool = False, batch_size: int | None = None
) -> RetentionRun:
    """Apply every retention once and record what was removed (one RetentionRun row, saved after each policy)."""
    now = now or timezone.now()
    batch_size = batch_size or settings.STEPLENS_RETENTION_BATCH_SIZE
    record = RetentionRun.objects.create(started_at=now, purge_rollups=purge_rollups)
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
        empty_runs = Run.objects.filter(
            policy.scope("project_id"), organization_id=policy.organization_id, created_at__lt=policy.cutoff
        ).filter(~Exists(Step.objects.filter(run_id=OuterRef("pk"))))
        for counts in _delete_in_batches(empty_runs, batch_size=batch_size):
            record.runs_removed += counts.get(Run._meta.label, 0)
            record.messages_removed += counts.get(Message._meta.label, 0)
        if purge_rollups:
            record.rollup_rows_removed += _purge_rollups(policy, batch_size=batch_size)
        record.save()
    record.finished_at = timezone.now()
    record.save()
    return record


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
            for counts in _delete_in_batches(old, batch_size=batch_size):
                removed += counts.get(model._meta.label, 0)
    return removed
