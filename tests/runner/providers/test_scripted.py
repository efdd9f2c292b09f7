"""The scripted provider: scenarios served through the real SDK clients, picked by the history."""

from __future__ import annotations

import pytest

from runner.providers import (
    ErrorSpec,
    LLMRequest,
    ProviderError,
    RecordedTurn,
    Scenario,
    ScriptedAdapter,
    ToolCallSpec,
    Turn,
    TurnUsage,
    get_adapter,
    register_scenario,
    scenario_names,
    unregister_scenario,
)
from steps.values import FunctionCall, MessageIn, TextContent, ToolCall, ToolReturn
from tests.runner.providers.conftest import user_request

TOOL_TURN = Turn(
    reasoning="Need the weather.",
    tool_calls=[
        ToolCallSpec(name="get_weather", arguments={"city": "Paris"}),
        ToolCallSpec(name="get_time", arguments={"tz": "CET"}),
    ],
    usage=TurnUsage(
        prompt_tokens=500, completion_tokens=80, cached_input_tokens=128, cache_write_tokens=256, reasoning_tokens=50
    ),
)
ANSWER_TURN = Turn(
    text="Sunny, 18C, and it is noon.",
    usage=TurnUsage(prompt_tokens=600, completion_tokens=12, cached_input_tokens=384),
)


def _after_tools(request: LLMRequest, result) -> LLMRequest:
    """The history the agent loop builds after running the result's tool calls."""
    messages = [
        *request.messages,
        MessageIn(role="assistant", content=result.content, tool_calls=result.tool_calls),
        MessageIn(
            role="tool",
            tool_returns=[
                ToolReturn(tool_call_id=c.id, status="success", func_response="ok") for c in result.tool_calls
            ],
        ),
    ]
    return LLMRequest(model=request.model, messages=messages, tools=request.tools)


@pytest.mark.parametrize("api", ["openai_chat", "openai_responses", "anthropic", "google"])
def test_a_two_step_scenario_answers_each_step_with_exact_usage(api):
    scenario = register_scenario(Scenario(f"test-two-step-{api}", api, "stand-in-model", [TOOL_TURN, ANSWER_TURN]))
    adapter, model = get_adapter(f"scripted/{scenario.name}")
    first_request = user_request(model=model)

    first = adapter.stream(first_request).run()
    second = adapter.stream(_after_tools(first_request, first)).run()

    assert model == "stand-in-model" and adapter.provider_name == scenario.provider
    assert [c.function.name for c in first.tool_calls] == ["get_weather", "get_time"]
    assert first.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert first.finish_reason == "tool_calls"
    assert first.usage.cache_write_tokens == (256 if api == "anthropic" else None)
    assert first.usage.prompt_tokens == 500 and first.usage.completion_tokens == 80
    if api != "anthropic":  # Anthropic reports no reasoning count
        assert first.usage.reasoning_tokens == 50
    assert first.usage.cached_input_tokens == 128
    assert any(p.type in ("reasoning", "summarized_reasoning") for p in first.content)
    assert second.content[-1].text == "Sunny, 18C, and it is noon."
    assert second.finish_reason == "stop" and second.usage.cached_input_tokens == 384
    assert first.response_model == "stand-in-model"
    unregister_scenario(scenario.name)


def test_the_step_is_the_number_of_assistant_messages_in_the_history():
    scenario = Scenario(
        "test-steps", "openai_chat", "gpt-4o-mini", [Turn(text="one"), Turn(text="two"), Turn(text="three")]
    )
    adapter = ScriptedAdapter(scenario)
    history = [MessageIn(role="user", content=[TextContent(text="go")])]
    for _ in range(2):
        history += [
            MessageIn(role="assistant", content=[TextContent(text="x")]),
            MessageIn(role="user", content=[TextContent(text="more")]),
        ]

    result = adapter.stream(LLMRequest(model="gpt-4o-mini", messages=history)).run()

    assert result.content[0].text == "three"


def test_running_past_the_last_turn_is_a_bad_request_the_step_records():
    adapter = ScriptedAdapter(Scenario("test-short", "anthropic", "claude-sonnet-4-6", [Turn(text="only")]))
    history = [
        MessageIn(role="user", content=[TextContent(text="a")]),
        MessageIn(role="assistant", content=[TextContent(text="only")]),
        MessageIn(role="user", content=[TextContent(text="b")]),
    ]

    call = adapter.stream(LLMRequest(model="claude-sonnet-4-6", messages=history))

    with pytest.raises(ProviderError) as excinfo:
        call.run()
    assert excinfo.value.error_type == "bad_request" and "test-short" in excinfo.value.message
    assert call.trace.error_type == "bad_request"


