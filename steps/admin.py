"""Admin registrations for the step records: fields, exact-id search, permissions and actions through services.

Steps are written by the agent loop and the OTLP ingest only (steps.services), so the admin never
adds or edits them; feedback goes through `step_set_feedback`, like the API's PATCH. The console app
(console/admin.py) puts its columns, filters, paginator and pages on top of these classes.
"""

from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from accounts.models import Organization
from steps.models import Message, ProviderTrace, Step, StepMetrics
from steps.services import step_set_feedback


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "model_handle", "status", "stop_reason", "error_type", "request_id"]
    search_fields = ["=id", "=request_id", "=trace_id", "=run__id"]
    search_help_text = "Exact step id, request id, trace id or run id."
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    ordering = ["-created_at", "-id"]
    actions = ["mark_positive", "mark_negative", "clear_feedback"]
    raw_id_fields = ["agent", "run", "project"]

    # Steps come from the write path; the admin shows them.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        """Exact matches on the indexed ids (the admin's `=field` would compare UPPER() and skip the indexes)."""
        terms = search_term.split()
        if not terms:
            return queryset, False
        for term in terms:
            queryset = queryset.filter(Q(pk=term) | Q(request_id=term) | Q(trace_id=term) | Q(run_id=term))
        return queryset, False

    # --- actions (through the service the API uses) ---

    def _feedback(self, request: HttpRequest, queryset: QuerySet, value: str | None) -> None:
        changed = 0
        for step_id, organization_id in queryset.values_list("pk", "organization_id")[:1000]:
            step_set_feedback(
                organization=Organization(pk=organization_id), step_id=step_id, feedback=value, set_feedback=True
            )
            changed += 1
        messages.success(request, f"Feedback set on {changed} step(s).")

    @admin.action(description="Mark feedback positive", permissions=["feedback"])
    def mark_positive(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._feedback(request, queryset, "positive")

    @admin.action(description="Mark feedback negative", permissions=["feedback"])
    def mark_negative(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._feedback(request, queryset, "negative")

    @admin.action(description="Clear feedback", permissions=["feedback"])
    def clear_feedback(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._feedback(request, queryset, None)

    def has_feedback_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("steps.change_step")


@admin.register(StepMetrics)
class StepMetricsAdmin(admin.ModelAdmin):
    list_display = ["step_id", "ttft_ns", "llm_request_ns", "tool_execution_ns", "step_ns"]
    search_fields = ["=step__id"]
    raw_id_fields = ["step"]
    show_full_result_count = False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "role", "run_id", "step_id", "sequence_id", "created_at"]
    list_filter = ["role"]
    search_fields = ["=id", "=run__id", "=step__id"]
    raw_id_fields = ["agent", "run", "step"]
    show_full_result_count = False
    # The primary key index serves this order at any size (sequence_id is only indexed per run and step).
    ordering = ["-id"]


@admin.register(ProviderTrace)
class ProviderTraceAdmin(admin.ModelAdmin):
    """Raw provider requests and responses; the console's step page shows them pretty-printed next to the chat."""

    list_display = ["step_id", "attempt", "provider", "model", "latency_ms", "error_type", "created_at"]
    list_filter = ["provider", "error_type"]
    search_fields = ["=step__id"]
    search_help_text = "Exact step id."
    raw_id_fields = ["step"]
    show_full_result_count = False

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        # Exact, so the (step, attempt) index answers (the admin's `=` compares UPPER() values).
        term = search_term.strip()
        return (queryset.filter(step_id=term), False) if term else (queryset, False)
