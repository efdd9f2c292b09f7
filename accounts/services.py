"""Writes for tenancy: organizations, projects and API keys."""

import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Organization, Project

KEY_PREFIX = "sl-"


def hash_api_key(raw_key: str) -> str:
    """The stored form of a key. Keys are 256 random bits, so a fast hash is safe here."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def organization_get_or_create(*, name: str) -> Organization:
    organization, _ = Organization.objects.get_or_create(name=name)
    return organization


def project_get_or_create(*, organization: Organization, name: str) -> Project:
    project, _ = Project.objects.get_or_create(organization=organization, name=name)
    return project


@transaction.atomic
def api_key_create(*, organization: Organization, name: str = "") -> tuple[ApiKey, str]:
    """Create a key and return it with the raw key, which is never stored and cannot be shown again."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        organization=organization, name=name, prefix=raw_key[:10], hashed_key=hash_api_key(raw_key)
    )
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked_at"])
    return api_key
