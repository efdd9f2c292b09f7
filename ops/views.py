"""GET /healthz (liveness), GET /readyz (readiness) and GET /metrics (Prometheus scrape).

Plain Django views: no API key, no throttling, no session. Every error answer is the API's JSON error.
"""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from config import metrics
from config.exceptions import error_body
from ops.collectors import StateCollector
from ops.readiness import readiness_check

logger = logging.getLogger(__name__)


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def _method_not_allowed(request: HttpRequest) -> HttpResponse:
    response = JsonResponse(
        error_body(code="method_not_allowed", detail=f"Method {request.method} is not allowed here: use GET."),
        status=405,
    )
    response["Allow"] = "GET, HEAD"
    return response


@csrf_exempt
def healthz(request: HttpRequest) -> HttpResponse:
    """200 {"status": "ok"}: the process answers. No I/O at all: a failing database must not get a healthy
    process restarted (that is what /readyz is for)."""
    if request.method not in {"GET", "HEAD"}:
        return _method_not_allowed(request)
    return _no_store(JsonResponse({"status": "ok"}))


@csrf_exempt
def readyz(request: HttpRequest) -> HttpResponse:
    """200 with each check's state when this process can serve; 503 naming the failing checks otherwise."""
    if request.method not in {"GET", "HEAD"}:
        return _method_not_allowed(request)
    results = readiness_check()
    checks = {r.name: {"ok": r.ok, "detail": r.detail, "duration_ms": r.duration_ms} for r in results}
    failed = [r.name for r in results if not r.ok]
    if not failed:
        _log_transition(None)
        return _no_store(JsonResponse({"status": "ready", "checks": checks}))
    detail = f"Not ready: {', '.join(failed)} failed."
    _log_transition(detail + " " + "; ".join(f"{r.name}: {r.detail}" for r in results if not r.ok))
    body = error_body(code="service_unavailable", detail=detail)
    body.update(status="not_ready", failed=failed, checks=checks)
    response = JsonResponse(body, status=503)
    response["Retry-After"] = str(settings.STEPLENS_DB_RETRY_AFTER_SECONDS)
    # Probed every few seconds: Django's own "Service Unavailable" line per probe would bury every other error in
    # the log and the recent-errors ring; the change of state is logged once instead (_log_transition).
    response._has_been_logged = True
    return _no_store(response)


_last_not_ready: str | None = None


def _log_transition(reason: str | None) -> None:
    """Log when this process becomes not ready (or its reason changes), and when it is ready again."""
    global _last_not_ready
    if reason == _last_not_ready:
        return
    if reason is None:
        logger.warning("Ready again after: %s", _last_not_ready)
    else:
        logger.error("%s", reason)
    _last_not_ready = reason


def _authorized(request: HttpRequest, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, supplied = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())


def metrics_registry() -> CollectorRegistry:
    """What a scrape shows: every process's counters and histograms on this host (multiprocess directory) or this
    process's own, plus the state gauges read now."""
    directory = metrics.multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry = CollectorRegistry()
        registry.register(_Delegate(metrics.REGISTRY))
    registry.register(StateCollector())
    return registry


class _Delegate:
    """A registry's collectors, inside another registry (without registering them twice)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self):
        return self._registry.collect()


@csrf_exempt
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition. Off (404) unless STEPLENS_METRICS_TOKEN is set; then a scrape must send
    `Authorization: Bearer <token>` (401 otherwise)."""
    if request.method not in {"GET", "HEAD"}:
        return _method_not_allowed(request)
    token = settings.STEPLENS_METRICS_TOKEN
    if not token:
        return JsonResponse(
            error_body(code="not_found", detail="The metrics endpoint is off: set STEPLENS_METRICS_TOKEN to serve it."),
            status=404,
        )
    if not _authorized(request, token):
        response = JsonResponse(
            error_body(code="unauthorized", detail="Send the metrics token as 'Authorization: Bearer <token>'."),
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="steplens-metrics"'
        return response
    try:
        output = generate_latest(metrics_registry())
    except Exception:
        logger.exception("Metrics scrape failed")
        return JsonResponse(error_body(code="server_error", detail="The metrics could not be collected."), status=500)
    return _no_store(HttpResponse(output, content_type=CONTENT_TYPE_LATEST))
