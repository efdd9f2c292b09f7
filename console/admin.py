"""The console on top of the apps' model admins: the dashboard and errors pages, the step page, a run's
waterfall, and changelists that stay fast at millions of rows.

Each app's admin.py registers its models with stock ModelAdmin options. The console sits above every
app, so instead of those apps importing it, it replaces their registrations with subclasses that add
its columns, filters, paginator and pages (Django's unregister-then-register idiom). INSTALLED_APPS lists
`console` last, so admin autodiscovery has registered the apps' classes before this module runs.
"""

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from agents.admin import AgentAdmin, RunAdmin
from agents.models import Agent, Run
from console.changelist import (
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
from console.deletions import steps_delete_matching_view
from console.monitors import install_monitor_urls
from console.scoping import (
    OrganizationScopedAdmin,
    console_scope,
    install_member_access,
    scope_registered_admins,
)
from console.views import (
    install_admin_urls,
    run_detail_view,
    step_detail_view,
    step_feedback_view,
    step_url,
    steps_url,
)
from steps.admin import MessageAdmin, ProviderTraceAdmin, StepAdmin, StepMetricsAdmin
from steps.models import Message, ProviderTrace, Step, StepMetrics

install_admin_urls(admin.site)
install_monitor_urls(admin.site)
install_member_access(admin.site)
# Step lists and charts need the width; the header links and the index lead everywhere the sidebar did.
admin.site.enable_nav_sidebar = False
admin.site.site_header = "Steplens"
admin.site.site_title = "Steplens admin"
admin.site.index_title = "Steplens administration"

# What the steps changelist shows, and so all it reads (with the agent's name through the join).
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


def _replace(model: type[Model], model_admin: type[admin.ModelAdmin]) -> None:
    admin.site.unregister(model)
    admin.site.register(model, model_admin)


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


def _num(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


class StepChangeList(ChangeList):
    """Reads only the shown columns."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        return super().get_queryset(request, exclude_parameters).only(*LIST_COLUMNS)


class StepConsoleAdmin(OrganizationScopedAdmin, StepAdmin):
    """The steps list with the REST API's filters and no full counts; the change page is the step page.

    Feedback and tags (the actions and the step page's form) need `annotate` in the step's organization."""

    project_lookup = "project_id"

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
    list_select_related = ["agent"]
    sortable_by = ["time"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return StepChangeList

    def get_paginator(self, request: HttpRequest, queryset: QuerySet, per_page: int, orphans: int = 0, **kwargs: Any):
        merge = None
        if not request.GET.get(ORGANIZATION_PARAM) and tuple(queryset.query.order_by)[:2] == ("-created_at", "-id"):
            merge = list(console_scope(request).organizations().values_list("pk", flat=True)[:51])
        return StepPaginator(queryset, per_page, orphans=orphans, merge_organizations=merge)

    def get_urls(self) -> list:
        return [
            path(
                "delete-matching/",
                self.admin_site.admin_view(lambda request: steps_delete_matching_view(self, request)),
                name="steps_step_delete_matching",
            ),
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
        scope = console_scope(request)
        chosen = request.GET.get(ORGANIZATION_PARAM)
        if chosen and not scope.can_read(chosen):
            raise Http404("No such organization.")
        if not chosen and request.method == "GET" and not scope.everything and scope.current_id:
            # A member's list is one organization's (the switcher's), so the filters' choices are that one's too.
            query = request.GET.copy()
            query[ORGANIZATION_PARAM] = scope.current_id
            return HttpResponseRedirect(f"{request.path}?{query.urlencode()}")
        extra_context = {
            **(extra_context or {}),
            "dashboard_url": reverse("admin:dashboard"),
            "errors_url": reverse("admin:errors"),
            "delete_matching_url": f"{reverse('admin:steps_step_delete_matching')}?{request.GET.urlencode()}",
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


class StepMetricsConsoleAdmin(OrganizationScopedAdmin, StepMetricsAdmin):
    organization_lookup = "step__organization_id"
    project_lookup = "step__project_id"
    paginator = StepPaginator


class MessageConsoleAdmin(OrganizationScopedAdmin, MessageAdmin):
    project_lookup = "step__project_id"
    paginator = StepPaginator


class AgentConsoleAdmin(OrganizationScopedAdmin, AgentAdmin):
    project_lookup = "project_id"
    list_display = [*AgentAdmin.list_display, "steps"]

    @admin.display(description="steps")
    def steps(self, obj: Agent) -> SafeString:
        return format_html('<a href="{}">steps →</a>', steps_url(organization=obj.organization_id, agent_id=obj.pk))


class RunConsoleAdmin(OrganizationScopedAdmin, RunAdmin):
    """A run's page is its waterfall (steps and tool calls on one time axis) instead of a form."""

    project_lookup = "project_id"
    paginator = StepPaginator

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        return run_detail_view(self, request, object_id)


class ProviderTraceConsoleAdmin(OrganizationScopedAdmin, ProviderTraceAdmin):
    project_lookup = "step__project_id"
    list_display = ["step_link", "attempt", "provider", "model", "latency_ms", "error_type", "created_at"]
    paginator = StepPaginator

    @admin.display(description="step")
    def step_link(self, obj: ProviderTrace) -> SafeString:
        return format_html('<a href="{}#provider-trace">{}</a>', step_url(obj.step_id), obj.step_id)


_replace(Step, StepConsoleAdmin)
_replace(StepMetrics, StepMetricsConsoleAdmin)
_replace(Message, MessageConsoleAdmin)
_replace(Agent, AgentConsoleAdmin)
_replace(Run, RunConsoleAdmin)
_replace(ProviderTrace, ProviderTraceConsoleAdmin)
# Last: every other model admin of a member app (accounts, traces' ingest batches, later pages) gets the scoping.
scope_registered_admins(admin.site)
