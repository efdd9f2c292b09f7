"""Reads for tenancy."""

from datetime import timedelta

from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import hash_api_key

# Touch last_used_at at most this often, so authentication is not a write per request.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key`, with its organization, or None."""
    if not raw_key:
        return None
    api_key = (
        ApiKey.objects.select_related("organization")
        .filter(hashed_key=hash_api_key(raw_key), revoked_at__isnull=True)
        .first()
    )
    if api_key is not None:
        now = timezone.now()
        if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key
