"""Provider traces never hold an API key, an Authorization header or any other secret."""

from __future__ import annotations

import json

import pytest

from config.redaction import REDACTED
from runner.providers import ErrorSpec, Turn, redact, redact_headers, redact_text, synthesize
from tests.runner.providers.conftest import adapter_serving, user_request

SECRET = "sk-proj-SECRETsecretSECRETsecret0123456789"
GOOGLE_SECRET = "AIzaSyD-SECRETsecretSECRETsecret012345678"


def test_secret_fields_are_redacted_and_token_counts_are_kept():
    data = {
        "api_key": "abc",
        "apiKey": "abc",
        "x-api-key": "abc",
        "Authorization": "Bearer abc",
        "client_secret": "abc",
        "password": "hunter2",
        "access_token": "tok",
        "refreshToken": "tok",
        "usage": {"input_tokens": 10, "output_tokens": 5, "max_tokens": 100, "thoughtsTokenCount": 3},
        "usageMetadata": {"promptTokenCount": 7, "cachedContentTokenCount": 2},
        "messages": [{"role": "user", "content": "hello"}],
        "tools": [{"mcp": {"authorization": "<redacted>", "headers": {"X-Goog-Api-Key": "k"}}}],
    }

    out = redact(data)

    for key in (
        "api_key",
        "apiKey",
        "x-api-key",
        "Authorization",
        "client_secret",
        "password",
        "access_token",
        "refreshToken",
    ):
        assert out[key] == REDACTED, key
    assert out["usage"] == data["usage"]
    assert out["usageMetadata"] == data["usageMetadata"]
    assert out["messages"] == data["messages"]
    assert out["tools"][0]["mcp"]["authorization"] == REDACTED
    assert out["tools"][0]["mcp"]["headers"]["X-Goog-Api-Key"] == REDACTED
    assert data["api_key"] == "abc"  # a copy: the input is left alone


def test_a_json_schema_property_named_like_a_secret_keeps_its_shape():
    schema = {"type": "object", "properties": {"api_key": {"type": "string", "description": "The key"}}}

    assert redact(schema) == schema


def test_credentials_inside_free_text_are_redacted():
    text = f"Incorrect API key provided: {SECRET}. Also {GOOGLE_SECRET} and Bearer abcdefghijklmnop."

    out = redact_text(text)

    assert SECRET not in out and GOOGLE_SECRET not in out and "abcdefghijklmnop" not in out
    assert redact_text("a task-12345678901234567890 stays") == "a task-12345678901234567890 stays"


def test_headers_are_redacted_by_name():
    headers = {"Authorization": "Bearer x", "x-api-key": "y", "x-goog-api-key": "z", "content-type": "application/json"}

    assert redact_headers(headers) == {
        "Authorization": REDACTED,
        "x-api-key": REDACTED,
        "x-goog-api-key": REDACTED,
        "content-type": "application/json",
    }


def _trace_text(call) -> str:
    return json.dumps(call.trace.__dict__, default=str)


@pytest.mark.parametrize("api", ["openai_chat", "openai_responses", "anthropic", "google"])
def test_a_successful_call_trace_holds_the_request_as_sent_and_no_key(api):
    key = GOOGLE_SECRET if api == "google" else SECRET
    wire = synthesize(api=api, turn=Turn(text="fine"), model="m")
    adapter, transport = adapter_serving(api, wire, api_key=key)
    request = user_request(f"my key is {key}, keep it safe")

    call = adapter.stream(request)
    call.run()

    sent = transport.requests[-1]
    assert key in (sent.headers.get("authorization", "") + sent.headers.get("x-goog-api-key", ""))
    text = _trace_text(call)
    assert key not in text
    assert "authorization" not in text.lower() and "x-goog-api-key" not in text.lower()
    assert call.trace.request_json  # the body as sent
    assert call.trace.response_json["usage"]
    assert call.trace.provider == adapter.provider_name and call.trace.api == api


@pytest.mark.parametrize("api", ["openai_chat", "anthropic", "google"])
def test_a_failed_call_trace_holds_no_key_even_when_the_error_echoes_it(api):
    key = GOOGLE_SECRET if api == "google" else SECRET
    turn = Turn(error=ErrorSpec(kind="authentication", message=f"Incorrect API key provided: {key}"))
    adapter, _ = adapter_serving(api, synthesize(api=api, turn=turn, model="m"), api_key=key)

    call = adapter.stream(user_request())
    with pytest.raises(Exception):  # noqa: B017 - the type is checked below
        call.run()

    assert call.trace.error_type == "authentication"
    assert key not in _trace_text(call)
    assert key not in call.error.message and key not in json.dumps(call.error.details)
