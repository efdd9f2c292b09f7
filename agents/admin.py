from django.contrib import admin

from agents.models import Agent, Run


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "model_handle", "organization", "max_steps", "created_at", "deleted_at"]
    list_filter = ["organization", "model_handle"]
    search_fields = ["name", "id"]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "status", "stop_reason", "step_count", "request_id", "created_at"]
    list_filter = ["status", "stop_reason", "background"]
    search_fields = ["id", "request_id", "trace_id"]
    list_select_related = ["agent"]
    raw_id_fields = ["agent"]
