"""The built-in tool scenarios (calculator-*, chart-*, refund-*) through the API, as the README uses them."""

import pytest

from runner.providers import scenario_names

pytestmark = pytest.mark.django_db

APIS = ("openai", "responses", "anthropic", "google")


def _ask(api_client, make_agent, handle: str, tools: list[str], question: str) -> dict:
    agent = make_agent(handle, tools=tools)
    body = {"messages": [{"role": "user", "content": question}]}
    response = api_client.post(f"/v1/agents/{agent.pk}/messages", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _types(body: dict) -> list[str]:
    return [m["message_type"] for m in body["messages"] if m["message_type"] != "reasoning_message"]


def test_every_tool_scenario_is_built_in_for_each_api():
    names = set(scenario_names())
    assert {f"{tool}-{api}" for tool in ("calculator", "chart", "refund") for api in APIS} <= names


@pytest.mark.parametrize("api", APIS)
def test_calculator_scenario_calls_the_calculator_and_answers_with_its_result(api_client, make_agent, api):
    body = _ask(api_client, make_agent, f"scripted/calculator-{api}", ["calculator"], "What is (17 + 25) * 3?")
    assert (body["status"], body["stop_reason"]) == ("completed", "end_turn")
    calls = [m for m in body["messages"] if m["message_type"] == "tool_call_message"]
    assert [(c["tool_call"]["name"], c["tool_call"]["arguments"]) for c in calls] == [
        ("calculator", '{"expression": "(17 + 25) * 3"}')
    ]
    (ret,) = [m for m in body["messages"] if m["message_type"] == "tool_return_message"]
    assert ret["tool_return"]["status"] == "success"
    assert ret["tool_return"]["func_response"] in ("126", [{"type": "text", "text": "126"}])
    assert body["messages"][-1]["message_type"] == "assistant_message"
    assert "126" in body["messages"][-1]["content"]
    assert body["usage"]["step_count"] == 2


def test_chart_scenario_renders_a_png_from_the_numbers_in_the_question(api_client, make_agent):
    body = _ask(api_client, make_agent, "scripted/chart-openai", ["render_chart"], "Plot my sign-ups: 3, 9, 4, 12")
    assert body["stop_reason"] == "end_turn"
    (ret,) = [m for m in body["messages"] if m["message_type"] == "tool_return_message"]
    parts = ret["tool_return"]["func_response"]
    assert [p["type"] for p in parts] == ["text", "image"]
    assert parts[0]["text"] == "Weekly sign-ups: bar chart of 4 values (max 12)."
    assert "bar chart of 4 values" in body["messages"][-1]["content"]


@pytest.mark.parametrize("api", APIS)
def test_refund_scenario_waits_for_approval_then_refunds(api_client, make_agent, api):
    body = _ask(
        api_client, make_agent, f"scripted/refund-{api}", ["issue_refund"], "Refund order B-77, it never arrived."
    )
    assert (body["status"], body["stop_reason"]) == ("paused", "requires_approval")
    request = body["messages"][-1]
    assert request["message_type"] == "approval_request_message"
    assert request["tool_call"]["name"] == "issue_refund" and '"order_id": "B-77"' in request["tool_call"]["arguments"]

    run = api_client.post(
        f"/v1/runs/{body['run_id']}/approvals",
        {"tool_call_id": request["tool_call"]["tool_call_id"], "approve": True},
        format="json",
    ).json()
    assert (run["status"], run["stop_reason"], run["step_count"]) == ("completed", "end_turn", 2)
    messages = api_client.get(f"/v1/runs/{body['run_id']}").json()
    assert messages["error"] is None
    steps = api_client.get("/v1/steps", {"run_id": body["run_id"], "order": "asc"}).json()["data"]
    answer = api_client.get(f"/v1/steps/{steps[-1]['id']}/messages").json()["data"][-1]
    assert answer["message_type"] == "assistant_message"
    assert answer["content"] == "Done. Refunded 49.90 for order B-77."


def test_a_denied_refund_continues_and_the_answer_gives_the_reason(api_client, make_agent):
    body = _ask(api_client, make_agent, "scripted/refund-anthropic", ["issue_refund"], "Refund order A-1042 please")
    call_id = body["messages"][-1]["tool_call"]["tool_call_id"]
    run = api_client.post(
        f"/v1/runs/{body['run_id']}/approvals",
        {"tool_call_id": call_id, "approve": False, "reason": "Above the refund limit"},
        format="json",
    ).json()
    assert (run["status"], run["stop_reason"], run["step_count"]) == ("completed", "end_turn", 2)
    steps = api_client.get("/v1/steps", {"run_id": body["run_id"], "order": "asc"}).json()["data"]
    answer = api_client.get(f"/v1/steps/{steps[-1]['id']}/messages").json()["data"][-1]
    assert answer["content"].startswith("I could not do that: ")
    assert "Above the refund limit" in answer["content"]