def test_attempts_of_one_step_serve_a_rate_limit_then_the_answer():
    scenario = Scenario(
        "test-retry",
        "google",
        "gemini-2.5-flash",
        [[Turn(error=ErrorSpec(kind="rate_limit", retry_after=2)), Turn(text="after retry")]],
    )
    adapter = ScriptedAdapter(scenario)

    with pytest.raises(ProviderError) as excinfo:
        adapter.stream(user_request()).run()
    result = adapter.stream(user_request()).run()

    assert (excinfo.value.error_type, excinfo.value.retry_after) == ("rate_limit", 2.0)
    assert result.content[-1].text == "after retry"


def test_recorded_turns_are_replayed_verbatim_from_the_repository():
    adapter, model = get_adapter("scripted/capital-openai")

    first = adapter.stream(user_request(model=model)).run()

    assert first.response_id == "chatcmpl-Dx0XpqH8w09uBXwq1zFGYdETjtnEl"
    assert first.usage.as_counts()["total_tokens"] == 68


def test_a_recorded_json_body_is_read_through_the_non_streaming_path(recordings_dir):
    body = (recordings_dir / "anthropic/test_anthropic_tool_output__i0.json").read_bytes()
    adapter = ScriptedAdapter(Scenario("test-json", "anthropic", "claude-sonnet-4-6", [RecordedTurn(body=body)]))

    result = adapter.stream(user_request()).run()

    assert result.finish_reason_raw == "tool_use" and len(result.tool_calls) == 1


def test_echo_scenario_answers_any_message_with_plausible_usage():
    adapter, _ = get_adapter("scripted/echo-anthropic")

    result = adapter.stream(user_request("ping")).run()

    assert result.content[0].text == "Echo: ping"
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0


def test_callable_turns_see_the_request():
    def shout(request: LLMRequest) -> Turn:
        return Turn(text=request.messages[-1].content[0].text.upper())

    adapter = ScriptedAdapter(Scenario("test-shout", "openai_responses", "gpt-5-mini", [shout], repeat_last=True))

    assert adapter.stream(user_request("hey")).run().content[-1].text == "HEY"


def test_chunk_delays_pace_the_stream_and_show_in_ttft():
    adapter = ScriptedAdapter(
        Scenario("test-paced", "openai_chat", "gpt-4o-mini", [Turn(text="abcdefgh", chunk_chars=2)]),
        first_chunk_delay=0.2,
        chunk_delay=0.02,
    )

    result = adapter.stream(user_request()).run()

    assert result.ttft_ns >= 200_000_000
    assert result.latency_ns >= result.ttft_ns + 4 * 20_000_000


def test_every_builtin_scenario_runs_its_first_step():
    outcomes = {}
    for name in scenario_names():
        adapter, model = get_adapter(f"scripted/{name}")
        call = adapter.stream(user_request(model=model))
        try:
            outcomes[name] = call.run().finish_reason
        except ProviderError as exc:
            outcomes[name] = exc.error_type
        assert call.trace is not None and call.trace.provider == adapter.provider_name
    assert outcomes["weather-anthropic"] == "tool_calls"
    assert outcomes["truncated-anthropic"] == "malformed_stream"
    assert outcomes["incomplete-responses"] == "length"
    assert outcomes["context-overflow-openai"] == "context_window_exceeded"
    assert {"echo", "echo-openai", "echo-responses", "echo-anthropic", "echo-google"} <= set(outcomes)


def test_tool_call_history_round_trips_through_every_api():
    for api in ("openai_chat", "openai_responses", "anthropic", "google"):
        scenario = Scenario(f"test-roundtrip-{api}", api, "m", [TOOL_TURN, ANSWER_TURN])
        adapter = ScriptedAdapter(scenario)
        request = user_request()
        first = adapter.stream(request).run()
        follow_up = _after_tools(request, first)
        follow_up.messages[-1].tool_returns.append(
            ToolReturn(tool_call_id="unknown", status="error", func_response="boom")
        )
        follow_up.messages[-2].tool_calls = [
            *first.tool_calls,
            ToolCall(id="unknown", function=FunctionCall(name="x", arguments="{}")),
        ]

        assert adapter.stream(follow_up).run().content[-1].text.startswith("Sunny")
