"""API key authentication for every /v1/ endpoint: `Authorization: Bearer <key>` (or `x-api-key`), and what a
key's scope and project allow.

Scopes: `ingest` only sends traces (POST /v1/traces), `read` only reads (GET/HEAD/OPTIONS), `full` anything.
A key limited to a project: its request's organization carries `scoped_project_id`, and the selectors that
receive the organization narrow by it (`accounts.selectors.project_scope`; the step filters set `project_id`
to it, so reports narrow too); another project's object is not found.
"""

from typing import Any

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from accounts.models import ApiKey, ApiKeyScope, Organization
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


# The URL names (config/api_urls.py) an `ingest` key may POST to.
INGEST_URL_NAMES = frozenset({"otlp-traces"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def scope_allows(*, scope: str, method: str, url_name: str | None, required: str | None = None) -> bool:
    """Whether a key of `scope` may make this request. `required` (a view's `api_key_scope`) asks for more:
    `full` makes an endpoint full-key only (the audit log)."""
    if required == ApiKeyScope.FULL:
        return scope == ApiKeyScope.FULL
    if scope == ApiKeyScope.FULL:
        return True
    if scope == ApiKeyScope.READ:
        return method in SAFE_METHODS
    if scope == ApiKeyScope.INGEST:
        return method == "POST" and url_name in INGEST_URL_NAMES
    return False


class HasOrganization(permissions.BasePermission):
    """Allows a request authenticated by an API key (every /v1/ endpoint needs one) whose scope covers it
    (403 otherwise)."""

    message = "This API key's scope does not allow this request."

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, ApiKeyPrincipal):
            return False
        match = getattr(request._request, "resolver_match", None)
        return scope_allows(
            scope=principal.api_key.scope,
            method=request.method,
            url_name=match.url_name if match else None,
            required=getattr(view, "api_key_scope", None),
        )


def request_organization(request: Request) -> Organization:
    """The organization a request is scoped to."""
    return request.user.organization
