"""Every failure becomes a typed ProviderError with a stable error_type and the right retryable flag."""

from __future__ import annotations

import json

import httpx2
import pytest

from runner.providers import ErrorSpec, ProviderError, Turn, TurnUsage, synthesize
from runner.providers.errors import RETRYABLE_ERROR_TYPES, classify, error_from_http, parse_retry_after
from runner.providers.transport import WireResponse, json_response, sse_response
from tests.runner.providers.conftest import adapter_serving, user_request

APIS = ("openai_chat", "openai_responses", "anthropic", "google")
KIND_TO_TYPE = {
    "rate_limit": "rate_limit",
    "server_error": "provider_error",
    "overloaded": "overloaded",
    "context_window": "context_window_exceeded",
    "authentication": "authentication",
    "permission_denied": "permission_denied",
    "not_found": "not_found",
    "bad_request": "bad_request",
}


def _fail(api: str, wire: WireResponse | object) -> ProviderError:
    adapter, _ = adapter_serving(api, wire)
    call = adapter.stream(user_request())
    with pytest.raises(ProviderError) as excinfo:
        call.run()
    assert call.trace is not None and call.trace.error_type == excinfo.value.error_type
    assert call.error is excinfo.value
    return excinfo.value


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", sorted(KIND_TO_TYPE))
def test_provider_error_responses_map_to_stable_error_types(api, kind):
    wire = synthesize(api=api, turn=Turn(error=ErrorSpec(kind=kind)), model="m")

    error = _fail(api, wire)

    assert error.error_type == KIND_TO_TYPE[kind]
    assert error.retryable is (KIND_TO_TYPE[kind] in RETRYABLE_ERROR_TYPES)
    assert error.status_code == wire.status_code
    assert error.message


@pytest.mark.parametrize("api", APIS)
def test_rate_limit_carries_retry_after_from_the_headers(api):
    wire = synthesize(api=api, turn=Turn(error=ErrorSpec(kind="rate_limit", retry_after=7)), model="m")

    error = _fail(api, wire)

    assert (error.error_type, error.retryable, error.retry_after) == ("rate_limit", True, 7.0)


