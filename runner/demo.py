"""Demo data made by real agent runs on the scripted provider.

Every run goes through the real loop, the real SDK clients (fed recorded-style wire bytes in memory)
and the one step write path; only afterwards is each run moved back in time, so the last 7 days look
lived-in. Steps are tagged `demo` and record the models the scenarios stand in for, so costs and
reports look as they would in production.
"""

import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Organization
from agents.models import Agent, Run, RunStatus
from agents.services import agent_create, agent_update
from runner.loop import run_cancel, run_execute
from runner.providers import ErrorSpec, Scenario, Turn, TurnUsage, register_scenario, tool_for_question, tool_turns
from runner.services import run_decide_approval, run_start
from steps.models import Message, ProviderTrace, Step, StepMetrics
from steps.rollups import step_rollups_rebuild

DEMO_TAG = "demo"

QUESTIONS = [
    "What's the weather in Paris today?",
    "Can you check the weather in Oslo for my trip?",
    "Is it raining in London right now?",
    "Plot my weekly sign-ups: 12, 18, 25, 31, 29",
    "I was charged twice for order A-1042, can I get a refund?",
    "Summarize the status of the deploy pipeline.",
    "How warm is it in Lisbon?",
    "Refund order B-77, the package never arrived.",
    "What does the annual plan cost: 1299 * 12 * 0.85?",
]


@dataclass(frozen=True)
class DemoAgent:
    name: str
    api: str
    model: str
    system: str
    tools: tuple[str, ...]
    reasoning: bool
    weight: int
    first_chunk_delay: float  # real pacing through the transport, so TTFT and latency differ by model


AGENTS = [
    DemoAgent("support-bot", "anthropic", "claude-sonnet-4-6", "You are a friendly support agent.",
              ("get_weather", "issue_refund"), True, 5, 0.08),
    DemoAgent("research-assistant", "openai_responses", "gpt-5-mini", "You research and explain.",
              ("get_weather", "calculator"), True, 3, 0.06),
    DemoAgent("ops-copilot", "google", "gemini-2.5-flash", "You help the on-call engineer.",
              ("get_weather", "current_time"), True, 3, 0.04),
    DemoAgent("chart-helper", "openai_chat", "gpt-4o-mini", "You draw charts for the user.",
              ("render_chart",), False, 2, 0.03),
    DemoAgent("faq-bot", "openai_chat", "gpt-4.1-mini", "You answer questions briefly.", ("get_weather",), False, 3,
              0.02),
]  # fmt: skip


def _usage(rng: random.Random, *, prompt: int, completion: int, cached: int = 0, write: int = 0, reasoning: int = 0):
    jitter = rng.uniform(0.8, 1.3)
    return TurnUsage(
        prompt_tokens=int(prompt * jitter) + cached + write,
        completion_tokens=int(completion * jitter) + reasoning,
        cached_input_tokens=cached,
        cache_write_tokens=write,
        reasoning_tokens=reasoning,
    )


def _happy(spec: DemoAgent, rng: random.Random) -> list:
    """The built-in tool scenario (runner.providers.tool_turns): the tool the question asks for among the agent's,
    then the answer from its return. Usage varies per run and about 60% of calls hit the prompt cache."""
    cache = spec.api == "anthropic"

    def first_usage() -> TurnUsage:
        hit = rng.random() < 0.6
        return _usage(
            rng, prompt=380, completion=30, cached=320 if hit else 0, write=320 if cache and not hit else 0,
            reasoning=rng.randint(40, 200) if spec.reasoning else 0,
        )  # fmt: skip

    return tool_turns(
        api=spec.api,
        tool=lambda question: tool_for_question(question, spec.tools),
        first_usage=first_usage,
        answer_usage=lambda: _usage(rng, prompt=520, completion=40, cached=384 if spec.api != "google" else 0),
        reasoning="The user needs live data; I will call the tool first." if spec.reasoning else "",
    )


ERRORS = {
    "rate_limit": lambda: [[Turn(error=ErrorSpec(kind="rate_limit", retry_after=0)), Turn(text="Sorry for the wait.")]],
    "timeout": lambda: [[Turn(error=ErrorSpec(kind="server_error", status_code=504, message="Gateway timeout"))] * 3],
    "overloaded": lambda: [[Turn(error=ErrorSpec(kind="overloaded"))] * 3],
    "context_window": lambda: [Turn(error=ErrorSpec(kind="context_window"))],
    "malformed": lambda: [[Turn(text="This answer is cut off in the mid", truncate=True)] * 3],
    "server_error": lambda: [[Turn(error=ErrorSpec(kind="server_error")), Turn(text="Recovered after a retry.")]],
}


def _scenarios(spec: DemoAgent, rng: random.Random) -> dict[str, str]:
    """Register the agent's scenarios once (the happy path and each failure); kind -> model handle."""
    handles = {}
    for kind, turns in [("ok", _happy(spec, rng)), *((kind, make()) for kind, make in ERRORS.items())]:
        name = f"demo-{spec.name}-{kind}"
        register_scenario(
            Scenario(name, spec.api, spec.model, turns, description=f"demo: {kind}",
                     first_chunk_delay=spec.first_chunk_delay, chunk_delay=0.002)
        )  # fmt: skip
        handles[kind] = f"scripted/{name}"
    slow = f"demo-{spec.name}-slow"
    register_scenario(Scenario(slow, spec.api, spec.model, [Turn(text="word " * 80, chunk_chars=4)], chunk_delay=0.02))
    handles["slow"] = f"scripted/{slow}"
    return handles


