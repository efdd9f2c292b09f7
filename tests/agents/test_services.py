"""Agent writes: the records app refuses what the runtime cannot run, through the check the runner registers."""

import pytest

from agents import services
from agents.models import Agent
from agents.services import agent_create, agent_update
from config.errors import ApplicationError
from tests.factories import AgentFactory


@pytest.mark.django_db
def test_agent_create_refuses_an_unknown_tool_and_an_unrunnable_handle_and_stores_nothing(organization):
    """RunnerConfig.ready registered the runtime's check: the records app refuses what no worker could run."""
    with pytest.raises(ApplicationError) as tools:
        agent_create(organization=organization, name="a", model_handle="scripted/echo", tools=["format_disk"])
    with pytest.raises(ApplicationError) as handle:
        agent_create(organization=organization, name="b", model_handle="nope/")

    assert "format_disk" in tools.value.extra["tools"]
    assert "model_handle" in handle.value.extra
    assert not Agent.objects.filter(organization=organization).exists()


@pytest.mark.django_db
def test_agent_update_checks_only_the_values_it_changes(organization):
    agent = AgentFactory(organization=organization, model_handle="scripted/echo", tools=[])

    agent_update(agent=agent, max_steps=4)  # no handle or tools given: nothing for the runtime to check
    with pytest.raises(ApplicationError):
        agent_update(agent=agent, tools=["format_disk"])

    agent.refresh_from_db()
    assert (agent.max_steps, agent.tools) == (4, [])


def test_a_check_registered_twice_runs_once(monkeypatch):
    calls = []
    monkeypatch.setattr(services, "_agent_checks", [])
    services.agent_check_register(calls.append)
    services.agent_check_register(calls.append)

    services.agent_values_check({"name": "x"})

    assert calls == [{"name": "x"}]
