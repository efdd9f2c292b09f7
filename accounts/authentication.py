"""API key authentication for every /v1/ endpoint: `Authorization: Bearer <key>` (or `x-api-key`)."""

from typing import Any

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from accounts.models import ApiKey, Organization
from accounts.selectors import api_key_authenticate


class ApiKeyPrincipal:
    """What `request.user` is for an API request: the key and its organization."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key
        self.organization: Organization = api_key.organization

    @property
    def pk(self) -> int:
        return self.api_key.pk

    def __str__(self) -> str:
        return str(self.api_key)


def raw_key_from_headers(headers: Any) -> str:
    authorization = headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("X-Api-Key", "").strip()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Authenticates a request by its API key; a missing or wrong key is a 401."""

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        raw_key = raw_key_from_headers(request.headers)
        if not raw_key:
            raise exceptions.NotAuthenticated("Missing API key: send 'Authorization: Bearer <key>'.")
        api_key = api_key_authenticate(raw_key=raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return ApiKeyPrincipal(api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="steplens"'


class HasOrganization(permissions.BasePermission):
    """Allows a request authenticated by an API key (every /v1/ endpoint needs one)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, ApiKeyPrincipal)


def request_organization(request: Request) -> Organization:
    """The organization a request is scoped to."""
    return request.user.organization
