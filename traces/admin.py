from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from traces.models import IngestBatch
from traces.services import trace_batches_retry


@admin.register(IngestBatch)
class IngestBatchAdmin(admin.ModelAdmin):
    """The durable OTLP ingest queue: what was accepted, what was mapped, and why a batch failed."""

    list_display = [
        "id", "organization", "project", "status", "span_count", "rejected_at_accept", "body_bytes", "attempts",
        "received_at", "processed_at", "short_error",
    ]  # fmt: skip
    list_filter = ["status", "organization"]
    readonly_fields = [f.name for f in IngestBatch._meta.fields if f.name != "body"]
    exclude = ["body"]
    actions = ["retry_failed"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: IngestBatch | None = None) -> bool:
        return False

    @admin.display(description="error")
    def short_error(self, obj: IngestBatch) -> str:
        return (obj.error or "")[:120]

    @admin.action(description="Map the selected failed batches again")
    def retry_failed(self, request: HttpRequest, queryset: QuerySet) -> None:
        queued = trace_batches_retry(batch_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{queued} failed batch(es) queued again.", messages.SUCCESS)
