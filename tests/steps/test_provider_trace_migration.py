"""ProviderTrace moved from `traces` to `steps` in state only (steps/0007, traces/0003): the table and every row
stay, readable through steps.models.ProviderTrace, and the move can be undone. Run on a database that holds rows."""

from datetime import UTC, datetime

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from steps.models import ProviderTrace
from tests.factories import OrganizationFactory

BEFORE = [("steps", "0006_error_rollups_failed_only"), ("traces", "0002_ingest_batch")]
MOVED = [("steps", "0007_providertrace_from_traces"), ("traces", "0003_providertrace_to_steps")]
FIELDS = [
    "id", "organization_id", "step_id", "attempt", "provider", "api", "model", "request_json", "response_json",
    "latency_ms", "error_type", "error_message", "created_at",
]  # fmt: skip


def _migrate(targets):
    """Migrate the test database to `targets`; returns the models as they are in that state."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def _to_latest():
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def _rows(model):
    return {row["id"]: row for row in model.objects.order_by("id").values(*FIELDS)}


@pytest.mark.django_db(transaction=True)
def test_provider_trace_rows_survive_the_move_to_steps_and_back():
    organization = OrganizationFactory()
    try:
        old = _migrate(BEFORE)
        OldStep, OldTrace = old.get_model("steps", "Step"), old.get_model("traces", "ProviderTrace")
        when = datetime(2026, 11, 3, 10, 15, tzinfo=UTC)
        ok = OldStep.objects.create(
            id="step-moved-1", organization_id=organization.pk, status="success", created_at=when
        )
        failed = OldStep.objects.create(
            id="step-moved-2", organization_id=organization.pk, status="failed", created_at=when
        )
        OldTrace.objects.create(
            organization_id=organization.pk, step=ok, attempt=1, provider="openai", api="chat", model="gpt-4o",
            request_json={"model": "gpt-4o", "messages": [{"role": "user", "content": "héllo"}]},
            response_json={"id": "resp-1", "usage": {"prompt_tokens": 12}}, latency_ms=840,
        )  # fmt: skip
        OldTrace.objects.create(
            organization_id=organization.pk, step=failed, attempt=1, provider="anthropic", request_json={"a": [1, 2]},
            response_json=None, latency_ms=None, error_type="rate_limit", error_message="slow down",
        )  # fmt: skip
        OldTrace.objects.create(organization_id=organization.pk, step=failed, attempt=2, provider="anthropic")
        before = _rows(OldTrace)
        assert len(before) == 3
        old_type = ContentType.objects.get(app_label="traces", model="providertrace")

        new = _migrate(MOVED)
        assert _rows(ProviderTrace) == before  # every column of every row, read through the steps model
        assert _rows(new.get_model("steps", "ProviderTrace")) == before
        with pytest.raises(LookupError):
            new.get_model("traces", "ProviderTrace")
        assert ProviderTrace._meta.db_table == "traces_providertrace"
        # The model as it is in that state (the current one has columns added since, e.g. step_created_at).
        moved = new.get_model("steps", "ProviderTrace")
        assert sorted(moved.objects.get(step_id="step-moved-2", attempt=2).step.provider_traces.values_list(
            "attempt", flat=True
        )) == [1, 2]  # fmt: skip
        # The content type (and with it every permission on provider traces) follows the model.
        assert ContentType.objects.get(pk=old_type.pk).app_label == "steps"

        back = _migrate(BEFORE)
        assert _rows(back.get_model("traces", "ProviderTrace")) == before
        assert ContentType.objects.get(pk=old_type.pk).app_label == "traces"
    finally:
        _to_latest()
    assert _rows(ProviderTrace) == before
    assert ContentType.objects.get_for_model(ProviderTrace).pk == old_type.pk
