"""Real OTLP receivers for the export tests: an OTLP/HTTP server and a gRPC collector, both decoding protobuf."""

import gzip
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from config.celery import app as celery_app
from traces.otel import telemetry_reset


@dataclass
class Received:
    """What a receiver decoded: trace and metric export requests, and the headers they came with."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    endpoint: str = ""

    def spans(self) -> list:
        return [
            span
            for request in self.traces
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def resources(self) -> list[dict]:
        return [
            {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            for request in self.traces
            for rs in request.resource_spans
        ]

    def metric(self, name: str) -> list:
        """The metric as last exported (temporality is cumulative, so each export repeats the totals)."""
        for request in reversed(self.metrics):
            found = [
                metric
                for rm in request.resource_metrics
                for sm in rm.scope_metrics
                for metric in sm.metrics
                if metric.name == name
            ]
            if found:
                return found
        return []


@pytest.fixture
def otlp_http_receiver() -> Iterator[Received]:
    """An OTLP/HTTP collector on 127.0.0.1:<random>: /v1/traces and /v1/metrics, protobuf, gzip or not."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.headers.append({k.lower(): v for k, v in self.headers.items()})
            if self.path == "/v1/traces":
                received.traces.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                received.metrics.append(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def otlp_grpc_receiver() -> Iterator[Received]:
    """A gRPC collector implementing TraceService and MetricsService on 127.0.0.1:<random>."""
    received = Received()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.traces.append(request)
            received.headers.append(dict(context.invocation_metadata()))
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):
            received.metrics.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    received.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield received
    finally:
        server.stop(grace=None)


@pytest.fixture(autouse=True)
def _no_installed_telemetry() -> Iterator[None]:
    """Every test starts and ends with the span helpers on the no-op API."""
    telemetry_reset()
    yield
    telemetry_reset()


@pytest.fixture
def queued_mode(settings):
    """Production mode without a worker: tasks go to an in-memory broker nobody consumes."""
    saved = {k: celery_app.conf[k] for k in ("broker_url", "task_always_eager")}
    settings.CELERY_TASK_ALWAYS_EAGER = False
    celery_app.conf.update(broker_url="memory://", task_always_eager=False)
    try:
        yield
    finally:
        celery_app.conf.update(saved)
