"""Every error of the API as one JSON shape: {"error": <stable code>, "detail": <sentence>} plus "fields" when
particular fields or parameters are at fault.

DRF's exception handler (`exception_handler`) renders what views, serializers, authentication and throttling
raise; `error_response_for_exception` renders what escapes DRF or happens outside it (middleware, the admin,
the schema view), for config.middleware.ApiErrorMiddleware and the `handler404`/`handler500` views. An unavailable
database is a 503 with Retry-After wherever it is noticed, never a 500: the client should simply try again.
"""

import logging
import sys
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError, connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from config.errors import ApplicationError, ServiceUnavailable, error_code, field_messages

logger = logging.getLogger("django.request")

_MAX_FIELDS_IN_DETAIL = 5
_UNAVAILABLE = "The database is unavailable; retry later."


def error_body(*, code: str, detail: str, fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The one error body: `fields` only when some are at fault."""
    body: dict[str, Any] = {"error": code, "detail": detail}
    if fields:
        body["fields"] = fields
    return body


def _sentence(message: str, fields: dict[str, list[str]]) -> str:
    """`message`, naming the fields at fault (and why) unless it names them already."""
    missing = [name for name in fields if name not in message][:_MAX_FIELDS_IN_DETAIL]
    if not missing:
        return message
    reasons = "; ".join(f"{name}: {fields[name][0]}" for name in missing)
    return f"{message.rstrip('.')}: {reasons}" if message else reasons


def _driver_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # SQLite only: Django wraps sqlite3's errors itself
        return ()
    return (psycopg.OperationalError, psycopg.InterfaceError)


_DRIVER_ERRORS = _driver_errors()


def database_unavailable(exc: BaseException | None) -> bool:
    """The database (or its connection) failed, as opposed to a query being wrong: worth a retry later.

    Django wraps the driver's errors (psycopg's OperationalError and its subclasses for a refused, dropped or
    terminated connection, such as AdminShutdown when the server restarts; InterfaceError for a connection
    already closed) in django.db's classes; a driver error that escaped the wrapper counts too."""
    return isinstance(exc, (OperationalError, InterfaceError, *_DRIVER_ERRORS))


def _release_broken_connections() -> None:
    """Close connections an error left unusable, so the next request connects afresh once the database is back
    (a persistent connection, CONN_MAX_AGE > 0, would otherwise be reused broken)."""
    for connection in connections.all(initialized_only=True):
        try:
            if connection.connection is not None and (connection.errors_occurred or not connection.is_usable()):
                if connection.in_atomic_block:
                    connection.needs_rollback = True
                connection.close()
        except Exception:  # closing a dead socket can fail too; the connection is dropped either way
            connection.connection = None


def unavailable_response(*, retry_after: int | None = None) -> JsonResponse:
    """503 with Retry-After: the database cannot be reached now."""
    retry_after = settings.STEPLENS_DB_RETRY_AFTER_SECONDS if retry_after is None else retry_after
    response = JsonResponse(error_body(code="service_unavailable", detail=_UNAVAILABLE), status=503)
    response["Retry-After"] = str(retry_after)
    return response


def is_api_path(request: HttpRequest) -> bool:
    return request.path_info == "/v1" or request.path_info.startswith("/v1/")


def error_response_for_exception(request: HttpRequest, exc: BaseException) -> HttpResponse | None:
    """A JSON answer for an exception that escaped the views: a 503 for an unavailable database (any path),
    a 500 on /v1/; None elsewhere (the admin keeps Django's own pages)."""
    if database_unavailable(exc):
        logger.warning("Database unavailable: %s %s: %s", request.method, request.path, exc)
        _release_broken_connections()
        return unavailable_response()
    if not is_api_path(request):
        return None
    # What Django itself does for an uncaught exception: tell receivers (error trackers) and log the traceback.
    signals.got_request_exception.send(sender=None, request=request)
    logger.error("Internal Server Error: %s", request.path, exc_info=(type(exc), exc, exc.__traceback__))
    return _server_error()


def _server_error() -> JsonResponse:
    return JsonResponse(
        error_body(code="server_error", detail="An unexpected error occurred; it has been logged."), status=500
    )


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """An unknown /v1/ path is a JSON 404 like every other API error; other paths keep Django's page."""
    if is_api_path(request):
        return JsonResponse(
            error_body(code="not_found", detail=f"No API endpoint at {request.path}; see /v1/schema."), status=404
        )
    return defaults.page_not_found(request, exception)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A request Django itself refuses (a bad Host header, too many fields): JSON on /v1/."""
    if is_api_path(request):
        return JsonResponse(error_body(code="bad_request", detail="Bad request."), status=400)
    return defaults.bad_request(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    """Django calls this while handling the uncaught exception, so sys.exc_info() still holds it."""
    exc = sys.exc_info()[1]
    response = None
    if database_unavailable(exc):
        _release_broken_connections()
        response = unavailable_response()
    elif is_api_path(request):
        response = _server_error()
    return response or defaults.server_error(request)


def _drf_fields_and_sentence(detail: Any) -> tuple[str, dict[str, list[str]]]:
    """DRF's `detail` (a string, a list, or a dict of field errors) as (sentence, fields)."""
    if isinstance(detail, str):
        return str(detail), {}
    if isinstance(detail, list) and all(isinstance(item, str) for item in detail):
        return " ".join(str(item) for item in detail), {}
    fields = field_messages(detail)
    if set(fields) == {"non_field_errors"} or set(fields) == {"body"}:
        return " ".join(next(iter(fields.values()))), {}
    return _sentence("Invalid input.", fields), fields


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every error DRF sees as {"error": <code>, "detail": <sentence>[, "fields": {...}]}."""
    if database_unavailable(exc):
        exc = ServiceUnavailable(_UNAVAILABLE, retry_after=settings.STEPLENS_DB_RETRY_AFTER_SECONDS)
        _release_broken_connections()
    if isinstance(exc, ApplicationError):
        set_rollback()
        fields = exc.fields
        response = Response(
            error_body(code=exc.code, detail=_sentence(exc.message, fields), fields=fields), status=exc.status_code
        )
        if getattr(exc, "retry_after", None) is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        exc = exceptions.ValidationError(detail=detail)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(detail, dict) and set(detail) == {"detail"}:
        detail = detail["detail"]
    sentence, fields = _drf_fields_and_sentence(detail)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response.status_code = status.HTTP_401_UNAUTHORIZED
    response.data = error_body(code=error_code(response.status_code), detail=sentence, fields=fields)
    return response
