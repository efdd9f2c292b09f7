"""Steplens's own metrics over OpenTelemetry: what the meter provider of the OTEL_* set-up exports."""

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from config.telemetry import Telemetry, telemetry_install, telemetry_reset
from tests.faults.otlp_support import llm_spans_request

pytestmark = pytest.mark.django_db


@pytest.fixture
def reader():
    reader = InMemoryMetricReader()
    telemetry_install(
        Telemetry(meter_provider=MeterProvider(metric_readers=[reader])), set_global=False, instrument=False
    )
    yield reader
    telemetry_reset()


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    found: dict[str, list] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend((metric.unit, p) for p in metric.data.data_points)
    return found


def test_http_and_ingest_metrics_are_recorded_with_the_conventions_names_units_and_attributes(reader, api_client):
    assert api_client.get("/v1/steps/step-nope").status_code == 404
    body = llm_spans_request(4).SerializeToString()
    assert api_client.generic("POST", "/v1/traces", body, content_type="application/x-protobuf").status_code == 200
    points = _points(reader)

    durations = [
        (unit, p) for unit, p in points["http.server.request.duration"]
        if p.attributes.get("http.route") == "/v1/steps/<str:step_id>"
    ]  # fmt: skip
    assert len(durations) == 1
    unit, point = durations[0]
    assert unit == "s" and point.count == 1
    assert point.attributes == {
        "http.request.method": "GET",
        "http.route": "/v1/steps/<str:step_id>",
        "http.response.status_code": 404,
    }
    assert list(point.explicit_bounds)[:3] == [0.005, 0.01, 0.025]
    ((unit, accepted),) = points["steplens.ingest.spans.accepted"]
    assert unit == "{span}" and accepted.value == 4


def test_state_gauges_are_observed_from_the_database_at_export(organization):
    from datetime import timedelta

    from django.utils import timezone

    from ops import collectors
    from traces.models import IngestBatch

    batch = IngestBatch.objects.create(
        organization=organization, content_type="application/json", body=b"{}", body_bytes=321, span_count=1
    )
    IngestBatch.objects.filter(pk=batch.pk).update(received_at=timezone.now() - timedelta(seconds=90))
    reader = InMemoryMetricReader()
    collectors._snapshot = (0.0, None)  # no reading cached from another test
    collectors.otel_gauges_register(meter_provider=MeterProvider(metric_readers=[reader]))
    points = _points(reader)
    assert [p.value for _, p in points["steplens.ingest.backlog.batches"]] == [1]
    assert [(u, p.value) for u, p in points["steplens.ingest.backlog.size"]] == [("By", 321)]
    ((unit, lag),) = points["steplens.ingest.mapping.lag"]
    assert unit == "s" and 90 <= lag.value < 150
    assert {p.attributes["status"] for _, p in points["steplens.runs.in_flight"]} == {"created", "running", "paused"}
