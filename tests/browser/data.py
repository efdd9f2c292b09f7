"""Realistic admin data: real agent runs through the scripted provider (the real SDKs), plus seeded history."""

import uuid
from dataclasses import dataclass

from django.core.management import call_command

from accounts.models import Organization
from agents.models import Agent, Run
from agents.services import agent_create
from runner.loop import run_execute
from runner.providers import (
    ErrorSpec,
    Scenario,
    ToolCallSpec,
    Turn,
    TurnUsage,
    register_scenario,
    unregister_scenario,
)
from runner.services import run_start

CHART_SCENARIO = "admin-chart-anthropic"
CHART_VALUES = [3, 1, 4, 1, 5, 9, 2, 6]


@dataclass
class AdminData:
    """What the admin tests look at."""

    organization: Organization
    chart_agent: Agent
    chart_run: Run
    runs: dict[str, Run]


def _run(organization: Organization, agent: Agent, text: str, request_id: str) -> Run:
    run = run_start(
        organization=organization,
        agent=agent,
        messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
        request_id=request_id,
    )
    return run_execute(run_id=run.pk)


def chart_scenario() -> Scenario:
    return register_scenario(
        Scenario(
            CHART_SCENARIO,
            "anthropic",
            "claude-sonnet-4-6",
            [
                Turn(
                    reasoning="The user wants a chart of the numbers; render_chart draws one.",
                    text="I'll draw that chart.",
                    tool_calls=[ToolCallSpec(name="render_chart", arguments={"values": CHART_VALUES, "title": "Pi"})],
                    usage=TurnUsage(
                        prompt_tokens=520, completion_tokens=64, cache_write_tokens=256, reasoning_tokens=0
                    ),
                ),
                Turn(
                    text="Here is the bar chart of your eight numbers; the tallest bar is 9.",
                    usage=TurnUsage(prompt_tokens=1480, completion_tokens=22, cached_input_tokens=256),
                ),
            ],
        )
    )


def build_admin_data(*, organization: Organization, seeded: int = 0) -> AdminData:
    """Real runs (an image tool return, weather on three providers, failures), and `seeded` steps of history."""
    chart_scenario()
    try:
        chart_agent = agent_create(
            organization=organization,
            name="chart-artist",
            model_handle=f"scripted/{CHART_SCENARIO}",
            tools=["render_chart"],
            tags=["charts"],
        )
        chart_run = _run(organization, chart_agent, "Draw a bar chart of 3 1 4 1 5 9 2 6.", "req-admin-chart")
    finally:
        unregister_scenario(CHART_SCENARIO)
    runs = {"chart": chart_run}
    # The scripted provider counts retry attempts per process: a fresh scenario fails its first attempt every time.
    rate_limited = register_scenario(
        Scenario(
            f"admin-rate-limited-{uuid.uuid4().hex[:8]}",
            "openai_chat",
            "gpt-4o-mini",
            [[Turn(error=ErrorSpec(kind="rate_limit", retry_after=1)), Turn(text="Answered after a retry.")]],
        )
    )
    try:
        for name, handle, tools in (
            ("weather-openai", "scripted/weather-openai", ["get_weather"]),
            ("weather-google", "scripted/weather-google", ["get_weather"]),
            ("weather-responses", "scripted/weather-responses", ["get_weather"]),
            ("rate-limited", f"scripted/{rate_limited.name}", []),
            ("truncated", "scripted/truncated-anthropic", []),
            ("context-overflow", "scripted/context-overflow-openai", []),
        ):
            agent = agent_create(organization=organization, name=name, model_handle=handle, tools=tools, tags=["demo"])
            runs[name] = _run(organization, agent, "What is the weather in Paris?", f"req-admin-{name}")
    finally:
        unregister_scenario(rate_limited.name)
    if seeded:
        call_command(
            "seed_steps", count=seeded, organization=organization.name, days=7, seed=11, detail_share=0.2, verbosity=0
        )
    return AdminData(organization=organization, chart_agent=chart_agent, chart_run=chart_run, runs=runs)
