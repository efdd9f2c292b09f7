"""GET /v1/requests/{request_id} (everything for one request) and GET /v1/runs/{id}/usage."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.factories import (
    AgentFactory,
    MessageFactory,
    OrganizationFactory,
    ProviderTraceFactory,
    RunFactory,
    StepFactory,
    StepMetricsFactory,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_request_join_returns_runs_steps_metrics_messages_traces_and_errors(api_client, organization):
    agent = AgentFactory(organization=organization)
    run = RunFactory(agent=agent, request_id="req-42", error_data={"message": "provider down", "error_type": "x"})
    ok = StepFactory(agent=agent, run=run, request_id="req-42", status="success", created_at=T0)
    failed = StepFactory(
        agent=agent, run=run, request_id="req-42", status="failed", error_type="rate_limit_error",
        error_data={"message": "429 from openai", "traceback": None, "details": {}},
        created_at=T0 + timedelta(seconds=1),
    )  # fmt: skip
    StepMetricsFactory(step=ok, ttft_ns=111)
    MessageFactory(step=ok, run=run, sequence_id=1, role="user", content=[{"type": "text", "text": "hi"}])
    MessageFactory(step=ok, run=run, sequence_id=2, content=[{"type": "text", "text": "hello"}])
    ProviderTraceFactory(step=failed, error_type="rate_limit_error", error_message="Too Many Requests")
    # A step carrying the request id without a run (an ingested span), and noise that must not appear.
    loose = StepFactory(agent=agent, request_id="req-42", created_at=T0 + timedelta(seconds=2))
    StepFactory(agent=agent, request_id="req-43")
    StepFactory(agent=AgentFactory(), request_id="req-42")  # another organization, same request id

    response = api_client.get("/v1/requests/req-42")

    assert response.status_code == 200, response.content
    body = response.json()
    assert [r["id"] for r in body["runs"]] == [run.id]
    assert [s["id"] for s in body["steps"]] == [ok.id, failed.id, loose.id]
    assert body["steps"][0]["metrics"]["ttft_ns"] == 111
    assert [m["message_type"] for m in body["messages"]] == ["user_message", "assistant_message"]
    assert [t["step_id"] for t in body["provider_traces"]] == [failed.id]
    sources = {(e["source"], e["error_type"]) for e in body["errors"]}
    assert sources == {("run", "x"), ("step", "rate_limit_error"), ("provider_trace", "rate_limit_error")}
    step_error = next(e for e in body["errors"] if e["source"] == "step")
    assert step_error["message"] == "429 from openai"
    assert step_error["step_id"] == failed.id


def test_request_join_finds_steps_through_their_run(api_client, organization):
    run = RunFactory(agent=AgentFactory(organization=organization), request_id="req-run")
    step = StepFactory(agent=run.agent, run=run, request_id=None)
    body = api_client.get("/v1/requests/req-run").json()
    assert [s["id"] for s in body["steps"]] == [step.id]


def test_request_join_reads_every_partition_and_answers_the_same_each_time(api_client, organization, monkeypatch):
    """Steps weeks apart (other partitions on PostgreSQL), one ingested before its run, and a message without a
    step: found the same on the first call (statements prepared), the next (prepared ones reused) and with
    statement preparation off (PgBouncer's setting)."""
    from django.db import connection

    agent = AgentFactory(organization=organization)
    run = RunFactory(agent=agent, request_id="req-p", created_at=T0)
    early = StepFactory(agent=agent, run=run, request_id="another", created_at=T0 - timedelta(days=30))
    late = StepFactory(agent=agent, run=run, request_id=None, created_at=T0 + timedelta(days=20))
    loose = StepFactory(agent=agent, request_id="req-p", created_at=T0 - timedelta(days=400))  # DEFAULT partition
    StepMetricsFactory(step=late, ttft_ns=7)
    MessageFactory(step=None, run=run, organization=organization, sequence_id=1, role="user",
                   step_created_at=T0 + timedelta(days=9))  # fmt: skip
    MessageFactory(step=early, run=run, sequence_id=2)
    ProviderTraceFactory(step=loose)

    def generic_plans() -> dict[str, int]:
        if connection.vendor != "postgresql":
            return {}
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement, generic_plans FROM pg_prepared_statements")
            return {statement.split(" WHERE ")[0].split(" FROM ")[-1]: n for statement, n in cursor.fetchall()}

    before = generic_plans()
    bodies = [api_client.get("/v1/requests/req-p").json() for _ in range(3)]
    after = generic_plans()
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    bodies.append(api_client.get("/v1/requests/req-p").json())

    first = bodies[0]
    assert [s["id"] for s in first["steps"]] == [loose.id, early.id, late.id]
    assert [s["metrics"]["ttft_ns"] if s["metrics"] else None for s in first["steps"]] == [None, None, 7]
    assert [m["message_type"] for m in first["messages"]] == ["user_message", "assistant_message"]
    assert [t["step_id"] for t in first["provider_traces"]] == [loose.id]
    assert all(body == first for body in bodies[1:])
    if connection.vendor == "postgresql":  # prepared once, then run with its generic plan every time
        for table in ('"steps_step" s', '"steps_message"'):
            assert after[table] - before.get(table, 0) == 3, table


def test_unknown_or_foreign_request_id_is_not_found(api_client):
    other = RunFactory(agent=AgentFactory(organization=OrganizationFactory()), request_id="req-theirs")
    StepFactory(agent=other.agent, run=other, request_id="req-theirs")
    assert api_client.get("/v1/requests/req-theirs").status_code == 404
    assert api_client.get("/v1/requests/req-nothing").status_code == 404
    assert api_client.get("/v1/requests/req-nothing?x=1").status_code == 400


def test_run_usage_lists_every_step_and_sums_them(api_client, organization):
    agent = AgentFactory(organization=organization)
    run = RunFactory(agent=agent)
    rows = [
        (100, 10, 40, None, Decimal("0.0010000000"), "success"),
        (200, 20, 0, 5, Decimal("0.0020000001"), "success"),
        (None, None, None, None, None, "failed"),
    ]
    steps = [
        StepFactory(
            agent=agent, run=run, step_number=i + 1, prompt_tokens=p, completion_tokens=c,
            total_tokens=None if p is None else p + c, cached_input_tokens=cached, reasoning_tokens=r, cost_usd=cost,
            status=status, created_at=T0 + timedelta(seconds=i),
        )
        for i, (p, c, cached, r, cost, status) in enumerate(rows)
    ]  # fmt: skip
    for i in range(300):  # "however many": no page cut
        StepFactory(agent=agent, run=run, step_number=10 + i, prompt_tokens=1, completion_tokens=1, total_tokens=2,
                    created_at=T0 + timedelta(minutes=1, seconds=i))  # fmt: skip
    StepFactory(agent=agent, prompt_tokens=999)  # not in the run

    response = api_client.get(f"/v1/runs/{run.id}/usage")

    assert response.status_code == 200, response.content
    body = response.json()
    assert len(body["steps"]) == 303
    assert [s["id"] for s in body["steps"][:3]] == [s.id for s in steps]
    totals = body["totals"]
    assert totals["steps"] == 303
    assert totals["failed_steps"] == 1
    assert totals["prompt_tokens"] == 300 + 300
    assert totals["completion_tokens"] == 30 + 300
    assert totals["total_tokens"] == 330 + 600
    assert totals["cached_input_tokens"] == 40
    assert totals["reasoning_tokens"] == 5
    assert Decimal(str(totals["cost_usd"])) == Decimal("0.0030000001")
    assert body["steps"][2]["prompt_tokens"] is None


def test_run_usage_of_another_organizations_run_is_not_found(api_client):
    run = RunFactory(agent=AgentFactory(organization=OrganizationFactory()))
    assert api_client.get(f"/v1/runs/{run.id}/usage").status_code == 404
    assert api_client.get("/v1/runs/run-missing/usage").status_code == 404
