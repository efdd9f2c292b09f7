"""GET /v1/steps (every filter, cursor pagination), one step, its messages, metrics, trace, and feedback."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.services import api_key_create
from agents.models import Run
from steps.models import Step
from tests.factories import (
    AgentFactory,
    MessageFactory,
    OrganizationFactory,
    ProjectFactory,
    ProviderTraceFactory,
    RunFactory,
    StepFactory,
    StepMetricsFactory,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["data"]]


def _list(client: APIClient, **params) -> list[str]:
    return _ids(client.get("/v1/steps", params))


@pytest.fixture
def agent(organization):
    return AgentFactory(organization=organization)


# --- filters ------------------------------------------------------------------------------------


def test_list_without_filters_returns_the_organizations_steps_newest_first(api_client, agent):
    older = StepFactory(agent=agent, created_at=T0)
    newer = StepFactory(agent=agent, created_at=T0 + timedelta(seconds=1))
    StepFactory(created_at=T0)  # another organization

    body = api_client.get("/v1/steps").json()

    assert [r["id"] for r in body["data"]] == [newer.id, older.id]
    assert body["has_more"] is False and body["next_cursor"] is None
    assert body["data"][0]["agent_id"] == agent.id


@pytest.mark.parametrize(
    ("param", "value", "match", "other"),
    [
        ("model", "gpt-4o", {"model": "gpt-4o"}, {"model": "gpt-4o-mini"}),
        ("model_handle", "anthropic/claude", {"model_handle": "anthropic/claude"}, {"model_handle": "openai/x"}),
        ("provider", "anthropic", {"provider_name": "anthropic"}, {"provider_name": "openai"}),
        ("status", "failed", {"status": "failed"}, {"status": "success"}),
        ("status", "failed,cancelled", {"status": "cancelled"}, {"status": "pending"}),
        ("stop_reason", "max_steps", {"stop_reason": "max_steps"}, {"stop_reason": "end_turn"}),
        ("error_type", "rate_limit_error", {"error_type": "rate_limit_error"}, {"error_type": "api_timeout"}),
        ("feedback", "negative", {"feedback": "negative"}, {"feedback": "positive"}),
        ("has_feedback", "true", {"feedback": "positive"}, {"feedback": None}),
        ("has_feedback", "false", {"feedback": None}, {"feedback": "negative"}),
        ("request_id", "req-x", {"request_id": "req-x"}, {"request_id": "req-y"}),
        ("trace_id", "a" * 32, {"trace_id": "a" * 32}, {"trace_id": "b" * 32}),
        ("user_id", "u-1", {"user_id": "u-1"}, {"user_id": "u-2"}),
        ("conversation_id", "c-1", {"conversation_id": "c-1"}, {"conversation_id": None}),
        ("min_ttft_ms", "500", {"ttft_ns": 500_000_000}, {"ttft_ns": 499_999_999}),
        ("min_latency_ms", "1500.5", {"latency_ns": 1_600_000_000}, {"latency_ns": 1_500_000_000}),
        ("metadata.env", "prod", {"metadata": {"env": "prod"}}, {"metadata": {"env": "staging"}}),
        ("metadata.attempts", "3", {"metadata": {"attempts": 3}}, {"metadata": {"attempts": 4}}),
        ("metadata.app.region", "eu", {"metadata": {"app": {"region": "eu"}}}, {"metadata": {"app": {"region": "us"}}}),
    ],
)
def test_each_filter_keeps_matching_steps_only(api_client, agent, param, value, match, other):
    kept = StepFactory(agent=agent, **match)
    StepFactory(agent=agent, **other)
    assert _list(api_client, **{param: value}) == [kept.id]


def test_agent_run_and_project_filters(api_client, organization):
    project = ProjectFactory(organization=organization)
    agent = AgentFactory(organization=organization, project=project)
    run = RunFactory(agent=agent)
    in_run = StepFactory(agent=agent, run=run, project=project)
    elsewhere = StepFactory(agent=AgentFactory(organization=organization))

    assert _list(api_client, agent_id=agent.id) == [in_run.id]
    assert _list(api_client, run_id=run.id) == [in_run.id]
    assert _list(api_client, project_id=project.id) == [in_run.id]
    assert set(_list(api_client, agent_id=f"{agent.id},{elsewhere.agent_id}")) == {in_run.id, elsewhere.id}


def test_tags_match_any_by_default_and_all_on_request(api_client, agent):
    both = StepFactory(agent=agent, tags=["prod", "vip"])
    prod = StepFactory(agent=agent, tags=["prod"])
    StepFactory(agent=agent, tags=["beta"])
    StepFactory(agent=agent, tags=["production"])  # a prefix is not a match

    assert set(_list(api_client, tags="prod,vip")) == {both.id, prod.id}
    assert _list(api_client, tags="prod,vip", tags_match="all") == [both.id]
    assert set(_ids(api_client.get("/v1/steps?tags=prod&tags=vip"))) == {both.id, prod.id}


def test_start_is_inclusive_and_end_exclusive(api_client, agent):
    at_start = StepFactory(agent=agent, created_at=T0)
    StepFactory(agent=agent, created_at=T0 - timedelta(microseconds=1))
    StepFactory(agent=agent, created_at=T0 + timedelta(hours=1))
    inside = StepFactory(agent=agent, created_at=T0 + timedelta(minutes=59))

    found = _list(api_client, start="2026-03-01T12:00:00Z", end="2026-03-01T13:00:00+00:00")

    assert found == [inside.id, at_start.id]


def test_filters_combine(api_client, agent):
    kept = StepFactory(agent=agent, model="m1", status="failed", user_id="u")
    StepFactory(agent=agent, model="m1", status="success", user_id="u")
    StepFactory(agent=agent, model="m2", status="failed", user_id="u")
    assert _list(api_client, model="m1", status="failed", user_id="u") == [kept.id]


# --- bad parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("stop_reason=tired", "stop_reason"),
        ("feedback=meh", "feedback"),
        ("has_feedback=maybe", "has_feedback"),
        ("tags_match=some", "tags_match"),
        ("start=yesterday", "start"),
        ("end=2026-13-01", "end"),
        ("min_ttft_ms=fast", "min_ttft_ms"),
        ("min_latency_ms=1e999999", "min_latency_ms"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("order=sideways", "order"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=eyJrIjoic3RlcHMifQ", "cursor"),
        ("metadata.bad key=1", "metadata.bad key"),
        ("modle=gpt-4o", "modle"),
        (f"trace_id={'a' * 33}", "trace_id"),
    ],
)
def test_malformed_parameters_are_a_400_naming_the_field(api_client, agent, query, field):
    StepFactory(agent=agent)
    response = api_client.get(f"/v1/steps?{query}")
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["fields"], body


def test_a_cursor_from_the_other_order_is_refused(api_client, agent):
    StepFactory.create_batch(3, agent=agent)
    cursor = api_client.get("/v1/steps", {"limit": 1}).json()["next_cursor"]
    response = api_client.get("/v1/steps", {"limit": 1, "cursor": cursor, "order": "asc"})
    assert response.status_code == 400
    assert "cursor" in response.json()["fields"]


# --- cursor pagination --------------------------------------------------------------------------


def _walk(client: APIClient, *, order: str, limit: int, on_page=None, **params) -> list[str]:
    seen, cursor = [], None
    while True:
        query = {"order": order, "limit": limit, **params}
        if cursor:
            query["cursor"] = cursor
        body = client.get("/v1/steps", query).json()
        seen += [r["id"] for r in body["data"]]
        if on_page:
            on_page()
        if not body["has_more"]:
            return seen
        cursor = body["next_cursor"]


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_cursor_pages_lose_and_repeat_nothing_while_steps_arrive(api_client, agent, order):
    # Many steps share a timestamp, so the id tie-break is exercised on every page boundary.
    existing = [StepFactory(agent=agent, created_at=T0 + timedelta(seconds=i // 3)) for i in range(25)]
    arrivals: list[Step] = []

    def arrive() -> None:
        arrivals.append(StepFactory(agent=agent, created_at=T0 + timedelta(days=1, seconds=len(arrivals))))
        arrivals.append(StepFactory(agent=agent, created_at=T0 + timedelta(seconds=5)))  # inside the walked range

    seen = _walk(api_client, order=order, limit=4, on_page=arrive)

    assert len(seen) == len(set(seen)), "a step was repeated"
    assert {s.id for s in existing} <= set(seen), "a step that existed before the walk was lost"
    expected = sorted(
        Step.objects.filter(pk__in=seen).values_list("created_at", "id"), reverse=order == "desc"
    )  # the walk is in (created_at, id) order
    assert seen == [pk for _, pk in expected]


def test_cursor_pages_respect_filters(api_client, agent):
    kept = [StepFactory(agent=agent, model="m", created_at=T0 + timedelta(seconds=i)) for i in range(7)]
    StepFactory.create_batch(5, agent=agent, model="other")
    assert _walk(api_client, order="asc", limit=2, model="m") == [s.id for s in kept]


# --- one step and its parts ---------------------------------------------------------------------


def test_step_detail_includes_metrics(api_client, agent):
    metrics = StepMetricsFactory(step=StepFactory(agent=agent), ttft_ns=123)
    body = api_client.get(f"/v1/steps/{metrics.step_id}").json()
    assert body["id"] == metrics.step_id
    assert body["metrics"]["ttft_ns"] == 123


def test_step_metrics(api_client, agent):
    metrics = StepMetricsFactory(step=StepFactory(agent=agent), ttft_ns=5, llm_request_ns=6, step_ns=7)
    body = api_client.get(f"/v1/steps/{metrics.step_id}/metrics").json()
    assert (body["step_id"], body["ttft_ns"], body["llm_request_ns"], body["step_ns"]) == (metrics.step_id, 5, 6, 7)

    bare = StepFactory(agent=agent)
    assert api_client.get(f"/v1/steps/{bare.id}/metrics").json()["ttft_ns"] is None


def test_step_trace_returns_the_last_attempt_or_the_one_asked_for(api_client, agent):
    step = StepFactory(agent=agent)
    ProviderTraceFactory(step=step, attempt=1, error_type="rate_limit_error", response_json=None)
    ProviderTraceFactory(step=step, attempt=2, response_json={"id": "resp-2"})

    last = api_client.get(f"/v1/steps/{step.id}/trace").json()
    first = api_client.get(f"/v1/steps/{step.id}/trace", {"attempt": 1}).json()

    assert (last["attempt"], last["response_json"], last["attempts"]) == (2, {"id": "resp-2"}, [1, 2])
    assert (first["attempt"], first["error_type"]) == (1, "rate_limit_error")
    assert api_client.get(f"/v1/steps/{step.id}/trace", {"attempt": 3}).status_code == 404
    assert api_client.get(f"/v1/steps/{step.id}/trace", {"attempt": "x"}).status_code == 400
    assert api_client.get(f"/v1/steps/{StepFactory(agent=agent).id}/trace").status_code == 404


def test_step_messages_render_the_typed_union_in_sequence_pages(api_client, agent):
    run = RunFactory(agent=agent)
    step = StepFactory(agent=agent, run=run)
    make = MessageFactory._meta.model.objects.create
    common = {"organization": agent.organization, "agent": agent, "run": run, "step": step}
    common["step_created_at"] = step.created_at
    make(**common, sequence_id=1, role="system", content=[{"type": "text", "text": "Be brief."}])
    make(**common, sequence_id=2, role="user", content=[{"type": "text", "text": "Weather?"}])
    make(
        **common, sequence_id=3, role="assistant",
        content=[{"type": "reasoning", "reasoning": "Check tool.", "signature": "sig"},
                 {"type": "redacted_reasoning", "data": "xyz"}, {"type": "text", "text": "Looking."}],
        tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"c":"Oslo"}'}}],
    )  # fmt: skip
    make(
        **common, sequence_id=4, role="tool", tool_call_id="call_1", name="weather",
        tool_returns=[{"tool_call_id": "call_1", "status": "success", "func_response": [{"type": "text", "text": "5C"}],
                       "stdout": ["ok"], "stderr": None}],
    )  # fmt: skip
    make(
        **common, sequence_id=5, role="approval", name="approval_request",
        tool_calls=[{"id": "call_2", "type": "function", "function": {"name": "pay", "arguments": "{}"}}],
    )  # fmt: skip
    make(**common, sequence_id=6, role="approval", name="denied", tool_call_id="call_2",
         content=[{"type": "text", "text": "too much"}])  # fmt: skip

    first = api_client.get(f"/v1/steps/{step.id}/messages", {"limit": 6}).json()
    second = api_client.get(f"/v1/steps/{step.id}/messages", {"limit": 6, "cursor": first["next_cursor"]}).json()

    types = [m["message_type"] for m in first["data"] + second["data"]]
    assert types == [
        "system_message", "user_message", "reasoning_message", "hidden_reasoning_message", "assistant_message",
        "tool_call_message", "tool_return_message", "approval_request_message", "approval_response_message",
    ]  # fmt: skip
    items = {m["message_type"]: m for m in first["data"] + second["data"]}
    assert items["user_message"]["content"] == "Weather?"
    assert items["reasoning_message"]["reasoning"] == "Check tool."
    assert items["tool_call_message"]["tool_call"] == {
        "name": "weather", "arguments": '{"c":"Oslo"}', "tool_call_id": "call_1"
    }  # fmt: skip
    assert items["tool_return_message"]["tool_return"]["func_response"] == [{"type": "text", "text": "5C"}]
    assert items["tool_return_message"]["tool_return"]["stdout"] == ["ok"]
    assert items["approval_request_message"]["tool_call"]["name"] == "pay"
    assert items["approval_response_message"]["approve"] is False
    assert items["approval_response_message"]["reason"] == "too much"
    assert {m["step_id"] for m in items.values()} == {step.id}
    assert [m["sequence"] for m in first["data"]] == [1, 2, 3, 3, 3, 3]
    assert second["has_more"] is False

    # `limit` counts the typed messages returned, also when a page stops inside one stored message.
    everything = first["data"] + second["data"]
    for order, expected in (("asc", everything), ("desc", everything[::-1])):
        walked, cursor, pages = [], None, 0
        while True:
            params = {"limit": 1, "order": order, **({"cursor": cursor} if cursor else {})}
            page = api_client.get(f"/v1/steps/{step.id}/messages", params).json()
            assert len(page["data"]) == 1
            walked += page["data"]
            pages += 1
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        assert (walked, pages) == (expected, len(everything)), order
    pages = [api_client.get(f"/v1/steps/{step.id}/messages", {"limit": 4}).json()]
    for _ in range(2):
        params = {"limit": 4, "cursor": pages[-1]["next_cursor"]}
        pages.append(api_client.get(f"/v1/steps/{step.id}/messages", params).json())
    assert [len(p["data"]) for p in pages] == [4, 4, 1]
    assert [m for p in pages for m in p["data"]] == everything
    assert api_client.get(f"/v1/steps/{step.id}/messages", {"limit": 9}).json()["has_more"] is False


# --- feedback -----------------------------------------------------------------------------------


def test_feedback_sets_feedback_and_adds_and_removes_tags(api_client, agent):
    step = StepFactory(agent=agent, tags=["keep", "old"])
    response = api_client.patch(
        f"/v1/steps/{step.id}/feedback",
        {"feedback": "negative", "add_tags": ["bad-answer"], "remove_tags": ["old"]},
        format="json",
    )
    assert response.status_code == 200, response.content
    step.refresh_from_db()
    assert step.feedback == "negative"
    assert step.tags == ["bad-answer", "keep"]

    api_client.patch(f"/v1/steps/{step.id}/feedback", {"add_tags": ["x"]}, format="json")
    step.refresh_from_db()
    assert step.feedback == "negative", "feedback left alone when not sent"

    api_client.patch(f"/v1/steps/{step.id}/feedback", {"feedback": None}, format="json")
    step.refresh_from_db()
    assert step.feedback is None
    assert step.tags == ["bad-answer", "keep", "x"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tags": ["a"]}, "tags"),
        ({"feedback": "great"}, "feedback"),
        ({"add_tags": "a"}, "add_tags"),
        ({"remove_tags": [1, {}]}, "remove_tags.1"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_feedback_bodies_are_a_400(api_client, agent, body, field):
    step = StepFactory(agent=agent, tags=["a"])
    response = api_client.patch(f"/v1/steps/{step.id}/feedback", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]
    step.refresh_from_db()
    assert step.tags == ["a"]


def test_feedback_body_must_be_an_object(api_client, agent):
    step = StepFactory(agent=agent)
    response = api_client.patch(f"/v1/steps/{step.id}/feedback", ["positive"], format="json")
    assert response.status_code == 400


# --- organization isolation ---------------------------------------------------------------------


def test_another_organizations_step_is_not_found_on_every_step_endpoint(api_client):
    theirs = StepFactory(agent=AgentFactory(organization=OrganizationFactory()))
    StepMetricsFactory(step=theirs)
    ProviderTraceFactory(step=theirs)
    MessageFactory(step=theirs)

    for suffix in ("", "/messages", "/metrics", "/trace"):
        response = api_client.get(f"/v1/steps/{theirs.id}{suffix}")
        assert response.status_code == 404, suffix
        assert response.json()["error"]
    response = api_client.patch(f"/v1/steps/{theirs.id}/feedback", {"feedback": "positive"}, format="json")
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.feedback is None
    assert _list(api_client) == []
    assert _list(api_client, agent_id=theirs.agent_id) == []


def test_requests_without_a_key_are_refused(agent):
    assert APIClient().get("/v1/steps").status_code == 401


def test_each_key_sees_its_own_organization(agent):
    mine = StepFactory(agent=agent)
    other_org = OrganizationFactory()
    theirs = StepFactory(agent=AgentFactory(organization=other_org))
    _, raw = api_key_create(organization=other_org)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert _list(client) == [theirs.id]
    assert client.get(f"/v1/steps/{mine.id}").status_code == 404


def test_postgres_filters_use_json_operators(postgres, api_client, agent):
    kept = StepFactory(agent=agent, tags=["a", "b"], metadata={"env": "prod", "n": 2})
    StepFactory(agent=agent, tags=["a"], metadata={"env": "prod", "n": "2x"})
    assert connection.vendor == "postgresql"
    assert _list(api_client, tags="a,b", tags_match="all", **{"metadata.n": "2"}) == [kept.id]


def _as_json(data):
    import json

    from rest_framework.renderers import JSONRenderer

    return json.loads(JSONRenderer().render(data))


def test_fast_renderings_equal_the_drf_serializers(agent):
    """Every Representation the read endpoints use renders exactly what its DRF serializer does:
    filled-in rows, rows of nulls, decimals, datetimes with microseconds, JSON, method fields."""
    from steps.api import serializers as s
    from steps.models import ProviderTrace

    run = RunFactory(
        agent=agent, status="failed", stop_reason="error", metadata={"a": [1, {"b": None}]},
        error_data={"message": "boom", "error_type": "timeout"}, ttft_ns=12, total_duration_ns=34,
        completed_at=T0 + timedelta(seconds=5, microseconds=123),
    )  # fmt: skip
    bare_run = RunFactory(agent=None, organization=agent.organization)
    full = StepFactory(
        agent=agent, run=run, project=ProjectFactory(organization=agent.organization),
        cost_usd="0.0012345678", completed_at=T0 + timedelta(seconds=3, microseconds=7), created_at=T0, tags=["a"],
        metadata={"k": 1}, error_data={"message": "x"}, progression=5, ttft_ns=5, latency_ns=6,
    )  # fmt: skip
    bare = StepFactory(agent=None, organization=agent.organization, provider_name=None, model=None, model_handle=None)
    StepMetricsFactory(step=full)
    StepMetricsFactory(step=bare, ttft_ns=None, llm_request_ns=None, step_ns=None)
    ProviderTraceFactory(step=full, error_type="rate_limit", error_message="slow down")
    ProviderTraceFactory(step=bare, response_json=None, latency_ms=None)

    steps = list(Step.objects.filter(pk__in=[full.pk, bare.pk]).select_related("metrics"))
    runs = [Run.objects.select_related("agent").get(pk=pk) for pk in (run.pk, bare_run.pk)]
    traces = list(ProviderTrace.objects.filter(step__in=steps))
    errors = [
        {"source": "run", "run_id": run.pk, "step_id": None, "error_type": "timeout", "message": "boom",
         "data": run.error_data, "created_at": run.completed_at},
        {"source": "step", "run_id": None, "step_id": bare.pk, "error_type": None, "message": None, "data": None,
         "created_at": None},
    ]  # fmt: skip
    cases = [
        (s.STEP, s.StepSerializer, steps),
        (s.STEP_METRICS, s.StepMetricsSerializer, [step.metrics for step in steps]),
        (s.PROVIDER_TRACE, s.ProviderTraceSerializer, traces),
        (s.REQUEST_RUN, s.RequestRunSerializer, runs),
        (s.REQUEST_ERROR, s.RequestErrorSerializer, errors),
    ]
    for fast, serializer, instances in cases:
        assert len(instances) == 2
        assert _as_json(fast.many(instances)) == _as_json(serializer(instances, many=True).data), serializer
        assert list(fast.one(instances[0])) == list(serializer(instances[0]).data), serializer  # same key order
    with_metrics = s.steps_data(steps, with_metrics=True)
    assert _as_json(with_metrics) == _as_json(s.StepWithMetricsSerializer(steps, many=True).data)
    assert any(row["cost_usd"] == 0.0012345678 and row["completed_at"].endswith(".000007Z") for row in with_metrics)
