"""Durable staging of OTLP ingest: a 2xx means a committed IngestBatch; workers map batches; the sweep recovers."""

import time
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection, connections
from django.utils import timezone
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from agents.models import Run
from config.celery import app as celery_app
from steps.models import Message, ProviderTrace, Step
from tests.traces.test_ingest import URL, _agent_trace, _legacy_and_openinference, _spans
from traces.models import IngestBatch, IngestBatchStatus
from traces.services import trace_batches_process, trace_batches_sweep

PROTOBUF = "application/x-protobuf"


def _post(client, body: bytes, **headers):
    return client.generic("POST", URL, body, content_type=PROTOBUF, **headers)


def _counts() -> tuple[int, int, int, int]:
    return Run.objects.count(), Step.objects.count(), Message.objects.count(), ProviderTrace.objects.count()


@pytest.mark.django_db(transaction=True)
def test_a_2xx_means_the_batch_is_committed_before_any_mapping(api_client, organization, queued_mode):
    body = encode_spans(_spans(_agent_trace)).SerializeToString()
    response = _post(api_client, body)
    assert response.status_code == 200
    assert ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans == 0

    batch = IngestBatch.objects.get()
    assert batch.organization == organization and batch.status == IngestBatchStatus.QUEUED
    assert bytes(batch.body) == body and batch.span_count == 4 and batch.attempts == 0
    # Committed: another connection sees it (a crash now would lose nothing).
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT status, span_count FROM traces_ingestbatch WHERE id = %s", [batch.pk])
            assert cursor.fetchone() == ("queued", 4)
    finally:
        other.close()
    assert Step.objects.count() == 0  # nothing mapped without a worker

    assert trace_batches_process(batch_id=batch.pk) == 1
    batch.refresh_from_db()
    assert batch.status == IngestBatchStatus.DONE and batch.attempts == 1 and batch.processed_at is not None
    assert bytes(batch.body) == b""  # dropped once mapped
    assert batch.result["steps_created"] == 2 and batch.result["runs_created"] == 1
    assert Step.objects.count() == 2 and Run.objects.get().step_count == 2


@pytest.mark.django_db(transaction=True)
def test_accept_time_rejections_are_reported_and_nothing_is_stored_for_a_malformed_body(api_client, queued_mode):
    request = encode_spans(_spans(_legacy_and_openinference))
    request.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x00\x01"
    response = _post(api_client, request.SerializeToString())
    assert response.status_code == 200
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 1 and "invalid trace_id or span_id" in partial.error_message
    batch = IngestBatch.objects.get()
    assert batch.rejected_at_accept == 1 and "invalid trace_id" in batch.error

    assert _post(api_client, b"\xff\xfe not protobuf").status_code == 400
    assert IngestBatch.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_sweep_maps_batches_of_a_dead_worker_and_a_lost_task_without_duplicates(api_client, queued_mode):
    body = encode_spans(_spans(_agent_trace)).SerializeToString()
    for _ in range(3):  # the same spans three times: a client retrying
        assert _post(api_client, body).status_code == 200
    dead, lost, fresh = IngestBatch.objects.order_by("pk")
    # A worker claimed `dead` and was killed mid-transaction: nothing mapped, the batch stays processing.
    IngestBatch.objects.filter(pk=dead.pk).update(
        status=IngestBatchStatus.PROCESSING, attempts=1, claimed_at=timezone.now() - timedelta(hours=1)
    )
    # `lost` waited long enough for its task to count as lost (Redis keeps nothing on disk).
    IngestBatch.objects.filter(pk=lost.pk).update(received_at=timezone.now() - timedelta(hours=1))

    celery_app.conf.task_always_eager = True  # the sweep's tasks run here, after its commit
    outcome = trace_batches_sweep()
    # PostgreSQL sees that no transaction holds the claim and releases it; SQLite waits for the lease.
    assert outcome["released" if connection.vendor == "postgresql" else "requeued"] == 1 and outcome["enqueued"] >= 1
    assert set(IngestBatch.objects.values_list("status", flat=True)) == {IngestBatchStatus.DONE}
    assert IngestBatch.objects.get(pk=dead.pk).attempts == 2
    assert _counts() == (1, 2, 5, 2)  # one run, two steps, five messages, two provider traces: no duplicates
    assert Run.objects.get().step_count == 2
    assert fresh.pk  # claimed together with the others by the first task


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_keeps_losing_its_worker_ends_failed(api_client, queued_mode, settings):
    assert _post(api_client, encode_spans(_spans(_agent_trace)).SerializeToString()).status_code == 200
    IngestBatch.objects.update(
        status=IngestBatchStatus.PROCESSING,
        attempts=settings.STEPLENS_OTLP_BATCH_MAX_ATTEMPTS,
        claimed_at=timezone.now() - timedelta(hours=1),
    )
    assert trace_batches_sweep()["failed"] == 1
    batch = IngestBatch.objects.get()
    assert batch.status == IngestBatchStatus.FAILED and "Gave up" in batch.error
    assert bytes(batch.body)  # kept, so it can be retried from the admin


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_cannot_be_mapped_fails_alone_with_the_reason(api_client, organization, queued_mode):
    assert _post(api_client, encode_spans(_spans(_agent_trace)).SerializeToString()).status_code == 200
    broken = IngestBatch.objects.create(
        organization=organization, content_type=PROTOBUF, body=b"\xff\xfe damaged", body_bytes=9, span_count=1
    )
    assert trace_batches_process() == 2
    statuses = dict(IngestBatch.objects.values_list("pk", "status"))
    assert statuses.pop(broken.pk) == IngestBatchStatus.FAILED
    assert list(statuses.values()) == [IngestBatchStatus.DONE]
    assert "not a valid protobuf" in IngestBatch.objects.get(pk=broken.pk).error
    assert Step.objects.count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("limit", ["batches", "bytes"])
