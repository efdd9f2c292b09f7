"""Batch claims live as long as the transaction mapping them: a claim lost with its database connection is
released as soon as the database answers again, never left `processing` until the lease."""

import contextlib
from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.db import OperationalError, connections
from django.utils import timezone
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from steps.models import Step
from tests.traces.test_ingest import _agent_trace, _spans
from tests.traces.test_staging import _post
from traces import tasks
from traces.ingest import writer
from traces.models import IngestBatch, IngestBatchStatus
from traces.services import trace_batches_process, trace_batches_sweep


def _accepted_batch(api_client) -> IngestBatch:
    assert _post(api_client, encode_spans(_spans(_agent_trace)).SerializeToString()).status_code == 200
    return IngestBatch.objects.get()


def _orphan(batch: IngestBatch) -> None:
    """What a worker leaves when the database drops mid-mapping: claimed, no transaction holding it."""
    IngestBatch.objects.filter(pk=batch.pk).update(
        status=IngestBatchStatus.PROCESSING, attempts=1, claimed_at=timezone.now() - timedelta(seconds=30)
    )


@pytest.mark.django_db(transaction=True)
def test_a_claim_that_died_with_its_transaction_is_mapped_by_the_next_task_not_after_the_lease(
    postgres, api_client, queued_mode
):
    batch = _accepted_batch(api_client)
    _orphan(batch)
    assert trace_batches_process() == 1  # any task: the claim is released, then claimed and mapped
    batch.refresh_from_db()
    assert batch.status == IngestBatchStatus.DONE and batch.attempts == 2
    assert Step.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_claim_whose_transaction_is_alive_is_left_to_its_worker(postgres, api_client, queued_mode):
    batch = _accepted_batch(api_client)
    _orphan(batch)
    worker = connections.create_connection("default")  # the worker still mapping: its transaction locks the row
    try:
        worker.set_autocommit(False)
        with worker.cursor() as cursor:
            cursor.execute("SELECT id FROM traces_ingestbatch WHERE id = %s FOR UPDATE", [batch.pk])
        assert trace_batches_sweep()["released"] == 0
        assert IngestBatch.objects.get().status == IngestBatchStatus.PROCESSING
        worker.rollback()  # the worker's connection dies: its claim goes with it
    finally:
        worker.close()
    assert trace_batches_sweep()["released"] == 1
    assert IngestBatch.objects.get().status == IngestBatchStatus.QUEUED


@pytest.mark.django_db(transaction=True)
def test_a_database_error_mid_mapping_releases_the_claim_and_the_task_retries_with_a_countdown(
    api_client, queued_mode, monkeypatch
):
    batch = _accepted_batch(api_client)
    real = writer.ingest_span_groups
    calls = []

    def drops_once(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(writer, "ingest_span_groups", drops_once)
    retries = []
    monkeypatch.setattr(tasks.process_ingest_batches, "retry", lambda **kw: retries.append(kw) or Retry())
    with contextlib.suppress(Retry):  # raised or recorded, as the eager settings say
        tasks.process_ingest_batches.apply(kwargs={"batch_id": batch.pk})
    assert len(retries) == 1 and retries[0]["countdown"] >= 1  # retried later, not failed
    assert isinstance(retries[0]["exc"], OperationalError)
    batch.refresh_from_db()
    assert batch.status == IngestBatchStatus.QUEUED and batch.attempts == 1  # released at once: the database is up

    assert trace_batches_process(batch_id=batch.pk) == 1  # the retry
    batch.refresh_from_db()
    assert batch.status == IngestBatchStatus.DONE and Step.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_worker_claims_at_most_one_requests_worth_of_batches(api_client, queued_mode, settings):
    body = encode_spans(_spans(_agent_trace)).SerializeToString()
    for _ in range(3):
        assert _post(api_client, body).status_code == 200
    settings.STEPLENS_OTLP_MAX_SPANS_PER_REQUEST = 8  # two batches of 4 spans
    assert trace_batches_process() == 2
    assert IngestBatch.objects.filter(status=IngestBatchStatus.QUEUED).count() == 1
    settings.STEPLENS_OTLP_MAX_SPANS_PER_REQUEST = 1  # the first batch is always taken, whatever its size
    assert trace_batches_process() == 1
