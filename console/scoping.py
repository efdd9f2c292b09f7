"""Who sees what in the console: superusers see every organization; everyone else (members) sees only the
organizations they belong to, with what their role there allows.

The reusable pieces, for any console page or model admin:

- `console_scope(request)` -> ConsoleScope: the person's organizations and roles, the current organization
  (the switcher's choice), `scope.filter(queryset, lookup, project_lookup)` to narrow any queryset,
  `scope.allows(capability, organization_id)` for a role check, and `scope.organization_or_404(id)` for a page's
  `?organization=`. A membership limited to some projects (Membership.projects) sees only those projects' rows:
  the organizations the scope hands out carry `scoped_project_ids` (so the selectors and reports narrow, as for
  a project-limited API key), and `scope.narrow(organization)` does the same for one found another way.
- `OrganizationScopedAdmin`: a ModelAdmin mixin. Querysets, object pages (change, delete, history), actions,
  autocomplete and related-field choices are narrowed to the person's organizations; an object outside them is a
  404 everywhere (also for superusers when it does not exist: never the admin's redirect); a write the role does
  not allow in the object's organization is a 403.
- `scope_registered_admins(site)`: wraps every registered model admin of a member app (accounts.roles.MEMBER_APPS)
  that is not scoped yet, so a new page is scoped by default (a model without an organization shows members
  nothing until it declares `organization_lookup`).
- `install_member_access(site)`: members (active users with a membership, no staff flag) may sign in at the admin
  login and use the site.
"""

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse

from accounts.audit import actor_from_request
from accounts.backends import cached_user_roles
from accounts.middleware import SESSION_ORGANIZATION
from accounts.models import Membership, Organization, Project
from accounts.roles import MEMBER_APPS, Capability, role_allows
from accounts.selectors import organization_list_for, user_project_limits
from accounts.services import audit_record

_REQUEST_CACHE = "_steplens_console_scope"


@dataclass
class ConsoleScope:
    """The organizations one console request may read, the person's role in each, and the current one."""

    everything: bool
    roles: dict[str, str] = field(default_factory=dict)
    chosen: str | None = None
    # {organization id: [project id, ...]} for memberships limited to some projects; others see every project.
    projects: dict[str, list[str]] = field(default_factory=dict)

    @property
    def organization_ids(self) -> list[str] | None:
        """The readable organizations' ids; None means all (a superuser)."""
        return None if self.everything else list(self.roles)

    def can_read(self, organization_id: str | None) -> bool:
        return self.everything or (organization_id is not None and organization_id in self.roles)

    def allows(self, capability: Capability | str, organization_id: str | None) -> bool:
        """Whether the person may do `capability` in `organization_id` (None: in the current organization)."""
        if self.everything:
            return True
        organization_id = organization_id or self.current_id
        return organization_id is not None and role_allows(self.roles.get(organization_id), capability)

    def role(self, organization_id: str | None) -> str | None:
        return "superuser" if self.everything else self.roles.get(organization_id or "")

    def filter(
        self, queryset: QuerySet, lookup: str = "organization_id", project_lookup: str | None = None
    ) -> QuerySet:
        """`queryset` narrowed to the readable organizations (`lookup` leads to the organization's id) and, with
        `project_lookup` (the path to the row's project id), to the projects a limited membership may read."""
        if self.everything:
            return queryset
        limited = {pk: ids for pk, ids in self.projects.items() if pk in self.roles} if project_lookup else {}
        if not limited:
            return queryset.filter(**{f"{lookup}__in": list(self.roles)})
        readable = Q(**{f"{lookup}__in": [pk for pk in self.roles if pk not in limited]})
        for organization_id, project_ids in limited.items():
            readable |= Q(**{lookup: organization_id, f"{project_lookup}__in": project_ids})
        return queryset.filter(readable)

    def project_ids(self, organization_id: str | None) -> list[str] | None:
        """The projects the person may read in `organization_id`; None: all of them."""
        if self.everything or organization_id is None:
            return None
        return self.projects.get(organization_id) or None

    def narrow(self, organization: Organization | None) -> Organization | None:
        """`organization` (the same instance) carrying the person's project limit there, if any: the selectors
        and reports that receive it then read only those projects (accounts.selectors.project_scope)."""
        if organization is not None:
            project_ids = self.project_ids(organization.pk)
            if project_ids:
                organization.scoped_project_ids = tuple(project_ids)
        return organization

    def organizations(self) -> QuerySet[Organization]:
        return organization_list_for(organization_ids=self.organization_ids)

    def managed_organizations(self) -> QuerySet[Organization]:
        """Where the person may manage (members, keys, projects)."""
        if self.everything:
            return self.organizations()
        ids = [pk for pk, role in self.roles.items() if role_allows(role, Capability.MANAGE)]
        return organization_list_for(organization_ids=ids)

    @cached_property
    def current_id(self) -> str | None:
        """The switcher's organization, if still readable; else the person's first organization (a member)."""
        if self.chosen and self.can_read(self.chosen):
            return self.chosen
        if self.everything:
            return None
        first = self.organizations().values_list("pk", flat=True).first()
        return first

    def current(self) -> Organization | None:
        return self.narrow(self.organizations().filter(pk=self.current_id).first()) if self.current_id else None

    def organization_or_404(self, organization_id: str) -> Organization:
        """A page's `?organization=`: a readable organization, else 404 (another organization's is not found)."""
        found = self.organizations().filter(pk=organization_id).first() if self.can_read(organization_id) else None
        if found is None:
            raise Http404("No such organization.")
        return self.narrow(found)


