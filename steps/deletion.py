"""Deletion of the steps matching a filter: their metrics, messages, provider traces, the runs left empty, and
what they added to every rollup.

A job (DeletionJob) walks the matching steps in id order, STEPLENS_DELETION_BATCH_SIZE at a time. Each batch is
one transaction that locks the steps, subtracts them from the rollups, deletes them with their children, deletes
the runs left empty and moves the job's cursor: a worker that dies mid-batch leaves nothing half done, and running
the job again (or twice at once) finds only the steps still there.

Rows: a batch's steps are grouped per partition interval (steps.partitions) and each DELETE of the steps or of
their metrics, messages and provider traces is bounded by its interval's created_at (step_created_at), so on
PostgreSQL it touches that one partition; the deletes are direct (Django's collector would look the children up
again by step id alone, in every partition). The runs left empty go with their messages of no step
(steps.runs.runs_delete_empty, shared with retention).

Rollups: the usage and subject rollups get the deleted steps' own rows (steps.rollups: usage_rows,
subject_rows, the recording path's rules) with the sign turned, and rows left with no step are removed. The
errors rollups keep a first/last seen time and an example step id that cannot be subtracted, so the rows the
deleted failed steps fell in (hour and key, then day and key) are rebuilt from the steps left
(steps.rollups.errors_rollups_refresh: the rebuild's queries restricted to those keys).
"""

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.http import QueryDict
from django.utils import timezone

from accounts.models import Organization
from agents.models import Run
from config.errors import ApplicationError
from steps.filters import is_filter_param
from steps.models import (
    DeletionJob,
    DeletionStatus,
    Message,
    ProviderTrace,
    Step,
    StepMetrics,
    StepRollupDay,
    StepRollupHour,
    SubjectRollupDay,
    SubjectRollupHour,
)
from steps.partitions import partition_floor, partition_interval
from steps.rollups import (
    MEASURE_COLUMNS,
    day_of,
    errors_rollups_refresh,
    hour_of,
    multi_row_upsert,
    subject_rows,
    upsert_sql,
    usage_rows,
)
from steps.runs import runs_delete_empty
from steps.selectors import step_queryset

# The rollups a step's measures are summed into: table, bucket, the recording path's row rule.
_MEASURED = (
    (StepRollupHour, hour_of, usage_rows),
    (StepRollupDay, day_of, usage_rows),
    (SubjectRollupHour, hour_of, subject_rows),
    (SubjectRollupDay, day_of, subject_rows),
)


# Filter parameters that only change how another filter matches: alone they would match every step.
_MODIFIERS = {"tags_match"}


def _filters_of(params: QueryDict | dict[str, Any]) -> dict[str, list[str]]:
    """The step filters among `params`, non-empty values only, as {name: [values]}."""
    out: dict[str, list[str]] = {}
    for name in params:
        if is_filter_param(name):
            raw = params.getlist(name) if isinstance(params, QueryDict) else params[name]
            values = [str(v) for v in (raw if isinstance(raw, list) else [raw]) if str(v) != ""]
            if values:
                out[name] = values
    return out


def _matching(job: DeletionJob) -> Any:
    organization = Organization.objects.get(pk=job.organization_id)
    organization.scoped_project_id = job.project_scope or None
    params = QueryDict(mutable=True)
    for name, values in job.filters.items():
        params.setlist(name, values)
    return step_queryset(organization=organization, filters=params)


@transaction.atomic
def deletion_create(*, organization: Organization, params: QueryDict | dict[str, Any]) -> DeletionJob:
    """Start deleting `organization`'s steps matching the GET /v1/steps filters in `params` (invalid: 400).

    At least one filter is required: an empty filter would match every step of the organization."""
    filters = _filters_of(params)
    if not set(filters) - _MODIFIERS:
        raise ApplicationError(
            "A deletion needs at least one step filter (e.g. user_id, run_id, request_id, trace_id, project_id).",
            extra={"filter": ["At least one filter of GET /v1/steps is required."]},
        )
    job = DeletionJob(organization=organization, filters=filters, project_scope=organization.scoped_project_id or "")
    job.steps_total = _matching(job).count()  # validates the filters too (400 naming the field)
    job.save()
    return job


