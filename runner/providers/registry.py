"""Model handle → adapter: `openai/<m>`, `openai-responses/<m>`, `anthropic/<m>`, `google/<m>`, `scripted/<name>`."""

from __future__ import annotations

import os
import threading
from typing import Any

from runner.providers.base import ProviderAdapter

HANDLE_PREFIXES = ("openai", "openai-responses", "anthropic", "google", "scripted")


class UnknownModelHandle(ValueError):
    """The model handle does not name a known provider (or scripted scenario)."""


def parse_model_handle(model_handle: str) -> tuple[str, str]:
    """(prefix, provider model name) of a handle such as `anthropic/claude-sonnet-4-6`."""
    prefix, sep, model = model_handle.partition("/")
    if not sep or not model or prefix not in HANDLE_PREFIXES:
        raise UnknownModelHandle(
            f"Invalid model handle {model_handle!r}: expected <provider>/<model> with provider one of "
            f"{', '.join(HANDLE_PREFIXES)}."
        )
    return prefix, model


_cache: dict[tuple[Any, ...], ProviderAdapter] = {}
_cache_lock = threading.Lock()


def _env_key(prefix: str) -> tuple[str | None, ...]:
    if prefix.startswith("openai"):
        return (os.environ.get("OPENAI_API_KEY"), os.environ.get("OPENAI_BASE_URL"))
    if prefix == "anthropic":
        return (os.environ.get("ANTHROPIC_API_KEY"), os.environ.get("ANTHROPIC_BASE_URL"))
    if prefix == "google":
        return (os.environ.get("GEMINI_API_KEY"), os.environ.get("GOOGLE_API_KEY"))
    return ()


def get_adapter(model_handle: str, **options: Any) -> tuple[ProviderAdapter, str]:
    """The adapter for `model_handle` and the model name to send to the provider.

    For `scripted/<scenario>` the model is the one the scenario stands in for. `options` go to the
    adapter (api_key, base_url, timeout, transport, image_fetcher, streaming; for scripted:
    chunk_delay, first_chunk_delay). Adapters built without options are cached per environment
    (their SDK clients are thread-safe). Raises UnknownModelHandle for a bad handle or scenario.
    """
    prefix, model = parse_model_handle(model_handle)
    key = (prefix, model if prefix == "scripted" else "", *_env_key(prefix))
    if not options:
        cached = _cache.get(key)
        if cached is not None:
            return cached, getattr(cached, "model", None) or model
    adapter: Any
    if prefix == "scripted":
        from runner.providers.scripted import ScriptedAdapter, get_scenario

        try:
            scenario = get_scenario(model)
        except KeyError as exc:
            raise UnknownModelHandle(str(exc.args[0])) from None
        adapter = ScriptedAdapter(scenario, **options)
        provider_model = scenario.model
    else:
        from runner.providers.replay import adapter_for_api

        api = {"openai": "openai_chat", "openai-responses": "openai_responses"}.get(prefix, prefix)
        adapter = adapter_for_api(api, **options)
        provider_model = model
    from runner.providers.replay import warm_up

    warm_up(adapter.api)
    if not options:
        with _cache_lock:
            adapter = _cache.setdefault(key, adapter)
    return adapter, provider_model
