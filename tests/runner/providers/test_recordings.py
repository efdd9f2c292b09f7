"""Every recorded case in tests/recordings gives exactly the expected usage, finish reason and tool calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner.providers import LLMResult, ProviderError, parse_recorded_response
from runner.providers.transport import WireResponse
from tests.runner.providers.conftest import RECORDINGS, adapter_serving, manifest_cases, user_request

CASES = manifest_cases()
USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def _case_id(case: dict[str, Any]) -> str:
    return case["file"]


def _observed(result: LLMResult) -> dict[str, Any]:
    return {
        **result.usage.as_counts(),
        "finish_reason_raw": result.finish_reason_raw,
        "tool_calls": len(result.tool_calls),
    }


def test_the_development_recordings_are_present():
    assert len(CASES) >= 60, f"expected the recorded cases in {RECORDINGS}"


@pytest.mark.parametrize("case", [c for c in CASES if c["status_code"] < 400], ids=_case_id)
def test_recorded_response_gives_the_expected_usage_finish_reason_and_tool_calls(case):
    body = (RECORDINGS / case["file"]).read_bytes()

    result = parse_recorded_response(case["api"], body, streaming=case["streaming"], status_code=case["status_code"])

    assert _observed(result) == case["expected"]
    assert result.usage.prompt_tokens_details is not None or case["expected"]["prompt_tokens"] is None
    assert result.response_model
    assert result.finish_reason is not None


@pytest.mark.parametrize("case", [c for c in CASES if c["status_code"] < 400], ids=_case_id)
def test_recorded_response_is_read_the_same_when_the_format_is_sniffed(case):
    body = (RECORDINGS / case["file"]).read_bytes()

    result = parse_recorded_response(case["api"], body)

    assert _observed(result) == case["expected"]


@pytest.mark.parametrize("case", [c for c in CASES if c["status_code"] >= 400], ids=_case_id)
def test_recorded_error_body_becomes_a_typed_provider_error(case):
    body = (RECORDINGS / case["file"]).read_bytes()

    with pytest.raises(ProviderError) as excinfo:
        parse_recorded_response(case["api"], body, streaming=case["streaming"], status_code=case["status_code"])

    error = excinfo.value
    assert error.error_type == "bad_request"  # both recorded errors are invalid-parameter 400s
    assert error.status_code == case["status_code"]
    assert error.retryable is False
    assert error.message and "Error code" not in error.message
    assert all(case["expected"][k] is None for k in USAGE_KEYS)


@pytest.mark.parametrize("case", [c for c in CASES if c["status_code"] >= 400], ids=_case_id)
def test_recorded_error_body_is_recognised_without_its_status_code(case):
    body = (RECORDINGS / case["file"]).read_bytes()

    with pytest.raises(ProviderError) as excinfo:
        parse_recorded_response(case["api"], body)

    assert excinfo.value.error_type == "bad_request"


@pytest.mark.parametrize("case", [c for c in CASES if c["file"].endswith(".sse")], ids=_case_id)
def test_streamed_chunks_add_up_to_the_final_content(case):
    body = (RECORDINGS / case["file"]).read_bytes()
    wire = WireResponse(body=body, headers={"content-type": "text/event-stream"})
    adapter, _ = adapter_serving(case["api"], wire)

    call = adapter.stream(user_request())
    chunks = list(call)
    result = call.result

    streamed_text = "".join(c.text for c in chunks if c.kind == "text")
    final_text = "".join(p.text for p in result.content if p.type == "text")
    assert streamed_text == final_text
    arguments: dict[int, str] = {}
    for chunk in chunks:
        if chunk.kind == "tool_call":
            arguments[chunk.tool_call_index] = arguments.get(chunk.tool_call_index, "") + chunk.arguments_delta
    assert [arguments[i] for i in sorted(arguments)] == [c.function.arguments for c in result.tool_calls] or (
        case["api"] == "anthropic"  # an empty tool input streams no delta; the call's arguments are then "{}"
    )
    assert result.ttft_ns is not None and 0 < result.ttft_ns <= result.latency_ns
    assert call.trace is not None and call.trace.error_type is None


def test_tool_calls_carry_ids_names_and_json_arguments(recordings_dir):
    body = (recordings_dir / "openai_chat/test_run_stream_sync_streams_real_model__i0.sse").read_bytes()

    result = parse_recorded_response("openai_chat", body)

    assert [(c.id, c.function.name, c.function.arguments) for c in result.tool_calls] == [
        ("call_ZR5UUuTt3pf61kjwAJIYdVMj", "get_capital", '{"country":"UK"}')
    ]
    assert result.finish_reason == "tool_calls"
    assert result.content[-1].input == {"country": "UK"}


def test_anthropic_thinking_keeps_its_signature_and_redacted_thinking_its_data(recordings_dir):
    thinking = parse_recorded_response(
        "anthropic", (recordings_dir / "anthropic/test_anthropic_tool_with_thinking__i0.json").read_bytes()
    )
    redacted = parse_recorded_response(
        "anthropic",
        (recordings_dir / "anthropic/test_anthropic_model_thinking_part_redacted_stream__i0.sse").read_bytes(),
    )

    assert thinking.content[0].type == "reasoning" and thinking.content[0].signature.startswith("EqEE")
    assert [p.type for p in redacted.content] == ["redacted_reasoning", "redacted_reasoning", "text"]
    assert redacted.content[0].data.startswith("EqkE")


def test_responses_reasoning_becomes_summarized_reasoning(recordings_dir):
    body = (recordings_dir / "openai_responses/test_openai_responses_thinking_part_iter__i0.sse").read_bytes()

    result = parse_recorded_response("openai_responses", body)

    reasoning = [p for p in result.content if p.type == "summarized_reasoning"]
    assert reasoning and reasoning[0].id.startswith("rs_") and len(reasoning[0].summary) == 4
    assert result.content[-1].type == "text"


def test_gemini_thought_signature_travels_with_the_function_call(recordings_dir):
    body = (recordings_dir / "google/test_google_streaming_tool_call_thought_signature__i0.sse").read_bytes()

    result = parse_recorded_response("google", body)

    call = next(p for p in result.content if p.type == "tool_call")
    assert call.signature and call.name == "get_country"
    assert result.finish_reason_raw == "STOP" and result.finish_reason == "tool_calls"


def test_hidden_reasoning_is_recorded_as_omitted_reasoning(recordings_dir):
    body = (recordings_dir / "openai_chat/test_max_completion_tokens_o3-mini__i0.json").read_bytes()

    result = parse_recorded_response("openai_chat", body)

    assert result.content[0].type == "omitted_reasoning"
    assert result.usage.reasoning_tokens == 64


def test_raw_usage_objects_are_kept_unchanged(recordings_dir):
    path = recordings_dir / "anthropic/test_inline_system_prompt_cache_prefix_is_reused__i0.json"

    result = parse_recorded_response("anthropic", path.read_bytes())

    assert result.usage.prompt_tokens_details == json.loads(path.read_text())["usage"]
