"""A Responses stream that ends `incomplete` is a usable partial result, never an empty one."""

from __future__ import annotations

import json
import logging

import pytest

from runner.providers import Turn, TurnUsage, parse_recorded_response, synthesize
from runner.providers.transport import sse_response
from tests.runner.providers.conftest import adapter_serving, user_request

PARTIAL = "The first half of a long answer that was cut off mid"


@pytest.mark.parametrize(
    ("finish", "raw", "mapped"),
    [("length", "max_output_tokens", "length"), ("content_filter", "content_filter", "content_filter")],
)
def test_an_incomplete_stream_gives_partial_content_usage_and_finish_reason(finish, raw, mapped):
    turn = Turn(
        text=PARTIAL, finish_reason=finish, usage=TurnUsage(prompt_tokens=21, completion_tokens=64, reasoning_tokens=40)
    )
    adapter, _ = adapter_serving("openai_responses", synthesize(api="openai_responses", turn=turn, model="gpt-5-mini"))

    call = adapter.stream(user_request())
    chunks = list(call)
    result = call.result

    assert (result.finish_reason_raw, result.finish_reason) == (raw, mapped)
    assert [p.text for p in result.content if p.type == "text"] == [PARTIAL]
    assert "".join(c.text for c in chunks if c.kind == "text") == PARTIAL
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.reasoning_tokens) == (21, 64, 40)
    assert call.trace.error_type is None


def test_an_unknown_incomplete_reason_is_kept_as_is():
    body = synthesize(api="openai_responses", turn=Turn(text=PARTIAL, finish_reason="length"), model="m").body
    body = body.replace(b'"reason":"max_output_tokens"', b'"reason":"server_shutdown"')

    result = parse_recorded_response("openai_responses", body)

    assert (result.finish_reason_raw, result.finish_reason) == ("server_shutdown", "server_shutdown")
    assert result.content[-1].text == PARTIAL


def test_text_streamed_before_an_incomplete_response_without_its_message_is_kept():
    body = synthesize(api="openai_responses", turn=Turn(text=PARTIAL, finish_reason="length"), model="m").body
    events = body.split(b"\n\n")
    terminal = json.loads(events[-2].split(b"data: ", 1)[1])
    terminal["response"]["output"] = []  # the final object lost the message item
    events[-2] = b"event: response.incomplete\ndata: " + json.dumps(terminal).encode()

    result = parse_recorded_response("openai_responses", b"\n\n".join(events))

    assert result.finish_reason == "length"
    assert [p.text for p in result.content if p.type == "text"] == [PARTIAL]


def test_an_output_message_without_content_parts_is_skipped_with_a_warning(caplog):
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "model": "gpt-5-mini",
        "error": None,
        "output": [
            {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thinking."}]},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "incomplete", "content": []},
        ],
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 100,
            "output_tokens_details": {"reasoning_tokens": 100},
            "total_tokens": 112,
        },
    }

    with caplog.at_level(logging.WARNING, logger="runner.providers"):
        result = parse_recorded_response("openai_responses", json.dumps(response).encode())

    assert [p.type for p in result.content] == ["summarized_reasoning"]
    assert result.finish_reason == "length" and result.usage.reasoning_tokens == 100
    assert any("msg_1" in r.getMessage() and "no content parts" in r.getMessage() for r in caplog.records)


def test_a_stream_that_ends_without_a_terminal_event_is_malformed_not_incomplete():
    body = synthesize(api="openai_responses", turn=Turn(text=PARTIAL), model="m").body
    body = body.rsplit(b"event: response.completed", 1)[0]
    adapter, _ = adapter_serving("openai_responses", sse_response(body))

    call = adapter.stream(user_request())

    with pytest.raises(Exception) as excinfo:
        call.run()
    assert excinfo.value.error_type == "malformed_stream"
