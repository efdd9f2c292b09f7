"""Writes for tenancy: organizations, projects, API keys, memberships, invitations, and the audit log.

Every change made on someone's behalf takes an `actor` (accounts.audit.Actor) and records an AuditEvent in
the same transaction, so a change and its audit row are written together or not at all."""

import hashlib
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.audit import SYSTEM, Actor
from accounts.models import ApiKey, ApiKeyScope, AuditEvent, Invitation, Membership, Organization, Project, Role
from accounts.roles import Capability, role_allows, role_can_grant
from config.errors import ApplicationError

KEY_PREFIX = "sl-"
INVITATION_PREFIX = "inv-"


def hash_api_key(raw_key: str) -> str:
    """The stored form of a key. Keys are 256 random bits, so a fast hash is safe here."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


# --- audit log -----------------------------------------------------------------------------------


def audit_record(
    *,
    actor: Actor,
    action: str,
    organization: Organization | str | None = None,
    target: Any = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one row to the audit log. Apps above accounts call this for their own audited changes (deletions)."""
    organization_id = organization.pk if isinstance(organization, Organization) else organization
    user = actor.user if actor.user is not None and getattr(actor.user, "pk", None) else None
    return AuditEvent.objects.create(
        organization_id=organization_id,
        actor_user=user,
        actor_api_key=actor.api_key,
        actor=actor.display[:200],
        action=action[:64],
        target_type=(target._meta.model_name if hasattr(target, "_meta") else "")[:64],
        target_id=str(getattr(target, "pk", "") or "")[:200],
        ip=actor.ip,
        before=before,
        after=after,
    )


def _key_fields(api_key: ApiKey) -> dict[str, Any]:
    return {
        "name": api_key.name,
        "prefix": api_key.prefix,
        "scope": api_key.scope,
        "project": api_key.project_id,
        "revoked_at": api_key.revoked_at.isoformat() if api_key.revoked_at else None,
    }


# --- organizations and projects ------------------------------------------------------------------


def organization_get_or_create(*, name: str) -> Organization:
    organization, _ = Organization.objects.get_or_create(name=name)
    return organization


def project_get_or_create(*, organization: Organization, name: str) -> Project:
    project, _ = Project.objects.get_or_create(organization=organization, name=name)
    return project


def _project_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ApplicationError("Invalid project name.", extra={"name": ["Give a name of 1 to 200 characters."]})
    return name


@transaction.atomic
def project_create(*, organization: Organization, name: str, actor: Actor = SYSTEM) -> Project:
    """A new project; a name already used in the organization is a 409."""
    name = _project_name(name)
    if Project.objects.filter(organization=organization, name=name).exists():
        raise ApplicationError("A project with this name exists.", extra={"name": ["Already used."]}, status_code=409)
    project = Project.objects.create(organization=organization, name=name)
    audit_record(actor=actor, action="project.create", organization=organization, target=project, after={"name": name})
    return project


@transaction.atomic
def project_rename(*, project: Project, name: str, actor: Actor = SYSTEM) -> Project:
    name = _project_name(name)
    if Project.objects.filter(organization_id=project.organization_id, name=name).exclude(pk=project.pk).exists():
        raise ApplicationError("A project with this name exists.", extra={"name": ["Already used."]}, status_code=409)
    _set_audited(target=project, field="name", value=name, action="project.rename", actor=actor,
                 organization=project.organization_id)  # fmt: skip
    return project


def _set_audited(
    *, target: Any, field: str, value: Any, action: str, actor: Actor, organization: Any, context: dict | None = None
) -> None:
    """Change one field of `target` and record it: before and after values, with `context` on both sides."""
    before = getattr(target, field)
    setattr(target, field, value)
    target.save(update_fields=[field])
    audit_record(actor=actor, action=action, organization=organization, target=target,
                 before={**(context or {}), field: before}, after={**(context or {}), field: value})  # fmt: skip


@transaction.atomic
def retention_set(
    *, organization: Organization, days: int | None, project: Project | None = None, actor: Actor = SYSTEM
) -> Organization | Project:
    """Set how many days raw steps are kept (None: inherit; see steps.retention), for the organization or one
    of its projects. Audited, because a shorter retention makes the next retention run delete data."""
    if days is not None and days < 1:
        raise ApplicationError("Retention is at least one day.", extra={"retention_days": ["At least 1."]})
    if project is not None and project.organization_id != organization.pk:
        raise ApplicationError("No such project.", extra={"project": ["Not found."]}, status_code=404)
    target: Organization | Project = project if project is not None else organization
    _set_audited(target=target, field="retention_days", value=days, action="retention.set", actor=actor,
                 organization=organization)  # fmt: skip
    return target


