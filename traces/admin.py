from django.contrib import admin

from traces.models import ProviderTrace


@admin.register(ProviderTrace)
class ProviderTraceAdmin(admin.ModelAdmin):
    list_display = ["step", "attempt", "provider", "model", "latency_ms", "error_type", "created_at"]
    list_filter = ["provider", "error_type"]
    search_fields = ["=step__id"]
    raw_id_fields = ["step"]