def _subtract_rollups(steps: list[Step]) -> None:
    """Take `steps` (locked, about to be deleted) out of every rollup."""
    for model, bucket_of_step, rows_of in _MEASURED:
        rows = rows_of(steps, bucket_of_step)
        if not rows:
            continue
        for row in rows:
            for name in MEASURE_COLUMNS:
                row[name] = -row[name]
        sql, columns = upsert_sql(model)
        with connection.cursor() as cursor:
            cursor.execute(*multi_row_upsert(model, columns, sql, rows))
        # Only the rows just touched can have reached zero. The subject rollups' key leads with (organization, kind):
        # without the kind the delete read every row of the organization in those buckets.
        by_key: dict[tuple[str, str | None], tuple[set[datetime], set[str]]] = {}
        for row in rows:
            buckets, subjects = by_key.setdefault((row["organization_id"], row.get("kind")), (set(), set()))
            buckets.add(row["bucket"])
            if "subject_id" in row:
                subjects.add(row["subject_id"])
        for (organization_id, kind), (buckets, subjects) in by_key.items():
            empty = model.objects.filter(organization_id=organization_id, bucket__in=buckets, steps__lte=0)
            if kind is not None:
                empty = empty.filter(kind=kind, subject_id__in=subjects)
            empty.delete()


# The tables a step's rows live in besides its own, keyed by step_id and, on PostgreSQL, partitioned like the steps
# by step_created_at (the step's created_at). Every model with a foreign key to Step (all on_delete=CASCADE).
_CHILDREN = (StepMetrics, Message, ProviderTrace)


def _by_partition(rows: list[tuple[str, datetime]]) -> list[tuple[datetime, datetime, list[str]]]:
    """(step id, created_at) pairs grouped per partition interval: [lower, upper) and the ids in it, in order.

    A statement bounded by one interval's created_at touches that partition only (or the DEFAULT one), where the
    step id alone would probe every partition's index. On SQLite the groups are mere ranges."""
    interval, groups = partition_interval(), {}
    for pk, created_at in rows:
        groups.setdefault(partition_floor(created_at), []).append(pk)
    return [(lower, lower + interval, ids) for lower, ids in sorted(groups.items())]


def _lock_batch(queryset: Any, batch_size: int) -> tuple[list[Step], str | None]:
    """The next `batch_size` matching steps in id order, locked (partition by partition), and the last id read
    (None: none left). A step deleted meanwhile is not among them."""
    rows = list(queryset.order_by("pk").values_list("pk", "created_at")[:batch_size])
    steps: list[Step] = []
    for lower, upper, ids in _by_partition(rows):
        steps += Step.objects.select_for_update().filter(pk__in=ids, created_at__gte=lower, created_at__lt=upper)
    steps.sort(key=lambda step: step.pk)
    return steps, rows[-1][0] if rows else None


def _delete_rows(groups: list[tuple[datetime, datetime, list[str]]]) -> dict[str, int]:
    """Delete the steps of `groups` and their children, partition by partition; rows deleted per model label.

    Straight DELETEs (no collector: it would look the children up again by step_id alone, in every partition).
    The children go first; nothing else references a step."""
    counts: dict[str, int] = {}
    using = connection.alias
    for lower, upper, ids in groups:
        for model in _CHILDREN:
            children = model.objects.filter(step_id__in=ids, step_created_at__gte=lower, step_created_at__lt=upper)
            counts[model._meta.label] = counts.get(model._meta.label, 0) + children._raw_delete(using)
        steps = Step.objects.filter(pk__in=ids, created_at__gte=lower, created_at__lt=upper)
        counts[Step._meta.label] = counts.get(Step._meta.label, 0) + steps._raw_delete(using)
    return counts


