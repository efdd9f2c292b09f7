"""The one application error type services and selectors raise (no framework imports, safe anywhere)."""

from typing import Any


class ApplicationError(Exception):
    """Raised by services and selectors; carries a message, extra data and the HTTP status it maps to."""

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        self.status_code = status_code


class NotFound(ApplicationError):
    """The object does not exist or belongs to another organization (the two look the same)."""

    def __init__(self, message: str = "Not found.", *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra=extra, status_code=404)