# --- API keys ------------------------------------------------------------------------------------


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str = "",
    scope: str = ApiKeyScope.FULL,
    project: Project | None = None,
    actor: Actor = SYSTEM,
) -> tuple[ApiKey, str]:
    """Create a key and return it with the raw key, which is never stored and cannot be shown again."""
    if scope not in ApiKeyScope.values:
        raise ApplicationError("Invalid scope.", extra={"scope": [f"One of {', '.join(ApiKeyScope.values)}."]})
    if project is not None and project.organization_id != organization.pk:
        raise ApplicationError("Unknown project.", extra={"project": ["Not a project of this organization."]})
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name[:200],
        scope=scope,
        project=project,
        prefix=raw_key[:10],
        hashed_key=hash_api_key(raw_key),
        created_by=actor.user if actor.user is not None and actor.user.pk else None,
    )
    audit_record(
        actor=actor, action="api_key.create", organization=organization, target=api_key, after=_key_fields(api_key)
    )
    return api_key, raw_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: Actor = SYSTEM) -> ApiKey:
    """Revoke a key (idempotent: revoking a revoked key changes and records nothing)."""
    if api_key.revoked_at is not None:
        return api_key
    before = _key_fields(api_key)
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        action="api_key.revoke",
        organization=api_key.organization_id,
        target=api_key,
        before=before,
        after=_key_fields(api_key),
    )
    return api_key


# --- members -------------------------------------------------------------------------------------


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise ApplicationError("Invalid role.", extra={"role": [f"One of {', '.join(Role.values)}."]})


def _check_grant(*, granter_role: str | None, role: str) -> None:
    """Commands and superusers pass `granter_role=None` only through `membership_set`; others must be allowed."""
    if not role_can_grant(granter_role, role):
        raise ApplicationError(
            "Your role cannot grant this role.",
            extra={"role": [f"A {granter_role or 'non-member'} cannot give {role}."]},
            status_code=403,
        )


@transaction.atomic
def membership_set(
    *,
    organization: Organization,
    user: AbstractBaseUser,
    role: str,
    actor: Actor = SYSTEM,
    granter_role: str | None = Role.OWNER,
) -> Membership:
    """Add `user` to `organization` with `role`, or change their role. `granter_role` is the role of whoever
    does it (an owner by default: commands and superusers); demoting the last owner is refused (409)."""
    _check_role(role)
    _check_grant(granter_role=granter_role, role=role)
    membership = Membership.objects.select_for_update().filter(organization=organization, user=user).first()
    if membership is None:
        membership = Membership.objects.create(organization=organization, user=user, role=role)
        audit_record(
            actor=actor,
            action="member.add",
            organization=organization,
            target=membership,
            after={"user": user.get_username(), "role": role},
        )
        return membership
    if membership.role == role:
        return membership
    _check_grant(granter_role=granter_role, role=membership.role)
    if membership.role == Role.OWNER and _locked_owners(organization.pk, without=membership) == 0:
        raise ApplicationError(
            "An organization keeps at least one owner.", extra={"role": ["Last owner."]}, status_code=409
        )
    _set_audited(target=membership, field="role", value=role, action="member.role", actor=actor,
                 organization=organization, context={"user": user.get_username()})  # fmt: skip
    if role_allows(role, Capability.MANAGE) and membership.projects.exists():
        # Owners and admins manage the whole organization (its keys and members): a project limit would not hold.
        _set_projects_audited(membership, [], actor=actor)
    return membership


def _set_projects_audited(membership: Membership, projects: list[Project], *, actor: Actor) -> None:
    before = sorted(membership.projects.values_list("name", flat=True))
    membership.projects.set(projects)
    audit_record(
        actor=actor, action="member.projects", organization=membership.organization_id, target=membership,
        before={"user": membership.user.get_username(), "projects": before},
        after={"user": membership.user.get_username(), "projects": sorted(p.name for p in projects)},
    )  # fmt: skip


@transaction.atomic
def membership_set_projects(
    *,
    membership: Membership,
    projects: Sequence[Project],
    actor: Actor = SYSTEM,
    granter_role: str | None = Role.OWNER,
) -> Membership:
    """Limit a member or viewer to some projects of their organization (empty: the whole organization): in the
    console they then see only those projects' steps, runs, agents, reports and monitors. Owners and admins cannot
    be limited (they manage the organization's keys and members, 400). Audited with the project names."""
    _check_grant(granter_role=granter_role, role=membership.role)
    projects = list(projects)
    if any(project.organization_id != membership.organization_id for project in projects):
        raise ApplicationError("No such project.", extra={"projects": ["Not a project of this organization."]},
                               status_code=404)  # fmt: skip
    if projects and role_allows(membership.role, Capability.MANAGE):
        raise ApplicationError(
            "Owners and admins manage the whole organization and cannot be limited to projects.",
            extra={"projects": [f"A {membership.role} sees every project."]},
        )
    current = set(membership.projects.values_list("pk", flat=True))
    if current != {project.pk for project in projects}:
        _set_projects_audited(membership, projects, actor=actor)
    return membership


