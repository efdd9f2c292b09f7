"""Admin registrations for tenancy and the self-service pages of owners and admins: API keys (shown once on
creation, revoked, last use), projects, members (roles, removal; the last owner stays), invitations (a one-time
link shown once and mailed) and the audit log (read only). Every write goes through accounts.services, which
records it in the audit log. The console (console/scoping.py) narrows all of these to the person's organizations
and checks their role in each object's organization; here, a person's role decides which roles they may grant.
"""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from accounts.audit import actor_from_request
from accounts.backends import cached_user_roles
from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Organization, Project, Role
from accounts.roles import GRANTABLE_ROLES
from accounts.services import (
    api_key_create,
    api_key_revoke,
    invitation_create,
    invitation_revoke,
    membership_remove,
    membership_set,
    membership_set_projects,
    project_create,
    project_rename,
    retention_set,
)
from config.errors import ApplicationError


def granter_role(request: HttpRequest, organization_id: str | None) -> str | None:
    """The role the signed-in person acts with in an organization (a superuser acts as an owner)."""
    if request.user.is_superuser:
        return Role.OWNER
    return cached_user_roles(request.user).get(organization_id or "")


def grantable_role_choices(request: HttpRequest) -> list[tuple[str, str]]:
    """The roles the person may hand out in at least one of their organizations (the service checks each)."""
    if request.user.is_superuser:
        return list(Role.choices)
    allowed = {
        granted for role in cached_user_roles(request.user).values() for granted in GRANTABLE_ROLES.get(role, ())
    }
    return [(value, label) for value, label in Role.choices if value in allowed]


