"""Reads for tenancy."""

from datetime import timedelta

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiKey, Organization
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
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key