def _backdate(run: Run, when: datetime) -> None:
    """Move a finished run and everything it recorded to `when` (the demo spreads runs over days)."""
    delta = when - run.created_at
    delta_ns = int(delta.total_seconds() * 1e9)
    with transaction.atomic():
        Run.objects.filter(pk=run.pk).update(
            created_at=F("created_at") + delta,
            started_at=F("started_at") + delta,
            completed_at=F("completed_at") + delta,
        )
        steps = Step.objects.filter(run=run)
        steps.update(created_at=F("created_at") + delta, completed_at=F("completed_at") + delta)
        # step_created_at (the partition key on PostgreSQL) moves with the step; PostgreSQL moves the row.
        StepMetrics.objects.filter(step__run=run).update(
            step_start_ns=F("step_start_ns") + delta_ns,
            llm_request_start_ns=F("llm_request_start_ns") + delta_ns,
            step_created_at=F("step_created_at") + delta,
        )
        Message.objects.filter(run=run).update(
            created_at=F("created_at") + delta, step_created_at=F("step_created_at") + delta
        )
        ProviderTrace.objects.filter(step__run=run).update(
            created_at=F("created_at") + delta, step_created_at=F("step_created_at") + delta
        )


def _when(rng: random.Random, now: datetime) -> datetime:
    # More traffic recently and during working hours, like a real product.
    days_ago = min(rng.expovariate(0.35), 6.9)
    moment = now - timedelta(days=days_ago)
    hour = int(rng.triangular(6, 22, 14))
    moment = moment.replace(hour=hour, minute=rng.randint(0, 59), second=rng.randint(0, 59))
    return min(moment, now - timedelta(minutes=rng.randint(1, 90)))  # never in the future


def _execute_and_close(run_id: str) -> None:
    try:
        run_execute(run_id=run_id)
    finally:
        connection.close()


def _cancel_mid_stream(run: Run) -> Run:
    worker = threading.Thread(target=_execute_and_close, args=(run.pk,))
    worker.start()
    deadline = time.monotonic() + 10
    while not Step.objects.filter(run=run, progression__gte=1).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    run_cancel(run=run)
    worker.join(timeout=10)
    return Run.objects.get(pk=run.pk)


def seed_demo(*, organization: Organization, runs: int = 300, seed: int = 7, log=print) -> int:
    """Create the demo agents and `runs` real runs spread over the last 7 days; returns the number of runs."""
    rng = random.Random(seed)
    saved = (settings.STEPLENS_LLM_RETRY_BASE_SECONDS, settings.STEPLENS_LLM_RETRY_MAX_SECONDS)
    settings.STEPLENS_LLM_RETRY_BASE_SECONDS = settings.STEPLENS_LLM_RETRY_MAX_SECONDS = 0
    try:
        agents = {}
        for spec in AGENTS:
            agent = Agent.objects.filter(organization=organization, name=spec.name, deleted_at__isnull=True).first()
            agents[spec.name] = agent or agent_create(
                organization=organization, name=spec.name, model_handle="scripted/echo", system=spec.system,
                tools=list(spec.tools), tags=[DEMO_TAG, spec.api], max_steps=6,
            )  # fmt: skip
        handles = {spec.name: _scenarios(spec, rng) for spec in AGENTS}
        now = timezone.now()
        weights = [spec.weight for spec in AGENTS]
        for index in range(runs):
            spec = rng.choices(AGENTS, weights=weights)[0]
            question = rng.choice(QUESTIONS)
            if "Plot" in question and "render_chart" not in spec.tools:
                question = QUESTIONS[0]
            elif "render_chart" in spec.tools and rng.random() < 0.95:
                question = QUESTIONS[3]  # the chart agent is asked for charts (now and then for the weather)
            slow = index in (runs // 3, 2 * runs // 3)  # a couple of runs the user cancels mid-stream
            kind = "slow" if slow else ("ok" if rng.random() >= 0.16 else rng.choice(list(ERRORS)))
            agent = agents[spec.name]
            if agent.model_handle != handles[spec.name][kind]:
                agent = agent_update(agent=agent, model_handle=handles[spec.name][kind])
            run = run_start(
                organization=organization, agent=agent, request_id=f"req-demo-{index:04d}",
                messages=[{"role": "user", "content": [{"type": "text", "text": question}]}],
                user_id=f"user-{rng.randint(1, 40):02d}", conversation_id=f"conv-{rng.randint(1, 120):03d}",
                background=rng.random() < 0.2,
            )  # fmt: skip
            run = _cancel_mid_stream(run) if slow else run_execute(run_id=run.pk)
            if run.status == RunStatus.PAUSED:
                call_id = run.messages.filter(role="approval").last().tool_calls[0]["id"]
                approve = rng.random() < 0.7
                run_decide_approval(run=run, tool_call_id=call_id, approve=approve,
                                    reason="" if approve else "Amount is above the refund limit.")  # fmt: skip
                run = run_execute(run_id=run.pk)
            _backdate(run, _when(rng, now))
            if (index + 1) % 50 == 0:
                log(f"  {index + 1}/{runs} runs")
        for spec in AGENTS:
            agent_update(agent=agents[spec.name], model_handle=f"scripted/echo-{_echo_suffix(spec.api)}")
        step_rollups_rebuild(organization=organization)
        return runs
    finally:
        settings.STEPLENS_LLM_RETRY_BASE_SECONDS, settings.STEPLENS_LLM_RETRY_MAX_SECONDS = saved


def _echo_suffix(api: str) -> str:
    return {"openai_chat": "openai", "openai_responses": "responses", "anthropic": "anthropic", "google": "google"}[api]