class GrantableRoleMixin:
    """The role menu offers only what the person may grant (an admin does not see `owner`). A posted role
    is left to the service, which answers a role the person may not grant with a 403 (not a form error)."""

    def formfield_for_choice_field(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "role" and request.method != "POST":
            kwargs["choices"] = grantable_role_choices(request)
        return super().formfield_for_choice_field(db_field, request, **kwargs)


def _fail(request: HttpRequest, exc: ApplicationError) -> None:
    """A refused service call: a 403 (the role may not) stays a 403; anything else is shown on the page."""
    if exc.status_code == 403:
        raise PermissionDenied(exc.message) from exc
    detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.fields.items())
    messages.error(request, f"{exc.message} {detail}".strip())


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "retention_days", "created_at"]
    search_fields = ["name", "id"]

    def get_readonly_fields(self, request: HttpRequest, obj: Organization | None = None) -> list[str]:
        # Owners and admins set the retention; the name is the superusers' (it names the tenant everywhere).
        return [] if request.user.is_superuser else ["name"]

    def save_model(self, request: HttpRequest, obj: Organization, form: Any, change: bool) -> None:
        days = obj.retention_days
        if not change:
            super().save_model(request, obj, form, change)
            return
        obj.retention_days = Organization.objects.get(pk=obj.pk).retention_days
        super().save_model(request, obj, form, change)
        if obj.retention_days != days:  # through the service, so the change is audited
            retention_set(organization=obj, days=days, actor=actor_from_request(request))


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    """Create and rename projects (through accounts.services, audited)."""

    list_display = ["name", "organization", "id", "retention_days", "created_at"]
    list_filter = ["organization"]
    search_fields = ["name", "id"]
    fields = ["organization", "name", "retention_days"]
    ordering = ["organization__name", "name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Project | None = None) -> list[str]:
        return ["organization"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Project, form: Any, change: bool) -> None:
        actor = actor_from_request(request)
        if change:
            stored = Project.objects.get(pk=obj.pk)
            if stored.name != obj.name:
                project_rename(project=stored, name=obj.name, actor=actor)
        else:
            stored = project_create(organization=obj.organization, name=obj.name, actor=actor)
            obj.pk = stored.pk
            obj.created_at = stored.created_at
        if stored.retention_days != obj.retention_days:
            retention_set(organization=obj.organization, project=stored, days=obj.retention_days, actor=actor)

    def has_delete_permission(self, request: HttpRequest, obj: Project | None = None) -> bool:
        return False  # steps keep their project; deleting data is the retention and deletion feature's job


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Create a key (shown once, on the page that answers the form), see its scope, project and last use, revoke."""

    list_display = ["prefix", "name", "organization", "scope", "project", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["organization", "scope"]
    search_fields = ["=prefix", "name"]
    fields = ["organization", "name", "scope", "project"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at", "created_by"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return self.fields if obj is None else [*self.fields, *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        # Only the name of an existing key can change: its scope and project are what the key was handed out as.
        return ["organization", "scope", "project", *self.readonly_fields] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            ApiKey.objects.filter(pk=obj.pk).update(name=obj.name)
            return
        if obj.project_id and obj.project.organization_id != obj.organization_id:
            raise PermissionDenied
        created, raw_key = api_key_create(
            organization=obj.organization,
            name=obj.name,
            scope=obj.scope,
            project=obj.project,
            actor=actor_from_request(request),
        )
        obj.pk, obj.prefix, obj.created_at = created.pk, created.prefix, created.created_at
        request._steplens_raw_key = raw_key

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        """The new key, shown once on this page (never in a message: those travel in cookies)."""
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "opts": self.model._meta,
            "api_key": obj,
            "raw_key": getattr(request, "_steplens_raw_key", ""),
            "changelist_url": reverse("admin:accounts_apikey_changelist"),
        }
        return TemplateResponse(request, "admin/accounts/apikey/created.html", context)

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = actor_from_request(request)
        count = 0
        for api_key in queryset.filter(revoked_at__isnull=True)[:1000]:
            api_key_revoke(api_key=api_key, actor=actor)
            count += 1
        messages.success(request, f"Revoked {count} key(s); they now answer 401.")

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # revoke instead: the audit log keeps naming the key


@admin.register(Membership)
class MembershipAdmin(GrantableRoleMixin, admin.ModelAdmin):
    """Members and their roles; add people by invitation. The last owner can be neither demoted nor removed.
    A member or viewer may be limited to some projects (empty: the whole organization)."""

    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["organization", "role"]
    search_fields = ["user__username", "user__email"]
    fields = ["user", "organization", "role", "projects"]
    filter_horizontal = ["projects"]
    readonly_fields = ["user", "organization"]
    list_select_related = ["user", "organization"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Superusers may add anyone directly; everyone else invites.
        return request.user.is_superuser and super().has_add_permission(request)

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        try:
            saved = membership_set(
                organization=obj.organization,
                user=obj.user,
                role=obj.role,
                actor=actor_from_request(request),
                granter_role=granter_role(request, obj.organization_id),
            )
        except ApplicationError as exc:
            _fail(request, exc)
            obj.role = Membership.objects.get(pk=obj.pk).role if obj.pk else obj.role
            return
        obj.pk = saved.pk

    def get_form(self, request: HttpRequest, obj: Membership | None = None, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, **kwargs)
        if obj is not None and "projects" in form.base_fields:  # only the membership's organization's projects
            form.base_fields["projects"].queryset = Project.objects.filter(organization_id=obj.organization_id)
        return form

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """The project limit goes through the service (checked and audited), never the form's own M2M save."""
        membership = form.instance
        projects = form.cleaned_data.get("projects")
        if membership.pk is None or projects is None:
            return
        try:
            membership_set_projects(
                membership=Membership.objects.get(pk=membership.pk),
                projects=list(projects),
                actor=actor_from_request(request),
                granter_role=granter_role(request, membership.organization_id),
            )
        except ApplicationError as exc:
            _fail(request, exc)

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        try:
            membership_remove(
                membership=obj,
                actor=actor_from_request(request),
                granter_role=granter_role(request, obj.organization_id),
            )
        except ApplicationError as exc:
            _fail(request, exc)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for membership in queryset:
            self.delete_model(request, membership)

    def message_user(self, request: HttpRequest, message: Any, *args: Any, **kwargs: Any) -> None:
        # After a refused change the admin would also say "changed successfully": say only what happened.
        if any(m.level == messages.ERROR for m in messages.get_messages(request)._queued_messages):
            return
        super().message_user(request, message, *args, **kwargs)


@admin.register(Invitation)
class InvitationAdmin(GrantableRoleMixin, admin.ModelAdmin):
    """Invite by a one-time link that expires (shown once here, and mailed when an address is given)."""

    list_display = ["email", "organization", "role", "created_by", "created_at", "expires_at", "accepted_at"]
    list_filter = ["organization", "role"]
    fields = ["organization", "email", "role"]
    actions = ["revoke"]

    def has_change_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Invitation, form: Any, change: bool) -> None:
        def accept_url(token: str) -> str:
            return request.build_absolute_uri(reverse("admin:invitation_accept", args=[token]))

        try:
            created, raw_token = invitation_create(
                organization=obj.organization,
                email=obj.email,
                role=obj.role,
                actor=actor_from_request(request),
                granter_role=granter_role(request, obj.organization_id),
                accept_url=accept_url,
            )
        except ApplicationError as exc:
            raise PermissionDenied(exc.message) from exc
        obj.pk, obj.expires_at = created.pk, created.expires_at
        request._steplens_invite_link = accept_url(raw_token)

    def response_add(self, request: HttpRequest, obj: Invitation, post_url_continue: str | None = None) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Invitation created",
            "opts": self.model._meta,
            "invitation": obj,
            "link": getattr(request, "_steplens_invite_link", ""),
            "changelist_url": reverse("admin:accounts_invitation_changelist"),
        }
        return TemplateResponse(request, "admin/accounts/invitation/created.html", context)

    @admin.action(description="Revoke the selected invitations", permissions=["add"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = actor_from_request(request)
        for invitation in queryset[:1000]:
            invitation_revoke(invitation=invitation, actor=actor)
        messages.success(request, "Invitations revoked.")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log, read only: who, what, when, from where, before and after."""

    list_display = ["created_at", "actor", "action", "target_type", "target_id", "ip", "organization"]
    list_filter = ["action", "organization"]
    search_fields = ["=actor", "=action", "=target_id"]
    readonly_fields = [
        "created_at", "organization", "actor", "actor_user", "actor_api_key", "action", "target_type", "target_id",
        "ip", "before", "after",
    ]  # fmt: skip
    fields = readonly_fields
    show_full_result_count = False
    ordering = ["-id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
