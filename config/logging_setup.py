"""Logging: the context every line carries, JSON lines on request, secrets scrubbed, recent errors kept.

- `LOG_FORMAT=json` (settings) writes one JSON object per line: time, level, logger, message, the exception
  when there is one, and `request_id`, `organization_id`, `run_id`, `step_id` where known. The default
  (`plain`) stays one human-readable line.
- The context comes from contextvars: the request middleware binds the request (its id, and the organization of
  its API key once authentication ran), Celery's task_prerun binds the ids a task was given (ops.signals), and
  code that knows more binds it with `log_context(run_id=..., step_id=...)`.
- `RedactingFilter` sits on every handler: a message or traceback holding something that looks like a provider
  key or an Authorization value (config.redaction) is written with that part replaced, whatever logged it.
- `RecentErrorsHandler` keeps the last STEPLENS_RECENT_ERRORS records of level WARNING and above in the cache
  (Redis in production, so every process's errors land in one ring), for the console's system page.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from config.redaction import redact_text

CONTEXT_FIELDS = ("request_id", "organization_id", "run_id", "step_id")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("steplens_log_context", default=None)
# The request being served, read lazily: its API key (and so its organization) is known only after DRF
# authenticated it, well inside the view.
_request: contextvars.ContextVar[Any] = contextvars.ContextVar("steplens_log_request", default=None)


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ids (`run_id`, `step_id`, `organization_id`, ...) to every log line written inside the block."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def log_context_bind(**values: Any) -> contextvars.Token:
    """Like log_context, for code that cannot wrap a block (a signal pair): pass the token to log_context_reset."""
    return _context.set({**(_context.get() or {}), **{k: v for k, v in values.items() if v is not None}})


def log_context_reset(token: contextvars.Token) -> None:
    _context.reset(token)


def log_request_bind(request: Any) -> contextvars.Token:
    """The request whose id and organization go on the lines written while it is served (the middleware)."""
    return _request.set(request)


def log_request_forget() -> None:
    """The request is answered: later lines of this thread or task are not its."""
    _request.set(None)


def current_log_context() -> dict[str, Any]:
    """The ids known here and now: the request's, then whatever log_context added (which wins)."""
    values: dict[str, Any] = {}
    request = _request.get()
    if request is not None:
        request_id = getattr(request, "request_id", None)
        if request_id:
            values["request_id"] = request_id
        # DRF copies the authenticated API key to the Django request as `auth`; the admin has none.
        organization_id = getattr(getattr(request, "auth", None), "organization_id", None)
        if organization_id is not None:
            values["organization_id"] = organization_id
    values.update(_context.get() or {})
    return values


class ContextFilter(logging.Filter):
    """Puts the known ids on the record (as attributes), so formatters and handlers can use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_log_context()
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, context.get(name))
        for name, value in context.items():  # what log_context added beyond the four (task, task_id, batch_id)
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class RedactingFilter(logging.Filter):
    """Replaces provider keys and Authorization values in the message and the traceback before any handler
    writes them. The message is rendered once here (args merged), so a secret passed as an argument is caught."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what we have, as logging itself would
            message = str(record.msg)
        cleaned = redact_text(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; keys: time, level, logger, message, the context ids, exception, and the
    `extra=` values of the call that are JSON-friendly."""

    _RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        for key, value in vars(record).items():
            plain = isinstance(value, str | int | float | bool) or value is None
            if plain and key not in self._RESERVED and key not in document and key not in CONTEXT_FIELDS:
                document[key] = value
        return json.dumps(document, default=str, ensure_ascii=False)


# --- recent errors --------------------------------------------------------------------------------------------------

RECENT_ERRORS_KEY = "steplens:recent-errors"
_MESSAGE_CHARS = 2000
_EXCEPTION_CHARS = 6000
_RING_TTL_SECONDS = 7 * 24 * 3600
# After the cache failed, records are not sent to it for this long: a logging call must never wait on a dead
# Redis again and again.
_BACKOFF_SECONDS = 30.0


class RecentErrorsHandler(logging.Handler):
    """Keeps the last `STEPLENS_RECENT_ERRORS` records (WARNING and above) in the cache: a ring of that many
    slots, so it never holds more. 4xx answers logged by Django (client mistakes) are left out."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._local = threading.local()
        self._down_until = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and status < 500:
            return
        if getattr(self._local, "busy", False) or time.monotonic() < self._down_until:
            return  # a record logged by the cache client itself, or the cache is down
        self._local.busy = True
        try:
            recent_error_store(record)
        except Exception:
            self._down_until = time.monotonic() + _BACKOFF_SECONDS
        finally:
            self._local.busy = False


def _ring_size() -> int:
    from django.conf import settings

    return max(0, int(getattr(settings, "STEPLENS_RECENT_ERRORS", 100)))


def recent_error_store(record: logging.LogRecord) -> None:
    """Write `record` into the next slot of the ring (redacted, cut to a few kilobytes)."""
    size = _ring_size()
    if not size:
        return
    from django.core.cache import cache

    sequence_key = f"{RECENT_ERRORS_KEY}:seq"
    cache.add(sequence_key, 0, timeout=None)
    sequence = cache.incr(sequence_key)
    exception = record.exc_text
    if record.exc_info and not exception:
        exception = logging.Formatter().formatException(record.exc_info)
    context = current_log_context()
    entry = {
        "sequence": sequence,
        "time": record.created,
        "level": record.levelname,
        "logger": record.name,
        "message": redact_text(record.getMessage())[:_MESSAGE_CHARS],
        "exception": redact_text(exception)[-_EXCEPTION_CHARS:] if exception else "",
        "process": record.process,
        **{name: getattr(record, name, None) or context.get(name) for name in CONTEXT_FIELDS},
    }
    cache.set(f"{RECENT_ERRORS_KEY}:{sequence % size}", entry, timeout=_RING_TTL_SECONDS)


def recent_errors(*, limit: int | None = None) -> list[dict[str, Any]]:
    """The records in the ring, newest first (at most STEPLENS_RECENT_ERRORS, or `limit`)."""
    size = _ring_size()
    if not size:
        return []
    from django.core.cache import cache

    found = cache.get_many([f"{RECENT_ERRORS_KEY}:{slot}" for slot in range(size)])
    entries = sorted(found.values(), key=lambda entry: entry.get("sequence", 0), reverse=True)
    return entries[:limit] if limit is not None else entries


# --- the LOGGING setting --------------------------------------------------------------------------------------------


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """The LOGGING dict for settings: plain or JSON lines on stderr, every record scrubbed and given its context,
    WARNING and above also into the recent-errors ring."""
    if log_format not in {"plain", "json"}:
        raise ValueError(f"LOG_FORMAT must be plain or json, not {log_format!r}")
    filters = ["context", "redact"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "config.logging_setup.ContextFilter"},
            "redact": {"()": "config.logging_setup.RedactingFilter"},
        },
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {"()": "config.logging_setup.JsonFormatter"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": log_format, "filters": filters},
            "recent_errors": {"()": "config.logging_setup.RecentErrorsHandler", "filters": filters},
        },
        "root": {"handlers": ["console", "recent_errors"], "level": level},
        "loggers": {"httpx": {"level": "WARNING"}, "httpx2": {"level": "WARNING"}},
    }
