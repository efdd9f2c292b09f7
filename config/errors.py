"""The one application error type services and selectors raise (no framework imports, safe anywhere), and the
stable error codes every error body of the API carries."""

from collections.abc import Mapping
from typing import Any

# Every error body is {"error": <one of these codes>, "detail": <a sentence>} plus "fields" when particular
# fields or parameters are at fault. Clients branch on the code, never on the sentence; the README lists them.
ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "server_error",
    502: "bad_gateway",
    503: "service_unavailable",
}


def error_code(status_code: int) -> str:
    """The stable code of an HTTP error status (its class's code for a status without its own)."""
    if status_code in ERROR_CODES:
        return ERROR_CODES[status_code]
    return "server_error" if status_code >= 500 else "bad_request"


def field_messages(errors: Any, prefix: str = "") -> dict[str, list[str]]:
    """Flatten DRF-style validation errors (nested dicts and lists of messages) into {"a.0.b": [messages]}.

    One flat level with dotted paths is what the README promises; nested shapes differ between DRF's list and
    dict serializers and would make clients walk two structures."""
    flat: dict[str, list[str]] = {}
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            flat.update(field_messages(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(errors, list | tuple) and any(isinstance(item, Mapping | list | tuple) for item in errors):
        for index, item in enumerate(errors):
            if isinstance(item, Mapping | list | tuple):
                flat.update(field_messages(item, f"{prefix}.{index}" if prefix else str(index)))
            elif item is not None and item != "":
                flat.setdefault(prefix or "body", []).append(str(item))
    elif isinstance(errors, list | tuple):
        if errors:
            flat[prefix or "body"] = [str(item) for item in errors]
    elif errors is not None:
        flat[prefix or "body"] = [str(errors)]
    return flat


class ApplicationError(Exception):
    """Raised by services and selectors: a sentence for people, a stable `code` for programs (by default the
    code of `status_code`), and `extra` naming the fields at fault ({field: message or [messages]})."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        status_code: int = 400,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        self.status_code = status_code
        self.code = code or error_code(status_code)

    @property
    def fields(self) -> dict[str, list[str]]:
        """The fields at fault and what is wrong with each, as the error body's `fields` shows them."""
        return field_messages(self.extra)


class NotFound(ApplicationError):
    """The object does not exist or belongs to another organization (the two look the same)."""

    def __init__(self, message: str = "Not found.", *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra=extra, status_code=404)


class ServiceUnavailable(ApplicationError):
    """A dependency (the database) is unreachable for now: 503 with Retry-After, the client tries again."""

    def __init__(self, message: str, *, retry_after: int, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra=extra, status_code=503)
        self.retry_after = retry_after