def _locked_owners(organization_id: str, *, without: Membership) -> int:
    # Lock the other owners' rows, so two owners demoting each other at once cannot both succeed.
    rows = Membership.objects.select_for_update().filter(organization_id=organization_id, role=Role.OWNER)
    return len([m for m in rows.exclude(pk=without.pk)])


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor = SYSTEM, granter_role: str | None = Role.OWNER) -> None:
    """Remove a member; the last owner cannot be removed (409)."""
    membership = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    _check_grant(granter_role=granter_role, role=membership.role)
    if membership.role == Role.OWNER and _locked_owners(membership.organization_id, without=membership) == 0:
        raise ApplicationError("The last owner cannot be removed.", extra={"user": ["Last owner."]}, status_code=409)
    audit_record(
        actor=actor,
        action="member.remove",
        organization=membership.organization_id,
        target=membership,
        before={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()


def user_get_or_create(*, username: str, password: str | None = None, email: str = "") -> tuple[AbstractBaseUser, bool]:
    """The user named `username`, created (without staff rights) if needed; `password` sets their password."""
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    created = user is None
    if user is None:
        user = user_model(username=username, email=email)
        if password is None:
            user.set_unusable_password()
    if password is not None:
        user.set_password(password)
    user.save()
    return user, created


# --- invitations ---------------------------------------------------------------------------------


def hash_invitation_token(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


@transaction.atomic
def invitation_create(
    *,
    organization: Organization,
    role: str,
    email: str = "",
    actor: Actor = SYSTEM,
    granter_role: str | None = Role.OWNER,
    accept_url: Any = None,
) -> tuple[Invitation, str]:
    """A one-time invitation valid for STEPLENS_INVITATION_TTL_HOURS; returns it with its raw token (shown once).

    `accept_url(token) -> str` makes the link; with an email address, the link is also mailed through Django's
    email backend once the invitation is committed."""
    _check_role(role)
    _check_grant(granter_role=granter_role, role=role)
    raw_token = INVITATION_PREFIX + secrets.token_urlsafe(32)
    ttl = timedelta(hours=settings.STEPLENS_INVITATION_TTL_HOURS)
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        hashed_token=hash_invitation_token(raw_token),
        created_by=actor.user if actor.user is not None and actor.user.pk else None,
        expires_at=timezone.now() + ttl,
    )
    audit_record(
        actor=actor,
        action="invitation.create",
        organization=organization,
        target=invitation,
        after={"email": email, "role": role, "expires_at": invitation.expires_at.isoformat()},
    )
    if email and accept_url is not None:
        link = accept_url(raw_token)
        transaction.on_commit(
            lambda: send_mail(
                f"Join {organization.name} on Steplens",
                f"You are invited to {organization.name} as {role}. This link works once, until "
                f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC:\n\n{link}\n",
                None,
                [email],
                fail_silently=True,
            )
        )
    return invitation, raw_token


def invitation_for_token(*, raw_token: str) -> Invitation | None:
    """The usable (not accepted, revoked or expired) invitation of `raw_token`, or None."""
    if not raw_token:
        return None
    return (
        Invitation.objects.select_related("organization")
        .filter(
            hashed_token=hash_invitation_token(raw_token),
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .first()
    )


@transaction.atomic
def invitation_accept(*, raw_token: str, user: AbstractBaseUser, actor: Actor = SYSTEM) -> Membership:
    """Use an invitation: `user` joins with its role (a member already keeps the higher of the two). One use only."""
    found = invitation_for_token(raw_token=raw_token)
    invitation = Invitation.objects.select_for_update().filter(pk=found.pk if found else None).first()
    if invitation is None or invitation.accepted_at is not None:
        raise ApplicationError("This invitation is invalid, used or expired.", status_code=404)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        actor=actor,
        action="invitation.accept",
        organization=invitation.organization_id,
        target=invitation,
        after={"user": user.get_username(), "role": invitation.role},
    )
    existing = Membership.objects.filter(organization_id=invitation.organization_id, user=user).first()
    order = Role.values  # most powerful first
    if existing is not None and order.index(existing.role) <= order.index(invitation.role):
        return existing
    try:
        return membership_set(organization=invitation.organization, user=user, role=invitation.role, actor=actor)
    except IntegrityError as exc:  # pragma: no cover - a concurrent accept of another invitation
        raise ApplicationError("Membership changed meanwhile; try again.", status_code=409) from exc


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: Actor = SYSTEM) -> Invitation:
    if invitation.revoked_at is None and invitation.accepted_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor, action="invitation.revoke", organization=invitation.organization_id, target=invitation
        )
    return invitation