def test_retry_after_ms_and_google_retry_info_are_understood():
    assert parse_retry_after(headers={"retry-after-ms": "1500"}) == 1.5
    body = {"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "36s"}]}}
    assert parse_retry_after(headers={}, body=body) == 36.0
    assert parse_retry_after(headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_an_exhausted_billing_quota_is_a_rate_limit_that_is_not_retried():
    body = {
        "error": {
            "message": "You exceeded your current quota",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }

    error = _fail("openai_chat", json_response(json.dumps(body).encode(), status_code=429))

    assert error.error_type == "rate_limit" and error.retryable is False


def test_anthropic_overloaded_error_event_in_the_middle_of_a_stream_is_overloaded():
    wire = synthesize(
        api="anthropic",
        turn=Turn(text="partial answer " * 5, error=ErrorSpec(kind="overloaded", mid_stream=True)),
        model="m",
    )

    error = _fail("anthropic", wire)

    assert error.error_type == "overloaded" and error.retryable


@pytest.mark.parametrize(
    ("api", "kind", "expected"),
    [
        ("openai_responses", "server_error", "provider_error"),
        ("openai_chat", "rate_limit", "rate_limit"),
        ("google", "server_error", "provider_error"),
    ],
)
def test_error_events_inside_a_200_stream_are_typed(api, kind, expected):
    wire = synthesize(api=api, turn=Turn(text="some text " * 8, error=ErrorSpec(kind=kind, mid_stream=True)), model="m")

    assert _fail(api, wire).error_type == expected


@pytest.mark.parametrize("api", APIS)
def test_a_truncated_stream_is_a_retryable_malformed_stream(api):
    turn = Turn(text="An answer that never ends " * 4, tool_calls=[], truncate=True)
    wire = synthesize(api=api, turn=turn, model="m")

    error = _fail(api, wire)

    assert (error.error_type, error.retryable) == ("malformed_stream", True)


@pytest.mark.parametrize("api", APIS)
def test_invalid_json_inside_a_stream_is_a_malformed_stream(api):
    good = synthesize(api=api, turn=Turn(text="hello there"), model="m").body
    events = good.split(b"\n\n") if api != "google" else good.split(b"\r\n\r\n")
    sep = b"\n\n" if api != "google" else b"\r\n\r\n"
    broken = sep.join(
        [
            events[0],
            b"event: content_block_delta\ndata: {not json" if api == "anthropic" else b"data: {not json",
            *events[1:],
        ]
    )

    error = _fail(api, sse_response(broken))

    assert error.error_type == "malformed_stream"


@pytest.mark.parametrize("api", APIS)
def test_an_empty_stream_is_a_malformed_stream(api):
    assert _fail(api, sse_response(b"")).error_type == "malformed_stream"


@pytest.mark.parametrize("api", APIS)
def test_a_read_timeout_is_a_retryable_timeout(api):
    def stall(request: httpx2.Request) -> WireResponse:
        raise httpx2.ReadTimeout("timed out", request=request)

    error = _fail(api, stall)

    assert (error.error_type, error.retryable) == ("timeout", True)


@pytest.mark.parametrize("api", APIS)
def test_a_refused_connection_is_a_retryable_connection_error(api):
    def refuse(request: httpx2.Request) -> WireResponse:
        raise httpx2.ConnectError("connection refused", request=request)

    error = _fail(api, refuse)

    assert (error.error_type, error.retryable) == ("connection_error", True)


@pytest.mark.parametrize("status", [504, 408])
def test_gateway_and_request_timeouts_are_timeouts(status):
    assert classify(status_code=status, body={}) == "timeout"


def test_gemini_overloaded_503_is_overloaded_and_plain_503_a_provider_error():
    assert (
        classify(status_code=503, body={"error": {"message": "The model is overloaded.", "status": "UNAVAILABLE"}})
        == "overloaded"
    )
    assert (
        classify(status_code=503, body={"error": {"message": "Service unavailable", "status": "UNAVAILABLE"}})
        == "provider_error"
    )


def test_context_window_messages_of_each_provider_are_recognised():
    assert (
        error_from_http(
            status_code=400,
            body={
                "error": {
                    "message": "prompt is too long: 201000 tokens > 200000 maximum",
                    "type": "invalid_request_error",
                }
            },
        ).error_type
        == "context_window_exceeded"
    )
    assert (
        error_from_http(
            status_code=400, body={"error": {"code": "context_length_exceeded", "message": "too long"}}
        ).error_type
        == "context_window_exceeded"
    )
    assert (
        error_from_http(
            status_code=400,
            body={
                "error": {
                    "code": 400,
                    "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)",
                    "status": "INVALID_ARGUMENT",
                }
            },
        ).error_type
        == "context_window_exceeded"
    )
    assert (
        error_from_http(
            status_code=400, body={"error": {"message": "max_tokens: 100000 > 64000, which is the maximum allowed"}}
        ).error_type
        == "bad_request"
    )


def test_a_failed_responses_stream_raises_with_its_usage_kept():
    turn = Turn(text="half", usage=TurnUsage(prompt_tokens=30, completion_tokens=4))
    body = synthesize(api="openai_responses", turn=turn, model="m").body
    body = (
        body.replace(b"event: response.completed", b"event: response.failed")
        .replace(b'"type":"response.completed"', b'"type":"response.failed"')
        .replace(b'"status":"completed","model"', b'"status":"failed","model"')
        .replace(
            b'"error":null,"instructions"',
            b'"error":{"code":"server_error","message":"The model failed."},"instructions"',
        )
    )

    error = _fail("openai_responses", sse_response(body))

    assert error.error_type == "provider_error" and error.retryable
    assert error.result is not None and error.result.usage.prompt_tokens == 30
    assert error.result.finish_reason_raw == "failed"


def test_a_missing_api_key_is_an_authentication_error_with_a_trace(monkeypatch):
    from runner.providers.anthropic import AnthropicAdapter

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    call = AnthropicAdapter().stream(user_request())

    with pytest.raises(ProviderError) as excinfo:
        call.run()

    assert excinfo.value.error_type == "authentication" and not excinfo.value.retryable
    assert "ANTHROPIC_API_KEY" in excinfo.value.message
    assert call.trace.error_type == "authentication"
