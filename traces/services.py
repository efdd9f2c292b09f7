"""Writes of the OTLP ingest: staging accepted export requests (IngestBatch) and mapping them onto steps.

Provider traces are a steps model: their writes are steps.provider_traces."""

import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from accounts.models import Organization
from config.errors import ApplicationError
from config.metrics import ingest_spans_mapped_record, ingest_spans_rejected_record
from traces.models import PENDING_BATCH_STATUSES, IngestBatch, IngestBatchStatus

if TYPE_CHECKING:
    from traces.ingest.decode import DecodeLimits, OtlpSpan

logger = logging.getLogger(__name__)
# Errors a retry can cure: the connection, a deadlock or serialization failure, an insert race lost to another
# writer. Anything else fails the batch with its reason.
_TRANSIENT = (OperationalError, InterfaceError, IntegrityError)


# --- OTLP ingest ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class IngestResult:
    """What an OTLP export request came to: spans accepted and rejected, and why some were rejected."""

    accepted: int
    rejected: int
    message: str
    steps_created: int = 0
    runs_created: int = 0


def trace_ingest(
    *, organization: Organization, spans: Sequence["OtlpSpan"], project_id: str | None = None
) -> IngestResult:
    """Map OTLP spans onto Runs, Steps, Messages and ProviderTraces of `organization`, in one transaction.

    With `project_id` (default: the project the request's API key is limited to, if any) every step and run
    stored goes into that project, whatever the spans say.

    LLM spans become finished or failed steps, `invoke_agent` spans runs (and agents), `execute_tool` spans tool
    timings and tool messages of the step that asked for them. Other spans are accepted and ignored. A span that
    cannot be used is counted as rejected with a reason; the rest is stored. Idempotent on (trace_id, span_id):
    sending the same spans again creates nothing. Returns only after the transaction committed.
    """
    # Imported here: the writer imports this module (IngestResult, rejection_message).
    from traces.ingest.writer import ingest_spans

    if project_id is None:
        project_id = getattr(organization, "scoped_project_id", None)
    return ingest_spans(organization=organization, spans=spans, project_id=project_id)


# --- OTLP ingest: durable staging -----------------------------------------------------------------------------------
# POST /v1/traces stores the request body as one IngestBatch row and answers after the commit; workers on the
# `ingest` queue map batches through trace_ingest's writer, several at a time in one transaction.

_MAX_REASONS = 3
_MAX_ERROR = 10_000


