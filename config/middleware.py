"""Request id: taken from X-Request-ID or made up, stored on the request and echoed in the response.
Paths and query strings holding a NUL character are turned away before any view runs. Exceptions out of views
become JSON errors (an unavailable database a 503 on every path)."""

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

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
