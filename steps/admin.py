"""Admin for steps: a changelist that stays fast at millions of rows, a read-only step page, feedback via services.

Steps are written by the agent loop and the OTLP ingest only (steps.services), so the admin never
adds or edits them; feedback and tags go through `step_set_feedback`, like the API's PATCH.
"""

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from accounts.models import Organization
from steps.admin_changelist import (
    ORGANIZATION_PARAM,
    CreatedFilter,
    ErrorTypeFilter,
    FeedbackFilter,
    LinkedFilter,
    ModelFilter,
    OrganizationFilter,
    ProviderFilter,
    StatusFilter,
    StepPaginator,
    StopReasonFilter,
    TagsFilter,
)
from steps.admin_views import install_admin_urls, step_detail_view, step_feedback_view, steps_url
from steps.models import Message, Step, StepMetrics
from steps.services import step_set_feedback

install_admin_urls(admin.site)
# Step lists and charts need the width; the header links and the index lead everywhere the sidebar did.
admin.site.enable_nav_sidebar = False
admin.site.site_header = "Steplens"
admin.site.site_title = "Steplens admin"
admin.site.index_title = "Steplens administration"

# What the changelist shows, and so all it reads (with the agent's name through the join).
LIST_COLUMNS = (
    "id",
    "created_at",
    "organization_id",
    "agent_id",
    "agent__name",
    "run_id",
    "model_handle",
    "status",
    "stop_reason",
    "error_type",
    "prompt_tokens",
    "completion_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_usd",
    "ttft_ns",
    "latency_ns",
    "request_id",
)
STATUS_COLORS = {"success": "#15803d", "failed": "#b91c1c", "cancelled": "#b45309", "pending": "#475569"}


def format_ms(value_ns: int | None) -> str:
    if value_ns is None:
        return "–"
    ms = value_ns / 1e6
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def status_badge(status: str, error_type: str | None = None) -> SafeString:
    color = STATUS_COLORS.get(status, "#475569")
    badge = format_html('<span class="sl-badge" style="background:{}">{}</span>', color, status)
    if error_type:
        return format_html('{} <span class="sl-error-type">{}</span>', badge, error_type)
    return badge


class StepChangeList(ChangeList):
    """Reads only the shown columns."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        return super().get_queryset(request, exclude_parameters).only(*LIST_COLUMNS)


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    list_display = [
        "time",
        "agent_name",
        "model_handle",
        "status_display",
        "stop",
        "tokens",
        "cost",
        "ttft",
        "latency",
        "request",
    ]
    list_display_links = ["time"]
    list_filter = [
        OrganizationFilter,
        CreatedFilter,
        StatusFilter,
        ErrorTypeFilter,
        ProviderFilter,
        ModelFilter,
        StopReasonFilter,
        FeedbackFilter,
        TagsFilter,
        LinkedFilter,
    ]
    search_fields = ["=id", "=request_id", "=trace_id", "=run__id"]
    search_help_text = "Exact step id, request id, trace id or run id."
    list_select_related = ["agent"]
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    sortable_by = ["time"]
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

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return StepChangeList

    def get_paginator(self, request: HttpRequest, queryset: QuerySet, per_page: int, orphans: int = 0, **kwargs: Any):
        merge = None
        if not request.GET.get(ORGANIZATION_PARAM) and tuple(queryset.query.order_by)[:2] == ("-created_at", "-id"):
            merge = list(Organization.objects.values_list("pk", flat=True)[:51])
        return StepPaginator(queryset, per_page, orphans=orphans, merge_organizations=merge)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        """Exact matches on the indexed ids (the admin's `=field` would compare UPPER() and skip the indexes)."""
        terms = search_term.split()
        if not terms:
            return queryset, False
        for term in terms:
            queryset = queryset.filter(Q(pk=term) | Q(request_id=term) | Q(trace_id=term) | Q(run_id=term))
        return queryset, False

    def get_urls(self) -> list:
        return [
            path(
                "<path:object_id>/feedback/",
                self.admin_site.admin_view(lambda request, object_id: step_feedback_view(self, request, object_id)),
                name="steps_step_feedback",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        return step_detail_view(self, request, object_id)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "dashboard_url": reverse("admin:dashboard"),
            "errors_url": reverse("admin:errors"),
        }
        return super().changelist_view(request, extra_context)

    # --- columns ---

    @admin.display(description="time (UTC)", ordering="created_at")
    def time(self, obj: Step) -> str:
        return obj.created_at.strftime("%b %d %H:%M:%S")

    @admin.display(description="agent")
    def agent_name(self, obj: Step) -> str:
        return obj.agent.name if obj.agent_id and obj.agent else "–"

    @admin.display(description="stop reason")
    def stop(self, obj: Step) -> str:
        return obj.stop_reason or "–"

    @admin.display(description="status")
    def status_display(self, obj: Step) -> SafeString:
        return status_badge(obj.status, obj.error_type)

    @admin.display(description="tokens (prompt → completion)")
    def tokens(self, obj: Step) -> SafeString | str:
        if obj.prompt_tokens is None and obj.completion_tokens is None:
            return "–"
        extras = []
        if obj.cached_input_tokens:
            extras.append(format_html('<span class="sl-muted">cached {}</span>', _num(obj.cached_input_tokens)))
        if obj.reasoning_tokens:
            extras.append(format_html('<span class="sl-muted">reasoning {}</span>', _num(obj.reasoning_tokens)))
        main = format_html("{} → {}", _num(obj.prompt_tokens), _num(obj.completion_tokens))
        if not extras:
            return main
        return format_html("{}<br>{}", main, format_html(" · ".join(["{}"] * len(extras)), *extras))

    @admin.display(description="cost")
    def cost(self, obj: Step) -> str:
        return "–" if obj.cost_usd is None else f"${obj.cost_usd:.5f}"

    @admin.display(description="TTFT")
    def ttft(self, obj: Step) -> str:
        return format_ms(obj.ttft_ns)

    @admin.display(description="latency")
    def latency(self, obj: Step) -> str:
        return format_ms(obj.latency_ns)

    @admin.display(description="request id")
    def request(self, obj: Step) -> SafeString | str:
        if not obj.request_id:
            return "–"
        link = steps_url(organization=obj.organization_id, request_id=obj.request_id)
        shown = obj.request_id if len(obj.request_id) <= 20 else obj.request_id[:18] + "…"
        return format_html('<a href="{}" title="All steps of request {}">{}</a>', link, obj.request_id, shown)

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


def _num(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


@admin.register(StepMetrics)
class StepMetricsAdmin(admin.ModelAdmin):
    list_display = ["step_id", "ttft_ns", "llm_request_ns", "tool_execution_ns", "step_ns"]
    search_fields = ["=step__id"]
    raw_id_fields = ["step"]
    show_full_result_count = False
    paginator = StepPaginator


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "role", "run_id", "step_id", "sequence_id", "created_at"]
    list_filter = ["role"]
    search_fields = ["=id", "=run__id", "=step__id"]
    raw_id_fields = ["agent", "run", "step"]
    show_full_result_count = False
    paginator = StepPaginator
    # The primary key index serves this order at any size (sequence_id is only indexed per run and step).
    ordering = ["-id"]
