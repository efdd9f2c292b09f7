"""Typed provider errors: one exception type with a stable `error_type` string stored on the step.

Every SDK exception, HTTP error body and broken stream is turned into a `ProviderError` by
`error_from_exception` / `error_from_http`, so the agent loop never sees an SDK-specific class.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.providers.base import LLMResult

RATE_LIMIT = "rate_limit"
AUTHENTICATION = "authentication"
PERMISSION_DENIED = "permission_denied"
CONTEXT_WINDOW_EXCEEDED = "context_window_exceeded"
BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
TIMEOUT = "timeout"
PROVIDER_ERROR = "provider_error"
OVERLOADED = "overloaded"
MALFORMED_STREAM = "malformed_stream"
CONNECTION_ERROR = "connection_error"
CANCELLED = "cancelled"

ERROR_TYPES: tuple[str, ...] = (
    RATE_LIMIT,
    AUTHENTICATION,
    PERMISSION_DENIED,
    CONTEXT_WINDOW_EXCEEDED,
    BAD_REQUEST,
    NOT_FOUND,
    TIMEOUT,
    PROVIDER_ERROR,
    OVERLOADED,
    MALFORMED_STREAM,
    CONNECTION_ERROR,
    CANCELLED,
)
RETRYABLE_ERROR_TYPES: frozenset[str] = frozenset(
    {RATE_LIMIT, TIMEOUT, PROVIDER_ERROR, OVERLOADED, CONNECTION_ERROR, MALFORMED_STREAM}
)


class ProviderError(Exception):
    """A failed provider call.

    `error_type` is one of `ERROR_TYPES`; `retryable` says whether the same request may succeed later
    (`retry_after` seconds, when the provider said so). `result` carries what the provider did report
    (usage, partial content) when the failure came inside a successful HTTP response, e.g. a Responses
    stream ending in `response.failed`.
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str,
        retryable: bool | None = None,
        retry_after: float | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
        result: LLMResult | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.retryable = error_type in RETRYABLE_ERROR_TYPES if retryable is None else retryable
        self.retry_after = retry_after
        self.status_code = status_code
        self.details = details or {}
        self.result = result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error_type!r}, {self.message!r}, status_code={self.status_code})"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what the step stores in `error_data`)."""
        return {
            "error_type": self.error_type,
            "message": self.message,
            "retryable": self.retryable,
            "retry_after": self.retry_after,
            "status_code": self.status_code,
            "details": self.details,
        }


class ProviderCancelled(ProviderError):
    """The call was cancelled (the run was cancelled, or the consumer stopped reading)."""

    def __init__(self, message: str = "The provider call was cancelled.", **kwargs: Any) -> None:
        kwargs.setdefault("retryable", False)
        super().__init__(message, error_type=CANCELLED, **kwargs)


# --- classification ---------------------------------------------------------------------------

_CONTEXT_PHRASES = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "input token count",
    "exceeds the maximum number of tokens",
    "reduce the length of the messages",
    "model_context_window_exceeded",
)

# Anthropic `error.type`, OpenAI `error.type`/`error.code`, Google `error.status` -> error type.
_BODY_TYPES: dict[str, str] = {
    "rate_limit_error": RATE_LIMIT,
    "rate_limit_exceeded": RATE_LIMIT,
    "insufficient_quota": RATE_LIMIT,
    "resource_exhausted": RATE_LIMIT,
    "overloaded_error": OVERLOADED,
    "authentication_error": AUTHENTICATION,
    "invalid_api_key": AUTHENTICATION,
    "unauthenticated": AUTHENTICATION,
    "permission_error": PERMISSION_DENIED,
    "permission_denied": PERMISSION_DENIED,
    "billing_error": PERMISSION_DENIED,
    "not_found_error": NOT_FOUND,
    "model_not_found": NOT_FOUND,
    "not_found": NOT_FOUND,
    "timeout_error": TIMEOUT,
    "deadline_exceeded": TIMEOUT,
    "api_error": PROVIDER_ERROR,
    "server_error": PROVIDER_ERROR,
    "internal": PROVIDER_ERROR,
    "unavailable": PROVIDER_ERROR,
    "context_length_exceeded": CONTEXT_WINDOW_EXCEEDED,
    "request_too_large": BAD_REQUEST,
    "invalid_request_error": BAD_REQUEST,
    "invalid_argument": BAD_REQUEST,
    "failed_precondition": BAD_REQUEST,
}

_STATUS_TYPES: dict[int, str] = {
    400: BAD_REQUEST,
    401: AUTHENTICATION,
    402: PERMISSION_DENIED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    408: TIMEOUT,
    413: BAD_REQUEST,
    422: BAD_REQUEST,
    429: RATE_LIMIT,
    504: TIMEOUT,
    529: OVERLOADED,
}


def _error_object(body: Any) -> dict[str, Any]:
    """The inner error dict of any provider's error envelope (or {} when there is none)."""
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping):
            return dict(inner)
        return dict(body)
    return {}