class IngestOverloaded(ApplicationError):
    """Too much accepted but not yet mapped: the client keeps its batch and retries after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra=extra, status_code=503)
        self.retry_after = retry_after


@dataclass(slots=True)
class BatchAccepted:
    """An accepted export request: its batch, and the spans rejected (with reasons) when it was accepted.

    `result` is set when the batch was also mapped before returning (embedded mode, eager tasks).
    """

    batch_id: int
    span_count: int
    rejected: int
    message: str
    result: IngestResult | None = None


def rejection_message(
    rejected: int, reasons: dict[str, int], dropped: int = 0, *, cut: Sequence[str] = (), traces_cut: int = 0
) -> str:
    """The partial-success message: how many spans were rejected and the most common reasons, and what was cut
    to the limits (attribute values, provider traces)."""
    parts = []
    if rejected:
        top = sorted(reasons.items(), key=lambda item: -item[1])[:_MAX_REASONS]
        parts.append(f"{rejected} span(s) rejected: " + "; ".join(f"{reason} ({n})" for reason, n in top))
    if dropped:
        parts.append(f"{dropped} message(s) with unusable content were skipped")
    if cut:
        names = ", ".join(sorted(set(cut))[:_MAX_REASONS])
        parts.append(
            f"{len(cut)} attribute value(s) truncated to STEPLENS_OTLP_MAX_ATTRIBUTE_BYTES "
            f"({settings.STEPLENS_OTLP_MAX_ATTRIBUTE_BYTES} bytes): {names}"
        )
    if traces_cut:
        parts.append(
            f"{traces_cut} provider trace(s) truncated to STEPLENS_PROVIDER_TRACE_MAX_BYTES "
            f"({settings.STEPLENS_PROVIDER_TRACE_MAX_BYTES} bytes)"
        )
    return ". ".join(parts)


def ingest_backlog() -> tuple[int, int]:
    """(batches, body bytes) accepted but not yet mapped: queued or processing."""
    totals = IngestBatch.objects.filter(status__in=PENDING_BATCH_STATUSES).aggregate(n=Count("id"), b=Sum("body_bytes"))
    return totals["n"] or 0, totals["b"] or 0


def _check_backlog(incoming_bytes: int) -> None:
    max_batches, max_bytes = settings.STEPLENS_OTLP_BACKLOG_MAX_BATCHES, settings.STEPLENS_OTLP_BACKLOG_MAX_BYTES
    if not max_batches and not max_bytes:
        return
    batches, size = ingest_backlog()
    if (max_batches and batches >= max_batches) or (max_bytes and size + incoming_bytes > max_bytes):
        raise IngestOverloaded(
            "Ingest backlog is full; retry later.",
            retry_after=settings.STEPLENS_OTLP_RETRY_AFTER_SECONDS,
            extra={"backlog_batches": batches, "backlog_bytes": size},
        )


def _decode_limits() -> "DecodeLimits":
    from traces.ingest.decode import DecodeLimits

    return DecodeLimits(
        max_body_bytes=settings.STEPLENS_OTLP_MAX_BODY_BYTES,
        max_spans=settings.STEPLENS_OTLP_MAX_SPANS_PER_REQUEST,
        max_attribute_bytes=settings.STEPLENS_OTLP_MAX_ATTRIBUTE_BYTES,
    )


def _decode(body: bytes, *, content_type: str, content_encoding: str) -> list["OtlpSpan"]:
    from traces.ingest.decode import decode_request, spans_from_request

    limits = _decode_limits()
    request = decode_request(body, content_type=content_type, content_encoding=content_encoding, limits=limits)
    return spans_from_request(request, max_attribute_bytes=limits.max_attribute_bytes)


def trace_batch_accept(
    *, organization: Organization, body: bytes, content_type: str, content_encoding: str = "identity"
) -> BatchAccepted:
    """Validate an OTLP export request cheaply and store it as one queued IngestBatch; mapping happens later.

    Raises IngestOverloaded (503) when the backlog is over its limits, and the decode errors (400, 413: body,
    inflated body or span count over the limits) for a malformed or oversized body; nothing is stored then. Spans
    with bad ids, times or token counts are reported as rejected now, attribute values that will be cut to
    STEPLENS_OTLP_MAX_ATTRIBUTE_BYTES are named. A request without spans stores nothing. Returns after the batch
    is committed; a worker is asked to map it once the commit is done. With eager tasks (embedded mode) the batch
    is mapped before this returns, so its steps are queryable. A key limited to a project (the organization's
    `scoped_project_id`) stores the batch with that project, and its mapping puts every step and run there.
    """
    from traces.ingest.decode import decode_request, spans_for_precheck
    from traces.ingest.mapping import PRECHECK_KEYS, SpanRejected, span_precheck

    _check_backlog(len(body))
    limits = _decode_limits()
    request = decode_request(body, content_type=content_type, content_encoding=content_encoding, limits=limits)
    spans = spans_for_precheck(request, keys=PRECHECK_KEYS, max_attribute_bytes=limits.max_attribute_bytes)
    del request  # the parsed request can be as big as the body: not kept while the batch is written
    rejected, reasons, cut = 0, defaultdict(int), []
    for span in spans:
        cut += span.cut_attributes
        try:
            span_precheck(span)
        except SpanRejected as exc:
            rejected += 1
            reasons[str(exc)] += 1
    message = rejection_message(rejected, reasons, cut=cut)
    if not spans:
        return BatchAccepted(batch_id=0, span_count=0, rejected=0, message=message)
    with transaction.atomic():
        batch = IngestBatch.objects.create(
            organization=organization,
            project_id=getattr(organization, "scoped_project_id", None) or None,
            content_type=content_type,
            content_encoding="gzip" if content_encoding == "gzip" else "identity",
            body=body,
            body_bytes=len(body),
            span_count=len(spans),
            rejected_at_accept=rejected,
            error=message,
        )
        if not settings.CELERY_TASK_ALWAYS_EAGER:
            _enqueue([batch.pk])
    accepted = BatchAccepted(batch_id=batch.pk, span_count=len(spans), rejected=rejected, message=message)
    if settings.CELERY_TASK_ALWAYS_EAGER:
        # Embedded mode: no worker; map now, after the commit, exactly as a worker would. The batch is stored
        # either way: a database hiccup here leaves it queued for the sweep, and the answer stays 2xx.
        try:
            trace_batches_process(batch_id=batch.pk, limit=1)
        except _TRANSIENT:
            logger.warning("Ingest batch %s stays queued: mapping it failed", batch.pk, exc_info=True)
            return accepted
        batch.refresh_from_db(fields=["status", "result", "error"])
        if batch.status == IngestBatchStatus.DONE and batch.result:
            accepted.result = IngestResult(**batch.result)
    return accepted


def _enqueue(batch_ids: Sequence[int]) -> None:
    from traces.tasks import process_ingest_batches

    for batch_id in batch_ids:
        transaction.on_commit(lambda batch_id=batch_id: process_ingest_batches.delay(batch_id=batch_id))


# A claimed batch is `processing`, and the transaction mapping it holds a lock on its row. A claim whose
# transaction is gone (the database restarted, the connection dropped, the worker was killed) has no lock: the
# next task or sweep releases it at once instead of waiting for the lease. Claims younger than this are left
# alone: their worker may be between committing the claim and taking the lock (if it was slower than that, the
# batch is merely claimed again by someone: the first worker finds its claim gone and skips it).
_CLAIM_GRACE_SECONDS = 1


def _claim(batch_id: int | None, limit: int) -> tuple[datetime, list[int]]:
    """Mark up to `limit` queued batches (`batch_id` first) as processing, skipping ones another worker holds, and
    no more than one request's worth (STEPLENS_OTLP_MAX_BODY_BYTES, STEPLENS_OTLP_MAX_SPANS_PER_REQUEST) beyond the
    first, so a worker's memory stays bounded. Returns the claim's time, which identifies it, and the ids."""
    claimed_at = timezone.now()
    with transaction.atomic():
        queued = IngestBatch.objects.select_for_update(skip_locked=True).filter(
            status=IngestBatchStatus.QUEUED, attempts__lt=settings.STEPLENS_OTLP_BATCH_MAX_ATTEMPTS
        )
        fields = ("pk", "body_bytes", "span_count")
        rows = list(queued.filter(pk=batch_id).values_list(*fields)) if batch_id is not None else []
        if len(rows) < limit:
            others = queued.exclude(pk__in=[row[0] for row in rows]).order_by("pk")
            rows += list(others.values_list(*fields)[: limit - len(rows)])
        ids, size, spans = [], 0, 0
        for pk, body_bytes, span_count in rows:
            size, spans = size + body_bytes, spans + span_count
            if ids and (
                size > settings.STEPLENS_OTLP_MAX_BODY_BYTES or spans > settings.STEPLENS_OTLP_MAX_SPANS_PER_REQUEST
            ):
                break
            ids.append(pk)
        if ids:
            IngestBatch.objects.filter(pk__in=ids).update(
                status=IngestBatchStatus.PROCESSING, attempts=F("attempts") + 1, claimed_at=claimed_at
            )
    return claimed_at, ids


def _release_orphaned_claims() -> int:
    """Put batches back to queued whose claim died with its transaction (no lock held on them); returns how many.

    PostgreSQL only: SQLite has no row locks to tell a live claim from a dead one, so there the lease decides.
    """
    if not connection.features.has_select_for_update_skip_locked:
        return 0
    cutoff = timezone.now() - timedelta(seconds=_CLAIM_GRACE_SECONDS)
    with transaction.atomic():
        orphans = list(
            IngestBatch.objects.select_for_update(skip_locked=True)
            .filter(status=IngestBatchStatus.PROCESSING, claimed_at__lt=cutoff)
            .values_list("pk", flat=True)
        )
        if orphans:
            IngestBatch.objects.filter(pk__in=orphans).update(status=IngestBatchStatus.QUEUED)
    return len(orphans)


def _finish(batch: IngestBatch, result: IngestResult) -> None:
    IngestBatch.objects.filter(pk=batch.pk).update(
        status=IngestBatchStatus.DONE,
        body=b"",
        result=asdict(result),
        error=result.message[:_MAX_ERROR],
        processed_at=timezone.now(),
    )


def _fail(batch_id: int, error: str) -> None:
    IngestBatch.objects.filter(pk=batch_id).update(
        status=IngestBatchStatus.FAILED, error=error[:_MAX_ERROR], processed_at=timezone.now()
    )


def _map_group(organization: Organization, batches: list[IngestBatch]) -> None:
    """Map batches of one organization and one project (the sending key's, or none) together; when that fails,
    each alone, so one bad batch fails alone."""
    from traces.ingest.writer import ingest_span_groups

    groups, mapped = [], []
    for batch in batches:
        try:
            spans = _decode(bytes(batch.body), content_type=batch.content_type, content_encoding=batch.content_encoding)
        except ApplicationError as exc:  # it decoded when accepted; a changed limit or a damaged row
            _fail(batch.pk, exc.message)
            continue
        groups.append(spans)
        mapped.append(batch)
    if not mapped:
        return
    try:
        with transaction.atomic():
            results = ingest_span_groups(organization=organization, groups=groups, project_id=mapped[0].project_id)
    except _TRANSIENT:
        raise
    except Exception as exc:
        if len(mapped) == 1:
            logger.exception("Ingest batch %s failed", mapped[0].pk)
            _fail(mapped[0].pk, f"{type(exc).__name__}: {exc}")
            return
        for batch in mapped:
            _map_group(organization, [batch])
        return
    for batch, result in zip(mapped, results, strict=True):
        _finish(batch, result)
    # Counted once the mapping is durable (at once when no transaction encloses this one). The spans refused at
    # accept time were counted by the ingest view already; mapping reports them again in `rejected`.
    spans_mapped = sum(result.accepted for result in results)
    refused_by_mapping = sum(
        max(result.rejected - batch.rejected_at_accept, 0) for batch, result in zip(mapped, results, strict=True)
    )

    def count() -> None:
        ingest_spans_mapped_record(mapped=spans_mapped)
        if refused_by_mapping:
            ingest_spans_rejected_record(rejected=refused_by_mapping, reason="mapping")

    transaction.on_commit(count)


def trace_batches_process(*, batch_id: int | None = None, limit: int | None = None) -> int:
    """Claim queued batches (`batch_id` first, up to `limit`, default STEPLENS_OTLP_CLAIM_BATCHES) and map them
    in one transaction; returns how many were claimed.

    First, claims whose worker lost its transaction (a database restart, a dropped connection, a killed worker)
    are released, so work claimed when the database went away is mapped as soon as it is back. The mapping
    transaction locks the claimed rows: its claim lives exactly as long as it does. A batch that cannot be
    mapped (malformed after all, invalid content, a bug) ends failed with the reason and its body kept. On a
    database error (connection, deadlock, a lost insert race) the claimed batches go back to queued (by this
    call, or, when the database is gone, by the next call or sweep once it is back) and the error propagates,
    for the task to retry.
    """
    _release_orphaned_claims()
    claimed_at, claimed = _claim(batch_id, limit or settings.STEPLENS_OTLP_CLAIM_BATCHES)
    if not claimed:
        return 0
    try:
        with transaction.atomic():
            # Batches of one organization and one project map together (the project is the sending key's).
            by_org: dict[tuple[str, str], list[IngestBatch]] = defaultdict(list)
            mine = (
                IngestBatch.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("organization")
                .filter(pk__in=claimed, status=IngestBatchStatus.PROCESSING, claimed_at=claimed_at)
                .order_by("pk")
            )
            for batch in mine:
                by_org[(batch.organization_id, batch.project_id or "")].append(batch)
            for key in sorted(by_org):
                _map_group(by_org[key][0].organization, by_org[key])
    except _TRANSIENT:
        with contextlib.suppress(DatabaseError, InterfaceError):  # the database is gone: released once it is back
            IngestBatch.objects.filter(
                pk__in=claimed, status=IngestBatchStatus.PROCESSING, claimed_at=claimed_at
            ).update(status=IngestBatchStatus.QUEUED)
        raise
    return len(claimed)


def trace_batches_sweep() -> dict[str, int]:
    """Recover what lost tasks and killed workers left behind, and drop old finished batches.

    Claims whose transaction is gone go back to queued at once (PostgreSQL: no lock held on them); batches
    processing for longer than STEPLENS_OTLP_BATCH_LEASE_SECONDS go back to queued (or to failed after
    STEPLENS_OTLP_BATCH_MAX_ATTEMPTS claims: a batch that keeps killing its worker); batches queued for longer than
    STEPLENS_OTLP_REQUEUE_AFTER_SECONDS get a task again (the broker may have lost theirs); done batches older
    than STEPLENS_OTLP_BATCH_RETENTION_HOURS are deleted. Safe to run at any time, from any number of places.
    """
    released = _release_orphaned_claims()
    now = timezone.now()
    max_attempts = settings.STEPLENS_OTLP_BATCH_MAX_ATTEMPTS
    stale = Q(status=IngestBatchStatus.PROCESSING) & Q(
        claimed_at__lt=now - timedelta(seconds=settings.STEPLENS_OTLP_BATCH_LEASE_SECONDS)
    )
    gave_up = IngestBatch.objects.filter(stale | Q(status=IngestBatchStatus.QUEUED), attempts__gte=max_attempts).update(
        status=IngestBatchStatus.FAILED,
        error=f"Gave up after {max_attempts} attempts: mapping it failed or its worker was lost each time.",
        processed_at=now,
    )
    requeued = IngestBatch.objects.filter(stale, attempts__lt=max_attempts).update(status=IngestBatchStatus.QUEUED)
    waiting = list(
        IngestBatch.objects.filter(
            Q(received_at__lt=now - timedelta(seconds=settings.STEPLENS_OTLP_REQUEUE_AFTER_SECONDS))
            | Q(claimed_at__isnull=False),
            status=IngestBatchStatus.QUEUED,
            attempts__lt=max_attempts,
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    # One task claims up to STEPLENS_OTLP_CLAIM_BATCHES batches, so one task per that many is enough.
    tasks = waiting[:: max(1, settings.STEPLENS_OTLP_CLAIM_BATCHES)]
    with transaction.atomic():
        _enqueue(tasks)
    retention = now - timedelta(hours=settings.STEPLENS_OTLP_BATCH_RETENTION_HOURS)
    purged, _ = IngestBatch.objects.filter(status=IngestBatchStatus.DONE, processed_at__lt=retention).delete()
    return {"released": released, "requeued": requeued, "failed": gave_up, "enqueued": len(tasks), "purged": purged}


def trace_batches_retry(*, batch_ids: Sequence[int]) -> int:
    """Queue failed batches again (an admin action, e.g. after a fix); returns how many were queued."""
    with transaction.atomic():
        ids = list(
            IngestBatch.objects.filter(pk__in=batch_ids, status=IngestBatchStatus.FAILED)
            .exclude(body=b"")
            .values_list("pk", flat=True)
        )
        IngestBatch.objects.filter(pk__in=ids).update(status=IngestBatchStatus.QUEUED, attempts=0, claimed_at=None)
        if not settings.CELERY_TASK_ALWAYS_EAGER:
            _enqueue(ids)
    if settings.CELERY_TASK_ALWAYS_EAGER:
        for batch_id in ids:
            trace_batches_process(batch_id=batch_id, limit=1)
    return len(ids)
