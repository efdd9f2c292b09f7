"""What a run's answers say: why it failed (every answer, never a key), and numbers that agree with each other."""

import json

import pytest

from runner.providers import ErrorSpec, ToolCallSpec, Turn
from tests.runner.test_api import USER, _sse_events

SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2


@pytest.mark.django_db(transaction=True)
def test_the_readme_agent_without_a_key_says_why_in_every_answer(api_client, make_agent, monkeypatch):
    """The README's own example (`anthropic/claude-sonnet-4-6`, no ANTHROPIC_API_KEY)."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    agent = make_agent("anthropic/claude-sonnet-4-6", name="helper")
    expected = {"type": "authentication", "message": "ANTHROPIC_API_KEY is not set."}

    body = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json").json()
    assert (body["status"], body["stop_reason"], body["error"]) == ("failed", "llm_api_error", expected)
    assert api_client.get(f"/v1/runs/{body['run_id']}").json()["error"] == expected

    events = _sse_events(api_client.post(f"/v1/agents/{agent.pk}/messages/stream", USER, format="json"))
    (error_event,) = [e for kind, e in events if kind == "error"]
    assert error_event["error"] == expected
    assert [e["stop_reason"] for _, e in events if isinstance(e, dict) and "stop_reason" in e] == ["llm_api_error"]

    chat = api_client.post("/v1/chat/completions", {"model": "helper", "messages": USER["messages"]}, format="json")
    assert chat.status_code == 200  # served and recorded: the run's failure is the answer, never a 5xx
    assert chat.json()["choices"][0]["finish_reason"] == "error"
    error = chat.json()["error"]
    assert {key: error[key] for key in ("type", "message", "stop_reason")} == {
        **expected,
        "stop_reason": "llm_api_error",
    }
    assert api_client.get(f"/v1/runs/{error['run_id']}").json()["error"] == expected


@pytest.mark.django_db(transaction=True)
def test_a_key_echoed_by_the_provider_never_reaches_a_run_answer(api_client, make_agent, scenario):
    message = f"Incorrect API key provided: {SECRET}. You can find your API key at platform.openai.com."
    agent = make_agent(scenario("openai_chat", [Turn(error=ErrorSpec(kind="authentication", message=message))]))

    body = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json").json()
    assert body["error"]["type"] == "authentication"
    assert body["error"]["message"].startswith("Incorrect API key provided: ")
    run = api_client.get(f"/v1/runs/{body['run_id']}").json()
    stream = b"".join(api_client.post(f"/v1/agents/{agent.pk}/messages/stream", USER, format="json").streaming_content)
    for answer in (json.dumps(body), json.dumps(run), stream.decode()):
        assert SECRET not in answer and "A1b2C3d4E5f6G7h8I9j0" not in answer


@pytest.mark.django_db
def test_a_successful_run_has_no_error(api_client, make_agent):
    body = api_client.post(f"/v1/agents/{make_agent('scripted/echo').pk}/messages", USER, format="json").json()
    assert (body["stop_reason"], body["error"]) == ("end_turn", None)
    assert api_client.get(f"/v1/runs/{body['run_id']}").json()["error"] is None


@pytest.mark.django_db
def test_run_usage_says_null_for_what_no_step_reported_in_every_answer(api_client, make_agent):
    """Anthropic reports no reasoning-token count: no step has one, so every answer says null (not 0)."""
    agent = make_agent("scripted/echo-anthropic")
    body = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json").json()
    totals = api_client.get(f"/v1/runs/{body['run_id']}/usage").json()["totals"]
    assert body["usage"]["reasoning_tokens"] is None and totals["reasoning_tokens"] is None
    assert body["usage"]["prompt_tokens"] == totals["prompt_tokens"] > 0

    reasoning = make_agent("scripted/weather-responses", tools=["get_weather"])
    body = api_client.post(f"/v1/agents/{reasoning.pk}/messages", USER, format="json").json()
    totals = api_client.get(f"/v1/runs/{body['run_id']}/usage").json()["totals"]
    assert body["usage"]["reasoning_tokens"] == totals["reasoning_tokens"] == 64


@pytest.mark.django_db
def test_a_run_resumed_after_an_approval_has_ttft_within_its_total_duration(api_client, make_agent, scenario):
    handle = scenario(
        "anthropic",
        [Turn(text="Checking.", first_chunk_delay=0.3, tool_calls=[
            ToolCallSpec(name="issue_refund", arguments={"order_id": "A-1", "amount": 5}, id="call_a")]),
         Turn(text="Refunded.")],
    )  # fmt: skip
    agent = make_agent(handle, tools=["issue_refund"])
    body = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json").json()
    paused = api_client.get(f"/v1/runs/{body['run_id']}").json()
    assert paused["status"] == "paused"
    assert 0.3e9 <= paused["ttft_ns"] <= paused["total_duration_ns"]

    run = api_client.post(
        f"/v1/runs/{body['run_id']}/approvals", {"tool_call_id": "call_a", "approve": True}, format="json"
    ).json()
    assert (run["status"], run["stop_reason"]) == ("completed", "end_turn")
    # TTFT stays the first segment's; the total adds the resumed segment (the wait for a human is not counted).
    assert run["ttft_ns"] == paused["ttft_ns"]
    assert run["total_duration_ns"] > paused["total_duration_ns"] >= run["ttft_ns"]