def _batch(job: DeletionJob, batch_size: int) -> bool:
    """Delete the next batch; False when there is none left."""
    with transaction.atomic():
        job = DeletionJob.objects.select_for_update().get(pk=job.pk)
        if job.status == DeletionStatus.SUCCEEDED:
            return False
        queryset = _matching(job)
        if job.cursor:
            queryset = queryset.filter(pk__gt=job.cursor)
        steps, last_id = _lock_batch(queryset, batch_size)
        if last_id is None:
            job.status = DeletionStatus.SUCCEEDED
            job.finished_at = job.updated_at = timezone.now()
            job.save(update_fields=["status", "finished_at", "updated_at"])
            return False
        _subtract_rollups(steps)
        counts = _delete_rows(_by_partition([(s.pk, s.created_at) for s in steps]))
        errors_rollups_refresh(steps=steps)
        run_counts = runs_delete_empty(sorted({s.run_id for s in steps if s.run_id}))
        job.cursor = last_id
        job.status = DeletionStatus.RUNNING
        job.error = ""
        job.steps_deleted += counts.get(Step._meta.label, 0)
        job.messages_deleted += counts.get(Message._meta.label, 0) + run_counts.get(Message._meta.label, 0)
        job.provider_traces_deleted += counts.get(ProviderTrace._meta.label, 0)
        job.runs_deleted += run_counts.get(Run._meta.label, 0)
        job.updated_at = timezone.now()
        job.save()
        return True


def deletion_run(*, job_id: str, batch_size: int | None = None) -> DeletionJob:
    """Run (or resume) a deletion job to the end; safe to call again after a crash or when it already ended."""
    batch_size = batch_size or settings.STEPLENS_DELETION_BATCH_SIZE
    job = DeletionJob.objects.get(pk=job_id)
    if job.status != DeletionStatus.SUCCEEDED:
        DeletionJob.objects.filter(pk=job_id).update(attempts=F("attempts") + 1, updated_at=timezone.now())
    try:
        while _batch(job, batch_size):
            pass
    except Exception as exc:
        # The batch that raised rolled back whole; `failed` tells whoever looks, and the sweep (or running the job
        # again) resumes it at its cursor.
        DeletionJob.objects.filter(pk=job_id).update(
            status=DeletionStatus.FAILED, error=type(exc).__name__, updated_at=timezone.now()
        )
        raise
    return DeletionJob.objects.get(pk=job_id)


def deletions_to_resume(*, now: datetime) -> list[str]:
    """Jobs to start again: not finished, nothing done for STEPLENS_DELETION_RESUME_SECONDS (a task the broker lost,
    a worker gone for good, a batch that failed on a database outage), fewer than STEPLENS_DELETION_MAX_ATTEMPTS
    starts so far. A job that fails that many times stays `failed` with its error, for a person to look at."""
    stale_before = now - timedelta(seconds=settings.STEPLENS_DELETION_RESUME_SECONDS)
    return list(
        DeletionJob.objects.filter(
            status__in=[DeletionStatus.PENDING, DeletionStatus.RUNNING, DeletionStatus.FAILED],
            updated_at__lt=stale_before,
            attempts__lt=settings.STEPLENS_DELETION_MAX_ATTEMPTS,
        )
        .order_by("updated_at")
        .values_list("pk", flat=True)
    )


def deletion_get(*, organization: Organization, job_id: str) -> DeletionJob:
    job = DeletionJob.objects.filter(organization=organization, pk=job_id).first()
    if job is None:
        raise ApplicationError("Deletion not found.", extra={"id": ["Not found."]}, status_code=404)
    return job


def deletion_progress(job: DeletionJob) -> float:
    """The share of the steps matching at the start that are gone (1.0 once the job succeeded)."""
    if job.status == DeletionStatus.SUCCEEDED:
        return 1.0
    return round(min(1.0, job.steps_deleted / job.steps_total), 4) if job.steps_total else 0.0
