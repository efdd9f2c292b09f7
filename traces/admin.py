from django.contrib import admin
from django.utils.html import format_html
from django.utils.safestring import SafeString

from steps.admin_changelist import StepPaginator
from steps.admin_views import step_url
from traces.models import ProviderTrace


@admin.register(ProviderTrace)
class ProviderTraceAdmin(admin.ModelAdmin):
    """Raw provider requests and responses; the step page shows them pretty-printed next to the conversation."""

    list_display = ["step_link", "attempt", "provider", "model", "latency_ms", "error_type", "created_at"]
    list_filter = ["provider", "error_type"]
    search_fields = ["=step__id"]
    raw_id_fields = ["step"]
    show_full_result_count = False
    paginator = StepPaginator

    @admin.display(description="step")
    def step_link(self, obj: ProviderTrace) -> SafeString:
        return format_html('<a href="{}#provider-trace">{}</a>', step_url(obj.step_id), obj.step_id)
