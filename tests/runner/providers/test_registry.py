"""Model handles map to the right adapter and provider model name."""

from __future__ import annotations

import pytest

from runner.providers import UnknownModelHandle, get_adapter, parse_model_handle
from runner.providers.anthropic import AnthropicAdapter
from runner.providers.google import GoogleAdapter
from runner.providers.openai_chat import OpenAIChatAdapter
from runner.providers.openai_responses import OpenAIResponsesAdapter
from runner.providers.scripted import ScriptedAdapter


@pytest.mark.parametrize(
    ("handle", "cls", "model", "provider", "api"),
    [
        ("openai/gpt-4o-mini", OpenAIChatAdapter, "gpt-4o-mini", "openai", "openai_chat"),
        ("openai-responses/gpt-5-mini", OpenAIResponsesAdapter, "gpt-5-mini", "openai", "openai_responses"),
        ("anthropic/claude-sonnet-4-6", AnthropicAdapter, "claude-sonnet-4-6", "anthropic", "anthropic"),
        ("google/gemini-2.5-flash", GoogleAdapter, "gemini-2.5-flash", "google", "google"),
        ("scripted/weather-anthropic", ScriptedAdapter, "claude-sonnet-4-6", "anthropic", "anthropic"),
        ("openai/org/model-with-slash", OpenAIChatAdapter, "org/model-with-slash", "openai", "openai_chat"),
    ],
)
def test_model_handles_map_to_adapters(handle, cls, model, provider, api):
    adapter, provider_model = get_adapter(handle)

    assert isinstance(adapter, cls)
    assert (provider_model, adapter.provider_name, adapter.api) == (model, provider, api)


@pytest.mark.parametrize("handle", ["gpt-4o", "azure/gpt-4o", "openai/", "scripted/no-such-scenario"])
def test_unknown_handles_are_rejected(handle):
    with pytest.raises(UnknownModelHandle):
        get_adapter(handle)


def test_openai_base_url_makes_any_compatible_server_work_without_a_key(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    adapter, _ = get_adapter("openai/llama3.2")

    assert adapter.base_url == "http://localhost:11434/v1"
    assert str(adapter.client().base_url).startswith("http://localhost:11434/v1")
    assert (
        adapter.build_request(
            __import__("tests.runner.providers.conftest", fromlist=["user_request"]).user_request(max_output_tokens=5)
        )["max_tokens"]
        == 5
    )


def test_adapters_without_options_are_reused():
    assert get_adapter("openai/gpt-4o")[0] is get_adapter("openai/gpt-4o-mini")[0]
    assert parse_model_handle("anthropic/claude-opus-4-8") == ("anthropic", "claude-opus-4-8")
