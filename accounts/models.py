"""Tenancy: organizations own everything; projects group work; API keys authenticate."""

import uuid

from django.conf import settings
from django.db import models


def new_org_id() -> str:
    return f"org-{uuid.uuid4()}"


def new_project_id() -> str:
    return f"project-{uuid.uuid4()}"


class Organization(models.Model):
    """A tenant. Every row Steplens stores belongs to exactly one organization.

    `scoped_project_id` is no column: the API's authentication sets it on the request's organization when the
    key is limited to a project, so selectors that receive the organization can narrow to that project.
    `scoped_project_ids` is its console twin: the projects a membership is limited to (Membership.projects).
    `accounts.selectors.project_scope` reads either."""

    scoped_project_id: str | None = None
    scoped_project_ids: tuple[str, ...] | None = None

    id = models.CharField(primary_key=True, max_length=64, default=new_org_id, editable=False)
    name = models.CharField(max_length=200, unique=True)
    retention_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Days raw steps are kept; empty: STEPLENS_RETENTION_DAYS (empty: forever)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Project(models.Model):
    """A grouping of agents and steps inside an organization (an app, an environment, a team)."""

    id = models.CharField(primary_key=True, max_length=64, default=new_project_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    retention_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Days raw steps of this project are kept; empty: the organization's."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="project_unique_name_per_org")]

    def __str__(self) -> str:
        return self.name


class ApiKeyScope(models.TextChoices):
    """What a key may do: `ingest` only sends traces (POST /v1/traces), `read` only reads, `full` everything."""

    INGEST = "ingest"
    READ = "read"
    FULL = "full"


class ApiKey(models.Model):
    """An API key. Only a SHA-256 hash and a short display prefix are kept; the key is shown once.

    A key has a scope, and may be limited to one project: it then reads only that project's data and writes
    only into it."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    scope = models.CharField(max_length=16, choices=ApiKeyScope.choices, default=ApiKeyScope.FULL)
    project = models.ForeignKey(
        "Project", null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys",
        help_text="Only this project's data (empty: the whole organization).",
    )  # fmt: skip
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=200, blank=True, default="")
    prefix = models.CharField(max_length=16, help_text="The first characters of the key, to recognise it.")
    hashed_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or self.organization})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class Role(models.TextChoices):
    """A person's role in one organization, from most to least power (see `accounts.roles`)."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class Membership(models.Model):
    """A person (Django user) in an organization with a role: what they see and may do in the console."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    projects = models.ManyToManyField(
        Project, blank=True, related_name="limited_memberships",
        help_text="Only these projects' steps, runs and agents in the console (empty: the whole organization).",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="membership_unique_user_org")]

    def __str__(self) -> str:
        return f"{self.user} ({self.role} of {self.organization})"


class Invitation(models.Model):
    """A one-time, expiring invitation to join an organization with a role. Only the token's hash is kept."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(blank=True, default="")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    hashed_token = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.role} invitation to {self.organization} ({self.email or 'link'})"


class AuditEvent(models.Model):
    """One audited change or sign-in: who (a user or an API key), what, when, from where, before and after.

    Rows are only ever added (no service updates or deletes them); `organization` is empty for events that
    belong to no organization (a failed sign-in of an unknown user)."""

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="audit_events"
    )
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # What identified the actor when the event happened (a username, a key prefix), kept if the row goes.
    actor = models.CharField(max_length=200, blank=True, default="")
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True, default="")
    target_id = models.CharField(max_length=200, blank=True, default="")
    ip = models.GenericIPAddressField(null=True, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "-created_at"], name="audit_org_created")]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor or '?'} at {self.created_at:%Y-%m-%d %H:%M:%S}"
