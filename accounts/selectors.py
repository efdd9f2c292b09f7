"""Reads for tenancy."""

from datetime import timedelta
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Organization, Project
from accounts.services import hash_api_key
from config.db import ModelRows

# Touch last_used_at at most this often, so authentication is not a write per request.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


_API_KEY, _ORGANIZATION = ModelRows(ApiKey), ModelRows(Organization)


def organization_list() -> QuerySet[Organization]:
    """Every organization, by name (the console's organization menus; tenants are few)."""
    return Organization.objects.order_by("name")


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key`, with its organization, or None.

    Every API request runs this, so it is one hand-written indexed query (the ORM spent longer building
    it than the database answering it).
    """
    if not raw_key:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {_API_KEY.columns('k')}, {_ORGANIZATION.columns('o')} FROM {_API_KEY.table} k "
            f"JOIN {_ORGANIZATION.table} o ON o.id = k.organization_id "
            "WHERE k.hashed_key = %s AND k.revoked_at IS NULL",
            [hash_api_key(raw_key)],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    api_key = _API_KEY.load(row)
    api_key.organization = _ORGANIZATION.load(row, _API_KEY.width)
    # A fresh instance per request: selectors receiving it narrow to the key's project (Organization docstring).
    api_key.organization.scoped_project_id = api_key.project_id
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key


# --- memberships ---------------------------------------------------------------------------------


def user_roles(*, user: object) -> dict[str, str]:
    """{organization id: role} for every organization `user` belongs to (empty for anonymous users)."""
    if not getattr(user, "is_authenticated", False) or not getattr(user, "pk", None):
        return {}
    return dict(Membership.objects.filter(user=user).values_list("organization_id", "role"))


def organization_list_for(*, organization_ids: list[str] | None) -> QuerySet[Organization]:
    """Organizations by name: all of them (None, a superuser's view) or those with the given ids."""
    organizations = organization_list()
    return organizations if organization_ids is None else organizations.filter(pk__in=organization_ids)


def member_list(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user").order_by("user__username")


def project_list(*, organization: Organization) -> QuerySet[Project]:
    return Project.objects.filter(organization=organization).order_by("name")


def api_key_list(*, organization: Organization) -> QuerySet[ApiKey]:
    """An organization's keys, newest first (active and revoked; the hash never leaves the model)."""
    return ApiKey.objects.filter(organization=organization).select_related("project").order_by("-created_at", "-id")


def invitation_list_pending(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        organization=organization, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    ).order_by("-created_at")


def audit_list(*, organization: Organization, before_id: int | None = None, action: str | None = None) -> QuerySet:
    """An organization's audit events, newest first; `before_id` pages backwards (keyset, stable under inserts)."""
    events = AuditEvent.objects.filter(organization=organization).order_by("-id")
    if before_id is not None:
        events = events.filter(id__lt=before_id)
    if action:
        events = events.filter(action=action)
    return events


def scoped_project_ids(organization: Organization) -> list[str] | None:
    """The projects `organization`'s reads are limited to (an API key's project, or a console member's
    projects), or None: the whole organization."""
    project_id = getattr(organization, "scoped_project_id", None)
    if project_id:
        return [project_id]
    project_ids = getattr(organization, "scoped_project_ids", None)
    return list(project_ids) if project_ids else None


def project_scope(organization: Organization, *, field: str = "project_id") -> dict[str, Any]:
    """The extra filter a query of `organization`'s rows needs when its API key is limited to a project, or the
    console member to some projects ({} otherwise):
    `Model.objects.filter(organization=organization, **project_scope(organization))`."""
    project_ids = scoped_project_ids(organization)
    if not project_ids:
        return {}
    return {field: project_ids[0]} if len(project_ids) == 1 else {f"{field}__in": project_ids}


def user_project_limits(*, user: object) -> dict[str, list[str]]:
    """{organization id: [project id, ...]} for the memberships of `user` limited to some projects (a membership
    without projects sees its whole organization and is not in the answer)."""
    if not getattr(user, "is_authenticated", False) or not getattr(user, "pk", None):
        return {}
    limits: dict[str, list[str]] = {}
    rows = Membership.projects.through.objects.filter(membership__user=user).values_list(
        "membership__organization_id", "project_id"
    )
    for organization_id, project_id in rows.order_by("project_id"):
        limits.setdefault(organization_id, []).append(project_id)
    return limits