def console_scope(request: HttpRequest) -> ConsoleScope:
    """The request's scope (computed once per request)."""
    scope = getattr(request, _REQUEST_CACHE, None)
    if scope is None:
        user = request.user
        everything = bool(getattr(user, "is_superuser", False) and user.is_active)
        roles = {} if everything or not getattr(user, "is_authenticated", False) else cached_user_roles(user)
        session = getattr(request, "session", None)
        chosen = session.get(SESSION_ORGANIZATION) if session is not None else None
        projects = user_project_limits(user=user) if roles else {}
        scope = ConsoleScope(everything=everything, roles=roles, chosen=chosen, projects=projects)
        setattr(request, _REQUEST_CACHE, scope)
    return scope


def _organization_id_of(obj: Any, lookup: str) -> str | None:
    """Follow `lookup` ("organization_id", "step__organization_id", "pk") on an instance."""
    value = obj
    for part in lookup.split("__"):
        value = getattr(value, part, None)
        if value is None:
            return None
    return str(value)


class OrganizationScopedAdmin:
    """ModelAdmin mixin: see the module docstring. Put it FIRST among the bases.

    `organization_lookup`: the path from the model to its organization's id; None for a model that has none
    (members then see no rows of it). `write_capability`: what add/change/delete need in the object's
    organization (a model admin of a member-writable model lowers it)."""

    organization_lookup: str | None = "organization_id"
    # The path from the model to its project's id, for models whose rows a project-limited membership narrows.
    project_lookup: str | None = None
    write_capability: Capability = Capability.MANAGE

    # --- rows ---

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        scope = console_scope(request)
        if scope.everything:
            return queryset
        if self.organization_lookup is None:
            return queryset.none()
        return scope.filter(queryset, self.organization_lookup, self.project_lookup)

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Model:
        """Another organization's object (or none at all) is a 404, never the admin's redirect to the index."""
        found = super().get_object(request, object_id, from_field)
        if found is None:
            raise Http404(f"{self.model._meta.verbose_name.capitalize()} not found.")
        return found

    def object_organization_id(self, obj: Any) -> str | None:
        return _organization_id_of(obj, self.organization_lookup) if self.organization_lookup else None

    # --- permissions: the role's Django permission (accounts.backends) AND the role in the object's organization

    def _allowed(self, request: HttpRequest, capability: Capability, obj: Any) -> bool:
        scope = console_scope(request)
        if scope.everything:
            return True
        if obj is None:
            return scope.allows(capability, None) or any(role_allows(r, capability) for r in scope.roles.values())
        return scope.allows(capability, self.object_organization_id(obj))

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) and self._allowed(request, Capability.VIEW, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._allowed(request, self.write_capability, obj)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return super().has_add_permission(request, *args) and self._allowed(request, self.write_capability, None)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._allowed(request, self.write_capability, obj)

    # --- list filters and form choices: only the person's organizations ---

    def get_list_filter(self, request: HttpRequest) -> list:
        filters = list(super().get_list_filter(request))
        if console_scope(request).everything:
            return filters
        return [(f, admin.RelatedOnlyFieldListFilter) if f in ("organization", "project") else f for f in filters]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        scope = console_scope(request)
        if not scope.everything:
            if db_field.related_model is Organization:
                kwargs["queryset"] = scope.managed_organizations()
            elif db_field.related_model is Project:
                kwargs["queryset"] = Project.objects.filter(organization__in=scope.managed_organizations())
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        """A new object's organization is the switcher's, when the person may manage there."""
        initial = super().get_changeform_initial_data(request)
        scope = console_scope(request)
        has_organization = any(f.name == "organization" for f in self.model._meta.fields)
        if has_organization and "organization" not in initial and scope.allows(Capability.MANAGE, None):
            initial["organization"] = scope.current_id
        return initial

    def save_model(self, request: HttpRequest, obj: Any, form: forms.ModelForm, change: bool) -> None:
        if not self._allowed(request, self.write_capability, obj):
            raise PermissionDenied
        super().save_model(request, obj, form, change)

    # --- actions: every selected row must be readable (404) and the action allowed in its organization (403)

    def response_action(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        scope = console_scope(request)
        if not scope.everything and request.POST.get("action"):
            selected = request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME)
            select_across = request.POST.get("select_across") == "1"
            if not select_across:
                found = self.get_queryset(request).filter(pk__in=selected)
                if found.count() != len(set(selected)):
                    raise Http404("Some selected objects were not found.")
                rows = list(found)
            else:
                rows = list(queryset[:1000])
            capability = self._action_capability(request.POST["action"])
            if any(not scope.allows(capability, self.object_organization_id(row)) for row in rows):
                raise PermissionDenied
        return super().response_action(request, queryset)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        """`?organization=` of an organization the person may not read is a 404. An action the role cannot use
        is not offered (get_actions); posting it anyway is a 403."""
        chosen = request.GET.get("organization")
        if chosen and not console_scope(request).can_read(chosen):
            raise Http404("No such organization.")
        action = request.POST.get("action") if request.method == "POST" else None
        known = {name for _, name, _ in self._get_base_actions()}
        if action and action in known and action not in self.get_actions(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)

    def _action_capability(self, name: str) -> Capability:
        action = self.get_action(name)
        permissions = set(getattr(action[0], "allowed_permissions", ()) if action else ())
        if permissions and permissions <= {"view"}:
            return Capability.VIEW
        if permissions and permissions <= {"view", "feedback"}:
            return Capability.ANNOTATE
        return Capability.MANAGE

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        scope = console_scope(request)
        if scope.everything:
            return actions
        return {
            name: value
            for name, value in actions.items()
            if any(role_allows(r, self._action_capability(name)) for r in scope.roles.values())
        }

    # --- the audit log: what the console adds, changes and deletes (accounts' own pages audit in its services)

    def _audit(self, request: HttpRequest, obj: Any, action: str, message: Any = None) -> None:
        if self.model._meta.app_label == "accounts":
            return
        audit_record(
            actor=actor_from_request(request),
            action=f"{self.model._meta.model_name}.{action}",
            organization=self.object_organization_id(obj),
            target=obj,
            after={"object": str(obj)[:200], "change": message} if message else {"object": str(obj)[:200]},
        )

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._audit(request, obj, "create", message)
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._audit(request, obj, "change", message)
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: QuerySet) -> Any:
        for obj in queryset[:1000]:
            self._audit(request, obj, "delete")
        return super().log_deletions(request, queryset)


