"""Admin registrations for agents and runs. The console app (console/admin.py) adds the run page (its waterfall)
and the links into the steps list on top of these classes."""

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from agents.models import Agent, Run
from agents.services import agent_values_check
from config.errors import ApplicationError


class AgentForm(forms.ModelForm):
    """The same checks as the API: a runnable model handle and registered tools (the runtime's registered check)."""

    class Meta:
        model = Agent
        fields = [
            "organization", "project", "name", "model_handle", "system", "tools", "temperature", "max_output_tokens",
            "context_window", "max_steps", "tags", "metadata", "deleted_at",
        ]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for field in ("model_handle", "tools"):
            value = data.get(field)
            if value is None:
                continue
            try:
                agent_values_check({field: list(value) if field == "tools" else value})
            except ApplicationError as exc:
                self.add_error(field, f"{exc.message} {exc.extra.get(field, '')}".strip())
        return data


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = ["name", "model_handle", "organization", "max_steps", "created_at", "deleted_at"]
    list_filter = ["organization", "model_handle"]
    search_fields = ["name", "id"]
    list_select_related = ["organization"]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "status", "stop_reason", "step_count", "duration", "request_id", "created_at"]
    list_filter = ["status", "stop_reason", "background"]
    search_fields = ["=id", "=request_id", "=trace_id"]
    search_help_text = "Exact run id, request id or trace id."
    list_select_related = ["agent"]
    raw_id_fields = ["agent"]
    show_full_result_count = False

    # Runs are written by the agent loop and the ingest only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        # Exact matches use the indexes (the admin's `=` compares UPPER() values and scans).
        for term in search_term.split():
            queryset = queryset.filter(Q(pk=term) | Q(request_id=term) | Q(trace_id=term))
        return queryset, False

    @admin.display(description="duration")
    def duration(self, obj: Run) -> str:
        if not obj.total_duration_ns:
            return "–"
        ms = obj.total_duration_ns / 1e6
        return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"
