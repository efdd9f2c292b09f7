"""TracerProvider and MeterProvider from the standard OTEL_* variables, and Django/Celery instrumentation.

Only the standard variables are read: OTEL_SDK_DISABLED, OTEL_EXPORTER_OTLP_ENDPOINT (and the per-signal
OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT), OTEL_EXPORTER_OTLP_PROTOCOL (and per-signal), OTEL_EXPORTER_OTLP_HEADERS
(and per-signal), OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_COMPRESSION, OTEL_EXPORTER_OTLP_INSECURE,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_METRIC_EXPORT_INTERVAL, OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT and
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT. With no endpoint set nothing is installed: the OpenTelemetry API
stays the no-op one, so every span helper costs a function call and nothing is exported.

This is the process's SDK set-up, so it sits in config, below every app: the entry points (wsgi, asgi, the Celery
app) call `telemetry_setup` and import nothing above config. The span helpers (traces.otel.genai) read
`current_telemetry()` and cache their tracer and instruments per installed Telemetry object, so installing or
resetting one here needs no call back into them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.util.re import parse_env_headers

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "steplens"
# A huge prompt must never bloat a span: every attribute value is cut at this many characters unless
# OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says otherwise.
DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT = 16_384
_TRUE = {"true", "1", "yes", "span_only", "span_and_event"}
# Attribute keys that may carry credentials (e.g. captured HTTP headers); they are dropped before export.
_SENSITIVE_KEY = re.compile(r"authorization|api[-_.]?key|cookie|x-goog-api-key|proxy-authenticate", re.IGNORECASE)


@dataclass
class Telemetry:
    """What telemetry_setup built: the providers (None when disabled) and the content-capture switch."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    capture_content: bool = False
    attribute_limit: int = DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT
    instrumented: list[Any] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None or self.meter_provider is not None

    def force_flush(self, timeout_millis: int = 10_000) -> None:
        """Export everything buffered now (tests, and before a worker process exits)."""
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(timeout_millis)
        if self.meter_provider is not None:
            self.meter_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters and undo the instrumentation this object installed."""
        for instrumentor in self.instrumented:
            instrumentor.uninstrument()
        self.instrumented.clear()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


class _ScrubbingSpanExporter(SpanExporter):
    """Drops attributes whose key looks like a credential (Authorization, x-api-key, cookies) before export.

    The span helpers never set such attributes; this guards against HTTP header capture being switched on
    (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST) or any other instrumentation recording them.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    @staticmethod
    def _scrub(span: ReadableSpan) -> ReadableSpan:
        attributes = span.attributes or {}
        if not any(_SENSITIVE_KEY.search(key) for key in attributes):
            return span
        kept = {key: value for key, value in attributes.items() if not _SENSITIVE_KEY.search(key)}
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=kept,
            events=span.events,
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([self._scrub(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _get(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


def _signal_endpoint(env: Mapping[str, str], signal: str, protocol: str) -> str | None:
    specific = _get(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific  # per-signal endpoints are used as given
    generic = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if generic is None:
        return None
    if protocol == "grpc":
        return generic
    return f"{generic.rstrip('/')}/v1/{signal}"


def _exporter_kwargs(env: Mapping[str, str], signal: str, protocol: str, endpoint: str) -> dict[str, Any]:
    prefix = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
    kwargs: dict[str, Any] = {"endpoint": endpoint}
    headers = _get(env, prefix + "HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
    if headers:
        kwargs["headers"] = parse_env_headers(headers, liberal=True)
    timeout = _get(env, prefix + "TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    if timeout:
        # The spec gives milliseconds; the Python exporters take seconds.
        kwargs["timeout"] = float(timeout) / 1000
    compression = _get(env, prefix + "COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
    if protocol == "grpc":
        import grpc

        insecure = _get(env, prefix + "INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
        if insecure is not None:
            kwargs["insecure"] = insecure.lower() in _TRUE
        elif endpoint.startswith("http://"):
            kwargs["insecure"] = True
        if compression == "gzip":
            kwargs["compression"] = grpc.Compression.Gzip
    elif compression == "gzip":
        from opentelemetry.exporter.otlp.proto.http import Compression

        kwargs["compression"] = Compression.Gzip
    return kwargs


def _protocol(env: Mapping[str, str], signal: str) -> str:
    protocol = _get(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or "http/protobuf").lower()
    if protocol not in {"http/protobuf", "grpc"}:
        # http/json has no Python exporter; protobuf over HTTP is the spec's default.
        logger.warning("OTLP protocol %r is not supported here; using http/protobuf", protocol)
        protocol = "http/protobuf"
    return protocol


def _span_exporter(env: Mapping[str, str], endpoint: str) -> SpanExporter:
    protocol = _protocol(env, "traces")
    kwargs = _exporter_kwargs(env, "traces", protocol, endpoint)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(**kwargs)


def _metric_exporter(env: Mapping[str, str], endpoint: str) -> MetricExporter:
    protocol = _protocol(env, "metrics")
    kwargs = _exporter_kwargs(env, "metrics", protocol, endpoint)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return OTLPMetricExporter(**kwargs)


def build_resource(env: Mapping[str, str]) -> Resource:
    """service.name from OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES, or "steplens") plus the resource attributes."""
    attributes: dict[str, Any] = {}
    raw = _get(env, "OTEL_RESOURCE_ATTRIBUTES")
    if raw:
        attributes.update(parse_env_headers(raw, liberal=True))
    attributes["service.name"] = (
        _get(env, "OTEL_SERVICE_NAME") or attributes.get("service.name") or DEFAULT_SERVICE_NAME
    )
    return Resource.create(attributes)


def capture_content_enabled(env: Mapping[str, str]) -> bool:
    """OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true puts message content on spans; off by default."""
    return (_get(env, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT") or "").lower() in _TRUE


def build_telemetry(env: Mapping[str, str] | None = None) -> Telemetry:
    """Build (but do not install globally) the providers described by `env` (default: os.environ).

    No endpoint, or OTEL_SDK_DISABLED=true: an empty Telemetry (nothing exported). Batch span processor and a
    periodic metric reader otherwise, each signal with its own endpoint, protocol and headers.
    """
    env = os.environ if env is None else env
    limit_raw = _get(env, "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    limit = int(limit_raw) if limit_raw and limit_raw.isdigit() else DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT
    telemetry = Telemetry(capture_content=capture_content_enabled(env), attribute_limit=limit)
    if (_get(env, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return telemetry

    traces_endpoint = _signal_endpoint(env, "traces", _protocol(env, "traces"))
    metrics_endpoint = _signal_endpoint(env, "metrics", _protocol(env, "metrics"))
    if traces_endpoint is None and metrics_endpoint is None:
        return telemetry
    resource = build_resource(env)

    if traces_endpoint is not None:
        provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_span_attribute_length=limit))
        provider.add_span_processor(BatchSpanProcessor(_ScrubbingSpanExporter(_span_exporter(env, traces_endpoint))))
        telemetry.tracer_provider = provider
    if metrics_endpoint is not None:
        interval = _get(env, "OTEL_METRIC_EXPORT_INTERVAL")
        reader = PeriodicExportingMetricReader(
            _metric_exporter(env, metrics_endpoint),
            export_interval_millis=float(interval) if interval else 60_000,
        )
        telemetry.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    return telemetry


_lock = threading.Lock()
_installed: Telemetry | None = None
_installed_pid: int | None = None


def current_telemetry() -> Telemetry:
    """The Telemetry the span helpers use (an empty one before setup); a new object whenever one is installed."""
    return _installed or _EMPTY


_EMPTY = Telemetry()


def telemetry_install(telemetry: Telemetry, *, set_global: bool = True, instrument: bool = True) -> Telemetry:
    """Make `telemetry` the one the span helpers use; optionally register it globally and instrument Django/Celery.

    Tests pass set_global=False and instrument=False: the OpenTelemetry API allows one global provider per process.
    """
    global _installed, _installed_pid
    with _lock:
        _installed, _installed_pid = telemetry, os.getpid()
    if set_global:
        if telemetry.tracer_provider is not None:
            trace.set_tracer_provider(telemetry.tracer_provider)
        if telemetry.meter_provider is not None:
            metrics.set_meter_provider(telemetry.meter_provider)
    if instrument and telemetry.tracer_provider is not None:
        _instrument(telemetry)
    return telemetry


def telemetry_reset() -> None:
    """Forget the installed Telemetry (tests); the helpers go back to the no-op API."""
    global _installed, _installed_pid
    with _lock:
        _installed, _installed_pid = None, None


def _instrument(telemetry: Telemetry) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    # The OTLP ingest endpoint is excluded: tracing it would make every exported batch produce more spans.
    for instrumentor, kwargs in (
        # The probes and the metrics scrape too: polled every few seconds, they would drown the real traces.
        (DjangoInstrumentor(), {"excluded_urls": r"v1/traces,/healthz\?,/readyz\?,/metrics\?"}),
        (CeleryInstrumentor(), {}),
    ):
        if instrumentor.is_instrumented_by_opentelemetry:
            continue
        instrumentor.instrument(
            tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, **kwargs
        )
        telemetry.instrumented.append(instrumentor)


def telemetry_setup(env: Mapping[str, str] | None = None) -> Telemetry:
    """Configure telemetry for this process from the environment, once per process (safe to call again).

    Call it after DJANGO_SETTINGS_MODULE is set and before the WSGI/ASGI handler is built (Django instrumentation
    adds a middleware), and in each Celery worker process after the fork (exporter threads do not survive a fork).
    """
    if _installed is not None and _installed_pid == os.getpid():
        return _installed
    telemetry = build_telemetry(env)
    # With nothing to export, only remember the (empty) result: no global provider, no instrumentation.
    return telemetry_install(telemetry, set_global=telemetry.enabled, instrument=telemetry.enabled)
