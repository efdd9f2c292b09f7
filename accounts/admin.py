from django.contrib import admin

from accounts.models import ApiKey, Organization, Project


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "created_at"]
    search_fields = ["name", "id"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "id", "created_at"]
    list_filter = ["organization"]
    search_fields = ["name", "id"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created with `manage.py create_api_key`; the admin shows and revokes them, never the key."""

    list_display = ["prefix", "name", "organization", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["organization"]
    readonly_fields = ["prefix", "hashed_key", "created_at", "last_used_at"]
    exclude = []

    def has_add_permission(self, request) -> bool:
        return False
