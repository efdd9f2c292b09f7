"""Staged OTLP batches: the durable ingest queue. (ProviderTrace is a steps model: steps.models.)"""

from django.db import models
from django.db.models import Q

from accounts.models import Organization, Project


class IngestBatchStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


PENDING_BATCH_STATUSES = (IngestBatchStatus.QUEUED, IngestBatchStatus.PROCESSING)


class IngestBatch(models.Model):
    """One accepted OTLP export request, stored as received before any mapping: the durable ingest queue.

    POST /v1/traces commits a row here (status queued) and answers 2xx; a worker on the `ingest` queue claims it
    (processing, attempts + 1), maps its spans onto runs and steps and marks it done (the body is then dropped),
    or failed with the reason. A batch left queued or processing by a lost task or a killed worker is picked up
    again by the sweep; mapping is idempotent on (trace_id, span_id), so doing a batch twice stores nothing twice.
    `project` is the project the sending API key is limited to: every step and run of the batch goes there.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="ingest_batches")
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="ingest_batches",
        help_text="The sending key's project: the batch's steps and runs are stored there (empty: none).",
    )  # fmt: skip
    content_type = models.CharField(max_length=64)
    content_encoding = models.CharField(max_length=16, default="identity", help_text="identity or gzip.")
    body = models.BinaryField(help_text="The request body as received (emptied once the batch is done).")
    body_bytes = models.PositiveIntegerField(default=0, help_text="Size of the body as received.")
    span_count = models.PositiveIntegerField(default=0)
    rejected_at_accept = models.PositiveIntegerField(
        default=0, help_text="Spans already reported as rejected in the OTLP response (bad ids, times, counts)."
    )
    status = models.CharField(max_length=16, choices=IngestBatchStatus.choices, default=IngestBatchStatus.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True, default="", help_text="Why the batch failed, or what mapping rejected.")
    result = models.JSONField(null=True, blank=True, help_text="accepted, rejected, steps and runs created.")
    received_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "ingest batches"
        indexes = [
            # The backlog: what workers claim, the sweep re-enqueues and the backpressure check sums.
            models.Index(
                fields=["status", "id"], name="ingestbatch_pending", condition=Q(status__in=PENDING_BATCH_STATUSES)
            ),
            models.Index(fields=["received_at"], name="ingestbatch_received"),
        ]

    def __str__(self) -> str:
        return f"ingest batch {self.pk} ({self.status}, {self.span_count} spans)"
