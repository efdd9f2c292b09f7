"""The agents and runs API: CRUD, the three message endpoints, SSE framing and resume, cancel, approvals."""

import json

import pytest
from rest_framework.test import APIClient

from agents.models import Agent, Run, RunStatus, StopReason
from runner.providers import ToolCallSpec, Turn, TurnUsage
from steps.models import Step

pytestmark = pytest.mark.django_db

USER = {"messages": [{"role": "user", "content": "What is the weather in Oslo?"}]}


def _sse_events(response) -> list:
    body = b"".join(response.streaming_content).decode()
    frames = [f for f in body.split("\n\n") if f]
    events = []
    for frame in frames:
        lines = frame.split("\n")
        if lines[0].startswith(":"):
            continue
        kind = lines[0][len("event: ") :] if lines[0].startswith("event: ") else "message"
        data = next(line[len("data: ") :] for line in lines if line.startswith("data: "))
        events.append((kind, data if data == "[DONE]" else json.loads(data)))
    return events


def test_agent_crud(api_client):
    created = api_client.post(
        "/v1/agents",
        {"name": "support", "model_handle": "scripted/echo", "system": "Be brief.", "tools": ["get_weather"],
         "temperature": 0.2, "max_output_tokens": 256, "context_window": 8000, "max_steps": 4, "tags": ["t1"]},
        format="json",
    )  # fmt: skip
    assert created.status_code == 201, created.content
    agent_id = created.json()["id"]
    assert api_client.get("/v1/agents").json()[0]["id"] == agent_id
    patched = api_client.patch(f"/v1/agents/{agent_id}", {"max_steps": 2}, format="json")
    assert patched.json()["max_steps"] == 2 and patched.json()["tools"] == ["get_weather"]
    assert api_client.delete(f"/v1/agents/{agent_id}").status_code == 204
    assert api_client.get(f"/v1/agents/{agent_id}").status_code == 404
    assert Agent.objects.filter(pk=agent_id, deleted_at__isnull=False).exists()  # history is kept


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "model_handle": "nope"}, "model_handle"),
        ({"name": "x", "model_handle": "scripted/no-such-scenario"}, "model_handle"),
        ({"name": "x", "model_handle": "scripted/echo", "tools": ["format_disk"]}, "tools"),
        ({"name": "x", "model_handle": "scripted/echo", "max_steps": 0}, "max_steps"),
        ({"model_handle": "scripted/echo"}, "name"),
    ],
)
def test_invalid_agent_is_a_400_naming_the_field(api_client, body, field):
    response = api_client.post("/v1/agents", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert not Agent.objects.exists()


def test_duplicate_agent_name_is_a_409_conflict(api_client):
    api_client.post("/v1/agents", {"name": "same", "model_handle": "scripted/echo"}, format="json")
    response = api_client.post("/v1/agents", {"name": "same", "model_handle": "scripted/echo"}, format="json")
    assert (
        response.status_code == 409 and response.json()["error"] == "conflict" and "name" in response.json()["fields"]
    )


def test_sync_messages_return_typed_messages_stop_reason_and_usage(api_client, make_agent, scenario):
    handle = scenario(
        "openai_chat",
        [
            Turn(tool_calls=[ToolCallSpec(name="get_weather", arguments={"city": "Oslo"})],
                 usage=TurnUsage(prompt_tokens=100, completion_tokens=10)),
            Turn(text="Cold.", usage=TurnUsage(prompt_tokens=120, completion_tokens=3, cached_input_tokens=64)),
        ],
    )  # fmt: skip
    agent = make_agent(handle, tools=["get_weather"])
    response = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json", HTTP_X_REQUEST_ID="req-sync-1")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["request_id"] == "req-sync-1" and response["X-Request-ID"] == "req-sync-1"
    assert body["stop_reason"] == "end_turn"
    types = [m["message_type"] for m in body["messages"]]
    assert types == ["user_message", "tool_call_message", "tool_return_message", "assistant_message"]
    assert body["usage"]["prompt_tokens"] == 220 and body["usage"]["cached_input_tokens"] == 64
    assert body["usage"]["step_count"] == 2
    assert set(Step.objects.filter(run_id=body["run_id"]).values_list("request_id", flat=True)) == {"req-sync-1"}


@pytest.mark.parametrize(
    "body",
    [{}, {"messages": []}, {"messages": "hi"}, {"messages": [{"role": "user", "content": 5}]},
     {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}]}]}],
)  # fmt: skip
def test_bad_message_input_is_a_400_and_creates_no_run(api_client, make_agent, body):
    agent = make_agent("scripted/echo")
    response = api_client.post(f"/v1/agents/{agent.pk}/messages", body, format="json")
    assert response.status_code == 400
    assert response.json()["detail"]
    assert not Run.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_stream_sends_seq_ids_then_stop_reason_usage_and_done(api_client, make_agent, scenario):
    handle = scenario("anthropic", [Turn(reasoning="Thinking about it.", text="Hello there, friend!", chunk_chars=4)])
    agent = make_agent(handle)
    response = api_client.post(f"/v1/agents/{agent.pk}/messages/stream", USER, format="json")
    assert response["Content-Type"] == "text/event-stream"
    events = _sse_events(response)
    data = [e for _, e in events if e != "[DONE]"]
    assert [e["seq_id"] for e in data] == list(range(1, len(data) + 1))
    assert "".join(e["content"] for e in data if e["message_type"] == "assistant_message") == "Hello there, friend!"
    assert any(e["message_type"] == "reasoning_message" for e in data)
    assert [e["message_type"] for e in data[-2:]] == ["stop_reason", "usage_statistics"]
    assert data[-2]["stop_reason"] == "end_turn"
    assert events[-1] == ("message", "[DONE]")

    # A client that dropped after seq 3 resumes from there and gets the rest, ending the same way.
    run_id = data[0]["run_id"]
    resumed = _sse_events(api_client.get(f"/v1/runs/{run_id}/stream?starting_after=3"))
    assert [e["seq_id"] for _, e in resumed if e != "[DONE]"] == [e["seq_id"] for e in data[3:]]
    assert resumed[-1] == ("message", "[DONE]")