def _lower(value: Any) -> str:
    return value.lower() if isinstance(value, str) else ""


def classify(*, status_code: int | None, body: Any, message: str = "") -> str:
    """The error type for an HTTP status and/or an error body (status 200 or None for mid-stream errors)."""
    if status_code == 200:
        status_code = None
    err = _error_object(body)
    err_type, code, status = _lower(err.get("type")), _lower(err.get("code")), _lower(err.get("status"))
    text = " ".join((message or "", str(err.get("message") or ""))).lower()
    too_long = code == "context_length_exceeded" or any(phrase in text for phrase in _CONTEXT_PHRASES)
    if too_long and (status_code is None or status_code < 500):
        return CONTEXT_WINDOW_EXCEEDED
    if status_code == 529 or err_type == "overloaded_error" or (status_code == 503 and "overload" in text):
        return OVERLOADED
    # The HTTP status decides when there is one; the body's own type decides mid-stream (no status).
    if status_code is not None and status_code in _STATUS_TYPES:
        return _STATUS_TYPES[status_code]
    for key in (err_type, code, status):
        if key in _BODY_TYPES:
            return _BODY_TYPES[key]
    if status_code is not None and 400 <= status_code < 500:
        return BAD_REQUEST
    return PROVIDER_ERROR


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def parse_retry_after(*, headers: Mapping[str, str] | None, body: Any = None) -> float | None:
    """Seconds to wait, from `retry-after-ms`, `retry-after` (seconds or HTTP date) or Google's RetryInfo."""
    if headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        value = lowered.get("retry-after-ms")
        if value:
            try:
                return max(float(value) / 1000.0, 0.0)
            except ValueError:
                pass
        value = lowered.get("retry-after")
        if value:
            try:
                return max(float(value), 0.0)
            except ValueError:
                parsed = email.utils.parsedate_to_datetime(value) if "," in value else None
                if parsed is not None:
                    return max(parsed.timestamp() - time.time(), 0.0)
    for detail in _error_object(body).get("details") or []:
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def error_from_http(
    *,
    status_code: int | None,
    body: Any,
    headers: Mapping[str, str] | None = None,
    message: str | None = None,
) -> ProviderError:
    """A typed error for an HTTP error response (or a mid-stream error event when `status_code` is None)."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            body = {"message": body.decode("utf-8", "replace") if isinstance(body, bytes) else body}
    err = _error_object(body)
    text = message or str(err.get("message") or "") or f"Provider returned HTTP {status_code}"
    error_type = classify(status_code=status_code, body=body, message=text)
    retryable = None
    # A billing quota does not come back by waiting; rate limits do.
    if error_type == RATE_LIMIT and _lower(err.get("code")) == "insufficient_quota":
        retryable = False
    from config.redaction import redact, redact_text

    return ProviderError(
        redact_text(text),
        error_type=error_type,
        retryable=retryable,
        retry_after=parse_retry_after(headers=headers, body=body),
        status_code=status_code,
        details={"body": redact(body)} if body else {},
    )


def malformed(message: str, **details: Any) -> ProviderError:
    """A bad, truncated or unterminated stream (retryable)."""
    return ProviderError(message, error_type=MALFORMED_STREAM, details=details)


def error_from_exception(exc: BaseException, *, mid_stream: bool = False) -> ProviderError:
    """Map any exception raised while calling or reading a provider to a `ProviderError`.

    `mid_stream` says the response had started: a dropped connection then means a truncated stream.
    """
    if isinstance(exc, ProviderError):
        return exc
    import anthropic
    import httpx2
    import openai
    from google.genai import errors as genai_errors

    if isinstance(exc, (openai.APIStatusError, anthropic.APIStatusError)):
        response = exc.response
        status = response.status_code
        return error_from_http(
            status_code=None if status == 200 else status,
            body=exc.body,
            headers=response.headers,
        )
    if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)):
        return ProviderError(f"The provider did not answer in time ({type(exc).__name__}).", error_type=TIMEOUT)
    if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)):
        cause = exc.__cause__ or exc
        if mid_stream:
            return malformed(f"The stream was cut off: {type(cause).__name__}: {cause}")
        return ProviderError(
            f"Could not reach the provider: {type(cause).__name__}: {cause}", error_type=CONNECTION_ERROR
        )
    if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
        return error_from_http(status_code=None, body=exc.body, message=exc.message)
    if isinstance(exc, genai_errors.APIError):
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        return error_from_http(
            status_code=exc.code if isinstance(exc.code, int) else None,
            body=exc.details if isinstance(exc.details, Mapping) else {"message": exc.message},
            headers=headers if isinstance(headers, Mapping) else None,
            message=exc.message,
        )
    if isinstance(exc, (genai_errors.UnknownApiResponseError, ValueError)):
        # json.JSONDecodeError is a ValueError: the provider sent something that is not JSON.
        return malformed(f"The provider sent an unreadable response: {type(exc).__name__}: {exc}")
    return malformed(f"Could not read the provider response: {type(exc).__name__}: {exc}")
