"""Admin registrations: monitors, their alert events and deliveries (read-only history; monitors are changed
through the API or the console's monitors page, which go through monitors.services)."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from monitors.models import AlertEvent, Delivery, DeliveryAttempt, Monitor


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Monitor)
class MonitorAdmin(_ReadOnly):
    list_display = ["name", "organization", "metric", "operator", "threshold", "window_seconds", "state", "value",
                    "evaluated_at", "enabled"]  # fmt: skip
    list_filter = ["state", "metric", "enabled"]
    search_fields = ["=id", "name"]
    exclude = ["secret_encrypted"]


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ["number", "ok", "status_code", "error", "duration_ms", "created_at"]
    readonly_fields = fields


@admin.register(AlertEvent)
class AlertEventAdmin(_ReadOnly):
    # A console membership limited to projects sees the events and notifications of its projects' monitors.
    project_lookup = "monitor__project_id"
    list_display = ["created_at", "monitor", "group", "previous_state", "state", "value", "threshold", "steps"]
    list_filter = ["state"]
    search_fields = ["=id", "=monitor__id"]
    raw_id_fields = ["monitor"]


@admin.register(Delivery)
class DeliveryAdmin(_ReadOnly):
    # A console membership limited to projects sees the events and notifications of its projects' monitors.
    project_lookup = "monitor__project_id"
    list_display = ["created_at", "monitor", "kind", "destination", "status", "attempts", "last_status_code"]
    list_filter = ["status", "kind"]
    raw_id_fields = ["monitor", "event"]
    inlines = [DeliveryAttemptInline]
