"""The outermost middleware: every request timed into http.server.request.duration, and known to the log lines
written while it is served."""

import time
from collections.abc import Callable

from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse

from config.logging_setup import log_request_bind, log_request_forget
from config.metrics import http_request_record

# The methods of the HTTP conventions; anything else is recorded as `_OTHER`, so a client cannot mint series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class RequestMetricsMiddleware:
    """Times each request into http.server.request.duration (method, route template, status; config.metrics) and
    binds the request for the log lines (its id, and its API key's organization once authentication ran).

    The route is the URL pattern that matched (`/v1/steps/<str:step_id>`), never the raw path: one series per
    route, whatever ids clients send. A path no pattern matched has an empty route."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        # Bound until the response is closed (request_finished), not only until this returns: Django logs the
        # "Not Found" and "Internal Server Error" lines of 4xx and 5xx answers after the middleware chain.
        log_request_bind(request)
        status = 500
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            match = getattr(request, "resolver_match", None)
            route = "/" + match.route if match is not None and match.route is not None else ""
            http_request_record(
                method=request.method if request.method in _METHODS else "_OTHER",
                route=route,
                status=status,
                duration_s=time.perf_counter() - started,
            )


def _forget_request(**_: object) -> None:
    log_request_forget()


request_finished.connect(_forget_request, dispatch_uid="steplens.log_request_forget")