def test_a_full_backlog_answers_503_with_retry_after_and_stores_nothing(api_client, queued_mode, settings, limit):
    body = encode_spans(_spans(_legacy_and_openinference)).SerializeToString()
    settings.STEPLENS_OTLP_BACKLOG_MAX_BATCHES = 1 if limit == "batches" else 0
    settings.STEPLENS_OTLP_BACKLOG_MAX_BYTES = 0 if limit == "batches" else len(body) + 10
    settings.STEPLENS_OTLP_RETRY_AFTER_SECONDS = 7
    assert _post(api_client, body).status_code == 200

    response = _post(api_client, body)
    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    from google.rpc.status_pb2 import Status

    assert "backlog" in Status.FromString(response.content).message
    assert IngestBatch.objects.count() == 1

    trace_batches_process()  # a worker catches up: accepted again
    assert _post(api_client, body).status_code == 200


@pytest.fixture
def ingest_worker(redis_url, postgres, transactional_db, settings):
    """A real worker thread consuming the `ingest` queue from Redis; the endpoint enqueues, nothing runs eagerly."""
    saved = {k: celery_app.conf[k] for k in ("broker_url", "task_always_eager", "result_backend")}
    settings.CELERY_TASK_ALWAYS_EAGER = False
    celery_app.conf.update(broker_url=redis_url, task_always_eager=False, result_backend=redis_url)
    try:
        with start_worker(
            celery_app, pool="solo", queues=["ingest"], perform_ping_check=False, shutdown_timeout=10
        ) as worker:
            yield worker
    finally:
        celery_app.conf.update(saved)


def test_a_real_worker_over_redis_maps_an_accepted_batch(ingest_worker, api_client):
    response = _post(api_client, encode_spans(_spans(_agent_trace)).SerializeToString())
    assert response.status_code == 200

    deadline = time.monotonic() + 30
    while IngestBatch.objects.filter(status=IngestBatchStatus.DONE).count() < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    batch = IngestBatch.objects.get()
    assert batch.status == IngestBatchStatus.DONE, batch.error
    assert Step.objects.count() == 2 and Run.objects.get().step_count == 2
    assert Message.objects.count() == 5 and ProviderTrace.objects.count() == 2


@pytest.mark.django_db
def test_the_admin_lists_batches_and_queues_failed_ones_again(client, organization, django_user_model):
    body = encode_spans(_spans(_agent_trace)).SerializeToString()
    failed = IngestBatch.objects.create(
        organization=organization, content_type=PROTOBUF, body=body, body_bytes=len(body), span_count=2,
        status=IngestBatchStatus.FAILED, attempts=5, error="database was restarting",
    )  # fmt: skip
    admin_user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin_user)

    page = client.get("/admin/traces/ingestbatch/")
    assert page.status_code == 200 and b"database was restarting" in page.content
    response = client.post(
        "/admin/traces/ingestbatch/", {"action": "retry_failed", "_selected_action": [failed.pk]}, follow=True
    )
    assert b"1 failed batch(es) queued again" in response.content
    failed.refresh_from_db()
    assert failed.status == IngestBatchStatus.DONE  # embedded mode maps it right away
    assert Step.objects.filter(organization=organization).exists()