@pytest.mark.django_db(transaction=True)
def test_stream_errors_are_sent_as_error_events_before_done(api_client, make_agent, scenario):
    from runner.providers import ErrorSpec

    agent = make_agent(scenario("openai_chat", [Turn(error=ErrorSpec(kind="authentication"))]))
    events = _sse_events(api_client.post(f"/v1/agents/{agent.pk}/messages/stream", USER, format="json"))
    errors = [e for kind, e in events if kind == "error"]
    assert errors and errors[0]["error_type"] == "authentication"
    assert events[-1] == ("message", "[DONE]")


@pytest.mark.django_db(transaction=True)
def test_async_returns_202_and_the_run_finishes_in_the_background(api_client, make_agent, scenario):
    agent = make_agent(scenario("google", [Turn(text="background answer")]))
    response = api_client.post(f"/v1/agents/{agent.pk}/messages/async", USER, format="json")
    assert response.status_code == 202
    run_id = response.json()["id"]
    events = _sse_events(api_client.get(f"/v1/runs/{run_id}/stream"))  # waits for the end
    assert events[-1] == ("message", "[DONE]")
    run = api_client.get(f"/v1/runs/{run_id}").json()
    assert (run["status"], run["stop_reason"], run["background"]) == ("completed", "end_turn", True)
    assert [r["id"] for r in api_client.get("/v1/runs?agent_id=" + agent.pk).json()] == [run_id]


def test_runs_list_rejects_bad_parameters(api_client, make_agent):
    body = api_client.get("/v1/runs?limit=abc").json()
    assert body["error"] == "bad_request" and list(body["fields"]) == ["limit"]
    assert api_client.get("/v1/runs?limit=0").status_code == 400
    assert "status" in api_client.get("/v1/runs?status=flying").json()["fields"]
    agent = make_agent("scripted/echo")
    run = Run.objects.create(organization=agent.organization, agent=agent, request_id="r")
    response = api_client.get(f"/v1/runs/{run.pk}/stream?starting_after=-1")
    assert response.status_code == 400 and "starting_after" in response.json()["fields"]
    assert api_client.get("/v1/runs/run-x/stream").status_code == 404


def test_approval_endpoint_resumes_the_run(api_client, make_agent, scenario):
    handle = scenario(
        "openai_chat",
        [Turn(tool_calls=[ToolCallSpec(name="issue_refund", arguments={"order_id": "Z", "amount": 3}, id="call_z")]),
         Turn(text="Refunded.")],
    )  # fmt: skip
    agent = make_agent(handle, tools=["issue_refund"])
    body = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json").json()
    assert body["stop_reason"] == "requires_approval"
    assert body["messages"][-1]["message_type"] == "approval_request_message"
    bad = api_client.post(f"/v1/runs/{body['run_id']}/approvals", {"tool_call_id": "x", "approve": True}, format="json")
    assert (bad.status_code, list(bad.json()["fields"])) == (409, ["tool_call_id"])  # not one the run awaits
    run = api_client.post(
        f"/v1/runs/{body['run_id']}/approvals", {"tool_call_id": "call_z", "approve": True}, format="json"
    ).json()
    assert (run["status"], run["stop_reason"]) == ("completed", "end_turn")
    again = api_client.post(
        f"/v1/runs/{body['run_id']}/approvals", {"tool_call_id": "call_z", "approve": True}, format="json"
    )
    assert again.status_code == 409


def test_cancel_endpoint_on_a_paused_run(api_client, make_agent, scenario):
    handle = scenario(
        "openai_chat",
        [Turn(tool_calls=[ToolCallSpec(name="issue_refund", arguments={"order_id": "Q", "amount": 1}, id="call_q")])],
    )
    agent = make_agent(handle, tools=["issue_refund"])
    body = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json").json()
    run = api_client.post(f"/v1/runs/{body['run_id']}/cancel").json()
    assert (run["status"], run["stop_reason"]) == (RunStatus.CANCELLED, StopReason.CANCELLED)


def test_another_organizations_agents_and_runs_are_404(make_agent, scenario):
    from tests.factories import OrganizationFactory

    agent = make_agent(scenario("openai_chat", [Turn(text="x")]))
    run = Run.objects.create(organization=agent.organization, agent=agent, request_id="r")
    from accounts.services import api_key_create

    _, other_key = api_key_create(organization=OrganizationFactory())
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {other_key}")
    for method, url in [
        ("get", f"/v1/agents/{agent.pk}"),
        ("patch", f"/v1/agents/{agent.pk}"),
        ("delete", f"/v1/agents/{agent.pk}"),
        ("post", f"/v1/agents/{agent.pk}/messages"),
        ("get", f"/v1/runs/{run.pk}"),
        ("get", f"/v1/runs/{run.pk}/stream"),
        ("post", f"/v1/runs/{run.pk}/cancel"),
        ("post", f"/v1/runs/{run.pk}/approvals"),
    ]:
        assert getattr(other, method)(url, USER, format="json").status_code == 404, url
    assert other.get("/v1/agents").json() == []
    assert other.get("/v1/runs").json() == []
