"""GET /metrics: token-protected Prometheus text whose series match what happened and what the database holds."""

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.faults.otlp_support import llm_spans_request
from tests.ops.conftest import TOKEN, scrape
from traces.models import IngestBatch, IngestBatchStatus

pytestmark = pytest.mark.django_db
REPO = Path(__file__).resolve().parents[2]


def _value(samples, name, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_is_off_without_a_token_and_401_with_a_wrong_one(client, settings):
    settings.STEPLENS_METRICS_TOKEN = ""
    off = client.get("/metrics")
    assert off.status_code == 404 and off.json()["error"] == "not_found"
    assert "STEPLENS_METRICS_TOKEN" in off.json()["detail"]
    settings.STEPLENS_METRICS_TOKEN = TOKEN
    for header in ({}, {"HTTP_AUTHORIZATION": "Bearer nope"}, {"HTTP_AUTHORIZATION": TOKEN}):
        response = client.get("/metrics", **header)
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"


def test_http_requests_are_counted_by_route_template_and_status(client, api_client, metrics_token):
    before = scrape(client)
    route = "/v1/steps/<str:step_id>"
    key = ("http_server_request_duration_seconds_count", "GET", route, "404")
    for step_id in ("step-a", "step-b", "step-c"):
        assert api_client.get(f"/v1/steps/{step_id}").status_code == 404
    after = scrape(client)
    labels = {"http_request_method": "GET", "http_route": route, "http_response_status_code": "404"}
    count = _value(after, key[0], **labels)
    assert count - (_value(before, key[0], **labels) or 0) == 3
    # One series for the route, not one per id.
    assert not any("step-a" in str(labels) for _, labels in after)
    assert _value(after, "http_server_request_duration_seconds_bucket", le="+Inf", **labels) == count


def test_ingest_counts_accepted_and_rejected_spans_and_refused_requests(client, api_client, metrics_token):
    before = scrape(client)
    body = llm_spans_request(3).SerializeToString()
    response = api_client.generic("POST", "/v1/traces", body, content_type="application/x-protobuf")
    assert response.status_code == 200, response.content
    refused = api_client.generic("POST", "/v1/traces", b"x", content_type="text/plain")
    assert refused.status_code == 415
    after = scrape(client)

    def delta(name, **labels):
        return (_value(after, name, **labels) or 0) - (_value(before, name, **labels) or 0)

    assert delta("steplens_ingest_spans_accepted_total") == 3
    assert delta("steplens_ingest_requests_rejected_total", reason="unsupported_media_type") == 1


def test_spans_mapped_are_counted_once_the_mapping_commits(
    client, api_client, metrics_token, django_capture_on_commit_callbacks
):
    from steps.models import Step

    body = llm_spans_request(4).SerializeToString()
    before = scrape(client)
    with django_capture_on_commit_callbacks(execute=False) as pending:
        assert api_client.generic("POST", "/v1/traces", body, content_type="application/x-protobuf").status_code == 200
    assert pending  # the mapping is counted by a commit callback, not while its transaction may still roll back

    def mapped() -> float:
        now = scrape(client)
        return (_value(now, "steplens_ingest_spans_mapped_total") or 0) - (
            _value(before, "steplens_ingest_spans_mapped_total") or 0
        )

    assert mapped() == 0 and Step.objects.count() == 4  # embedded mode mapped at once; not yet counted
    for callback in pending:
        callback()
    assert mapped() == 4
    assert _value(scrape(client), "steplens_ingest_spans_rejected_total", reason="mapping") in (None, 0.0)


def test_backlog_lag_and_pending_gauges_match_the_database(client, organization, metrics_token):
    now = timezone.now()
    for age, size in ((120, 1000), (30, 500)):
        batch = IngestBatch.objects.create(
            organization=organization, content_type="application/json", body=b"{}", body_bytes=size, span_count=1
        )
        IngestBatch.objects.filter(pk=batch.pk).update(received_at=now - timedelta(seconds=age))
    IngestBatch.objects.create(
        organization=organization, content_type="application/json", body=b"", body_bytes=9999,
        status=IngestBatchStatus.DONE,
    )  # fmt: skip
    samples = scrape(client)
    assert _value(samples, "steplens_state_up") == 1
    assert _value(samples, "steplens_ingest_backlog_batches") == 2
    assert _value(samples, "steplens_ingest_backlog_bytes") == 1500
    lag = _value(samples, "steplens_ingest_mapping_lag_seconds")
    assert 120 <= lag < 180
    assert _value(samples, "steplens_runs_in_flight", status="running") == 0
    assert _value(samples, "steplens_steps_pending", age="gt_1h") == 0


def test_a_database_failure_leaves_the_process_metrics_and_says_state_down(client, metrics_token, monkeypatch):
    from django.db import OperationalError

    import ops.collectors

    def unavailable():
        raise OperationalError("connection refused")

    monkeypatch.setattr(ops.collectors, "state_snapshot", unavailable)
    samples = scrape(client)
    assert _value(samples, "steplens_state_up") == 0
    assert any(name.startswith("http_server_request_duration_seconds") for name, _ in samples)


_RECORD = """
import os, sys
sys.path.insert(0, {repo!r})
from config import metrics
metrics.http_request_record(method="GET", route="/healthz", status=200, duration_s=0.01)
metrics.ingest_spans_accepted_record(accepted=int(sys.argv[1]), rejected=0)
"""


def test_counters_of_several_processes_are_summed_through_the_multiprocess_directory(tmp_path):
    """What gunicorn workers and Celery children do: each process writes its own files; a scrape sums them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    record = textwrap.dedent(_RECORD.format(repo=str(REPO)))
    for spans in (2, 5):
        subprocess.run([sys.executable, "-c", record, str(spans)], env=env, check=True, timeout=60)
    collect = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", collect], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert "steplens_ingest_spans_accepted_total 7.0" in output
    assert (
        'http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",'
        'http_route="/healthz"} 2.0' in output
    )
    # Files of exited processes are pruned at the next start (gunicorn on_starting, Celery worker_init).
    written_by = {path.stem.rsplit("_", 1)[1] for path in tmp_path.glob("*.db")}
    prune = f"import sys; sys.path.insert(0, {str(REPO)!r}); from config import metrics; print(metrics.multiprocess_dir_prune())"  # noqa: E501
    removed = subprocess.run(
        [sys.executable, "-c", prune], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert len(written_by) == 2 and int(removed) >= 2
    # Left: the files the pruning process itself just made, none of the exited ones.
    assert not written_by & {path.stem.rsplit("_", 1)[1] for path in tmp_path.glob("*.db")}


def test_task_runs_and_job_rows_are_recorded_and_periodic_runs_written(client, metrics_token, settings):
    from ops.models import PeriodicTaskRun
    from traces.tasks import sweep_ingest_batches

    before = scrape(client)
    sweep_ingest_batches.delay()  # eager: the same signals as in a worker
    after = scrape(client)
    name = "steplens_task_duration_seconds_count"
    labels = {"task": "traces.sweep_ingest_batches", "outcome": "success"}
    assert (_value(after, name, **labels) or 0) - (_value(before, name, **labels) or 0) == 1
    run = PeriodicTaskRun.objects.get(task="traces.sweep_ingest_batches")
    assert run.last_outcome == "success" and run.last_finished_at is not None
    assert _value(after, "steplens_periodic_task_late", task="traces.sweep_ingest_batches") == 0
