"""Refused console requests go to the audit log: a signed-in person who tries what their role does not allow
(a 403 raised by a console view) is recorded with the page and method, in their current organization."""

from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from accounts.audit import actor_from_request
from accounts.backends import cached_user_roles
from accounts.services import audit_record

# The session key under which the console remembers the organization switcher's choice.
SESSION_ORGANIZATION = "steplens_organization"


class AuditDeniedMiddleware:
    """Records PermissionDenied from views under /admin/ (the API's 403s are answered by DRF, not recorded)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> Any:
        user = getattr(request, "user", None)
        if not isinstance(exception, PermissionDenied) or not getattr(user, "is_authenticated", False):
            return None
        if not request.path.startswith("/admin/"):
            return None
        roles = cached_user_roles(user)
        chosen = request.session.get(SESSION_ORGANIZATION) if hasattr(request, "session") else None
        organization_id = chosen if chosen in roles else (next(iter(roles)) if len(roles) == 1 else None)
        audit_record(
            actor=actor_from_request(request),
            action="console.denied",
            organization=organization_id,
            after={"method": request.method, "path": request.path[:500], "role": roles.get(organization_id or "")},
        )
        return None
