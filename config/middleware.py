"""Request id: taken from X-Request-ID or made up, stored on the request and echoed in the response.
Paths and query strings holding a NUL character are turned away before any view runs."""

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

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
                {"error": "bad_request", "detail": "NUL characters (%00) are not allowed in the path or query string."},
                status=400,
            )
        return self.get_response(request)
