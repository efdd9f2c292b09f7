"""Fixtures for agent runs: scenarios registered for one test, and agents that use them."""

import itertools

import pytest

from agents.services import agent_create
from runner.providers import Scenario, register_scenario, unregister_scenario

_names = itertools.count()


@pytest.fixture
def scenario():
    """Register scenarios for the duration of a test: `scenario(api, turns, **options)` -> handle."""
    registered: list[str] = []

    def make(api: str, turns: list, *, model: str | None = None, **options) -> str:
        models = {"openai_chat": "gpt-4o-mini", "openai_responses": "gpt-5-mini", "anthropic": "claude-sonnet-4-6",
                  "google": "gemini-2.5-flash"}  # fmt: skip
        name = f"test-{next(_names)}"
        register_scenario(Scenario(name, api, model or models[api], turns, **options))
        registered.append(name)
        return f"scripted/{name}"

    yield make
    for name in registered:
        unregister_scenario(name)


@pytest.fixture
def make_agent(organization):
    def make(model_handle: str, **values):
        values.setdefault("name", f"agent-{next(_names)}")
        return agent_create(organization=organization, model_handle=model_handle, **values)

    return make