def scoped(model_admin_class: type[admin.ModelAdmin], **attrs: Any) -> type[admin.ModelAdmin]:
    """`model_admin_class` with OrganizationScopedAdmin in front (a no-op for an already scoped class)."""
    if issubclass(model_admin_class, OrganizationScopedAdmin):
        return model_admin_class
    return type(f"Scoped{model_admin_class.__name__}", (OrganizationScopedAdmin, model_admin_class), attrs)


def scope_registered_admins(site: admin.AdminSite) -> None:
    """Scope every registered model admin of a member app that is not scoped yet (secure by default)."""
    for model, model_admin in list(site._registry.items()):
        if model._meta.app_label not in MEMBER_APPS or isinstance(model_admin, OrganizationScopedAdmin):
            continue
        field_names = {f.name for f in model._meta.get_fields()}
        if model is Organization:
            lookup = "pk"
        elif "organization" in field_names:
            lookup = "organization_id"
        else:
            lookup = None
        project_lookup = getattr(model_admin, "project_lookup", None)  # the admin's own, if it names one
        if project_lookup is None and "project" in field_names and model is not Membership:
            project_lookup = "project_id"
        site.unregister(model)
        site.register(model, scoped(type(model_admin), organization_lookup=lookup, project_lookup=project_lookup))


class MemberAuthenticationForm(AdminAuthenticationForm):
    """The admin login, open to members (an active user with a membership) besides staff."""

    def confirm_login_allowed(self, user: Any) -> None:
        if not user.is_active:
            super().confirm_login_allowed(user)
        if not (user.is_staff or cached_user_roles(user)):
            raise forms.ValidationError(
                self.error_messages["invalid_login"], code="invalid_login", params={"username": "username"}
            )


def install_member_access(site: admin.AdminSite) -> None:
    """Let members (no staff flag) sign in at the admin login and use the site."""
    if getattr(site, "_steplens_members", False):
        return
    staff_only = site.has_permission

    def has_permission(request: HttpRequest) -> bool:
        user = request.user
        return staff_only(request) or bool(user.is_active and user.is_authenticated and cached_user_roles(user))

    site.has_permission = has_permission
    site.login_form = MemberAuthenticationForm
    each_context = site.each_context

    def each_context_with_scope(request: HttpRequest) -> dict[str, Any]:
        """The switcher's menu (admin/steplens/switcher.html in the header) on every admin page."""
        context = each_context(request)
        if getattr(request.user, "is_authenticated", False) and context.get("has_permission"):
            scope = console_scope(request)
            context.update(
                steplens_scope_organizations=list(scope.organizations()[:200]),
                steplens_scope_current=scope.current_id,
                steplens_scope_role=scope.role(scope.current_id) if not scope.everything else "",
            )
        return context

    site.each_context = each_context_with_scope
    site._steplens_members = True
