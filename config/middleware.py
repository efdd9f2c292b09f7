"""Request id: taken from X-Request-ID or made up, stored on the request and echoed in the response.
Paths and query strings holding a NUL character are turned away before any view runs. Exceptions out of views
become JSON errors (an unavailable database a 503 on every path). With a read replica, the list, report and console
pages read from it."""

import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from config.db_router import replica_configured, replica_reads
from config.exceptions import error_body, error_response_for_exception

_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


class RequestIdMiddleware:
    """Every request carries a request id; a client's own id is kept when it is sane."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get("X-Request-ID", "").strip()
        request.request_id = supplied if _VALID.match(supplied) else new_request_id()
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response


class RejectNulMiddleware:
    """A NUL character (%00) in the path or query string is a 400: PostgreSQL text cannot hold one, so
    such an id or filter value could only end as a database error."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "%00" in query or "\x00" in query:
            return JsonResponse(
                error_body(
                    code="bad_request", detail="NUL characters (%00) are not allowed in the path or query string."
                ),
                status=400,
            )
        return self.get_response(request)


class ApiErrorMiddleware:
    """An exception out of a view becomes the JSON error (503 with Retry-After for an unavailable database on any
    path, 500 on /v1/), with DEBUG on too; an exception raised by another middleware reaches `handler500`, which
    answers the same way."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return error_response_for_exception(request, exception)


# GET/HEAD requests whose reads may come from the read replica (README "Read replicas"): the step list, the request
# join, the usage and errors reports, and the console pages ...
_REPLICA_READ_PATHS = re.compile(r"^/v1/(?:steps|usage|errors|requests/[^/]+)$|^/admin/")
# ... except a run's own page: the run may be streaming, and its steps show there as the worker writes them.
_PRIMARY_PATHS = re.compile(r"^/admin/agents/run/[^/]+/")
# Set on a console answer to a write (POST, ...): the browser's next pages read the primary for a few seconds, so the
# page a form redirects to shows what it just saved even when the replica lags.
PIN_COOKIE = "steplens_primary"


class ReplicaReadsMiddleware:
    """Lets the reads of the views above go to the replica (config.db_router; nothing changes without a replica).
    A streamed body is produced after this returns, so an SSE stream always reads the primary."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not replica_configured():
            return self.get_response(request)
        if request.method in ("GET", "HEAD"):
            path = request.path_info
            if _REPLICA_READ_PATHS.match(path) and not _PRIMARY_PATHS.match(path) and PIN_COOKIE not in request.COOKIES:
                with replica_reads():
                    return self.get_response(request)
            return self.get_response(request)
        response = self.get_response(request)
        pin = settings.STEPLENS_REPLICA_PIN_SECONDS
        if pin > 0 and request.method not in ("OPTIONS", "TRACE") and request.path_info.startswith("/admin/"):
            response.set_cookie(
                PIN_COOKIE, "1", max_age=pin, path="/admin/", httponly=True, samesite="Lax",
                secure=settings.SESSION_COOKIE_SECURE,
            )  # fmt: skip
        return response
