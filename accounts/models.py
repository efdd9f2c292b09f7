"""Tenancy: organizations own everything; projects group work; API keys authenticate."""

import uuid

from django.db import models


def new_org_id() -> str:
    return f"org-{uuid.uuid4()}"


def new_project_id() -> str:
    return f"project-{uuid.uuid4()}"


class Organization(models.Model):
    """A tenant. Every row Steplens stores belongs to exactly one organization."""

    id = models.CharField(primary_key=True, max_length=64, default=new_org_id, editable=False)
    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Project(models.Model):
    """A grouping of agents and steps inside an organization (an app, an environment, a team)."""

    id = models.CharField(primary_key=True, max_length=64, default=new_project_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="project_unique_name_per_org")]

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """An API key. Only a SHA-256 hash and a short display prefix are kept; the key is shown once."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
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
