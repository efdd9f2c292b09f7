from django.contrib import admin

from steps.models import Message, Step, StepMetrics


class StepMetricsInline(admin.StackedInline):
    model = StepMetrics
    extra = 0
    can_delete = False


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    list_display = [
        "created_at", "agent", "model_handle", "status", "stop_reason", "prompt_tokens", "completion_tokens",
        "cost_usd", "error_type", "request_id",
    ]  # fmt: skip
    list_filter = ["status", "provider_name", "stop_reason", "error_type", "feedback"]
    search_fields = ["=id", "=request_id", "=trace_id", "=run__id"]
    list_select_related = ["agent"]
    raw_id_fields = ["agent", "run", "project"]
    inlines = [StepMetricsInline]
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(StepMetrics)
class StepMetricsAdmin(admin.ModelAdmin):
    list_display = ["step", "ttft_ns", "llm_request_ns", "tool_execution_ns", "step_ns"]
    raw_id_fields = ["step"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "role", "run", "step", "sequence_id", "created_at"]
    list_filter = ["role"]
    search_fields = ["=id", "=run__id", "=step__id"]
    raw_id_fields = ["agent", "run", "step"]
