"""Fixtures for the provider adapter tests: recorded responses, requests, in-memory SDK wiring.

None of these tests touch the database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.providers import LLMRequest, ToolSpec
from runner.providers.base import BaseAdapter
from runner.providers.replay import adapter_for_api
from runner.providers.transport import InMemoryTransport, WireResponse
from steps.values import MessageIn, TextContent
from tests.conftest import IN_CI, require_service

# A copy of the project's recorded provider responses lives in the repository (tests/recordings, MIT, see its
# README), so a fresh clone runs these tests with nothing beside it.
RECORDINGS = Path(__file__).resolve().parents[2] / "recordings"


def manifest_cases() -> list[dict[str, Any]]:
    """The recorded cases of tests/recordings/manifest.json (empty when it is not there)."""
    manifest = RECORDINGS / "manifest.json"
    if not manifest.is_file():
        if IN_CI:  # the recordings are the point of these tests: CI must not pass them vacuously
            raise RuntimeError(f"recordings not found at {RECORDINGS}")
        return []
    return json.loads(manifest.read_text())["cases"]


@pytest.fixture
def recordings_dir() -> Path:
    if not RECORDINGS.is_dir():
        require_service("the recorded provider responses", f"not found at {RECORDINGS}")
    return RECORDINGS


def user_request(text: str = "What's the weather in Paris?", *, model: str = "test-model", **kwargs: Any) -> LLMRequest:
    """A one-message request with a get_weather tool."""
    return LLMRequest(
        model=model,
        messages=[
            MessageIn(role="system", content=[TextContent(text="You are terse.")]),
            MessageIn(role="user", content=[TextContent(text=text)]),
        ],
        tools=[ToolSpec(name="get_weather", description="Weather for a city.", parameters={"type": "object"})],
        **kwargs,
    )


def adapter_serving(api: str, wire: WireResponse | Any, **options: Any) -> tuple[BaseAdapter, InMemoryTransport]:
    """A real adapter for `api` whose SDK client talks to an in-memory transport serving `wire`."""
    transport = InMemoryTransport(wire)
    options.setdefault("api_key", "sk-test-0123456789abcdefghijklmnop")
    return adapter_for_api(api, transport=transport, **options), transport


def sent_json(transport: InMemoryTransport) -> dict[str, Any]:
    """The JSON body of the last request the SDK sent."""
    return json.loads(transport.requests[-1].content)
