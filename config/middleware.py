"""Request id: taken from X-Request-ID or made up, stored on the request and echoed in the response."""

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

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
