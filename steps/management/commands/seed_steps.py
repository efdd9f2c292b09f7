"""Fill the database with realistic steps: `manage.py seed_steps --count 10000000 --days 90 --organization bench`.

Each seeded run is what a real agent run leaves behind: a run, its steps (agents, models, prices, tokens, errors,
end users, conversations, tags, metadata), each ended step's metrics and provider trace, and the messages (the
user's, then per successful step an assistant message, plus a tool message when the step called a tool). The
rollups are rebuilt at the end and the tables analyzed. The same --seed gives the same data (ids aside).

Shares and sizes, measured on real runs (`manage.py seed_demo`: 300 runs of the demo agents on the scripted
provider, 613 steps) and what --detail-share 1 (the default) seeds:

| per step | real runs | seeded |
|---|---|---|
| provider traces | 1.00 | 0.98 (every ended step but failures that never reached the provider) |
| messages | 1.81 (0.49 without a step: the user's) | 1.9-2.0 |
| provider request JSON | 945 bytes average (runs of 1-2 steps; 1,606 max) | 830 at step 1, +360 per earlier step |
| provider response JSON | 530 bytes average | 450-630 |
| message content JSON | 120 bytes average (assistant 178, user 72); tool returns 272 | 70-200; tool returns 200 |

Two generators make the same rows:

- PostgreSQL: the rows are made in the database by INSERT ... SELECT over generate_series, a chunk of runs at a
  time, with no row passing through Python (8,000-20,000 steps/s on this 2-core machine, with --detail-share 0.2
  and 1; the README's "At ten million steps" has the figures). For 100,000 steps or more the foreign keys and
  secondary indexes of the loaded tables are dropped for the load and rebuilt after, in the same transaction.
  Partitions covering the seeded range are created first where the tables are partitioned (steps.partitions).
  The rollups are rebuilt by steps.rollups.step_rollups_rebuild (set-based on PostgreSQL).
- Elsewhere (SQLite, small counts: tests, `make demo`): the same distributions drawn in Python, stored with
  bulk_create.
"""

import json
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, models, transaction
from django.utils import timezone

from accounts.models import Organization
from accounts.services import organization_get_or_create, project_get_or_create
from agents.models import Agent, Run, RunStatus, StopReason
from steps.models import (
    ErrorRollupDay,
    ErrorRollupHour,
    Message,
    ProviderTrace,
    Step,
    StepMetrics,
    StepOrigin,
    StepProgression,
    StepRollupDay,
    StepRollupHour,
    StepStatus,
    SubjectRollupDay,
    SubjectRollupHour,
)
from steps.rollups import step_rollups_rebuild

try:  # the partition helper (PostgreSQL); absent before time-partitioned storage
    from steps.partitions import partitions_ensure
except ImportError:  # pragma: no cover - older trees
    partitions_ensure = None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as the seeder sees it: prices per million tokens and typical speed."""

    provider: str
    model: str
    input_usd: float
    cached_usd: float
    output_usd: float
    cache_write_usd: float
    ttft_ms: float
    latency_ms: float
    reasoning: bool = False

    @property
    def handle(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def api(self) -> str:
        """The provider API the adapters record in ProviderTrace.api."""
        if self.provider == "openai":
            return "openai_responses" if self.reasoning else "openai_chat"
        return self.provider

    @property
    def window(self) -> int:
        return 200_000 if self.provider == "anthropic" else 128_000


MODELS = (
    ModelSpec("openai", "gpt-4o-mini", 0.15, 0.075, 0.6, 0.0, 350, 1800),
    ModelSpec("openai", "gpt-4o", 2.5, 1.25, 10.0, 0.0, 450, 3000),
    ModelSpec("openai", "gpt-4.1", 2.0, 0.5, 8.0, 0.0, 500, 3500),
    ModelSpec("openai", "o4-mini", 1.1, 0.275, 4.4, 0.0, 2000, 8000, reasoning=True),
    ModelSpec("anthropic", "claude-sonnet-4-5", 3.0, 0.3, 15.0, 3.75, 900, 5000),
    ModelSpec("anthropic", "claude-haiku-4-5", 1.0, 0.1, 5.0, 1.25, 500, 2500),
    ModelSpec("google", "gemini-2.5-flash", 0.3, 0.075, 2.5, 0.0, 400, 2200, reasoning=True),
    ModelSpec("google", "gemini-2.5-pro", 1.25, 0.31, 10.0, 0.0, 1500, 7000, reasoning=True),
)
MODEL_WEIGHTS = (30, 12, 8, 6, 14, 12, 12, 6)
# The same stable error types the provider adapters record (agents.providers.errors), so seeded data and
# real runs group together in the reports.
ERRORS = (
    # error_type, weight, run stop reason, provider-side (gets a provider trace with the error)
    ("rate_limit", 35, StopReason.LLM_API_ERROR, True),
    ("timeout", 15, StopReason.LLM_API_ERROR, True),
    ("provider_error", 12, StopReason.LLM_API_ERROR, True),
    ("overloaded", 5, StopReason.LLM_API_ERROR, True),
    ("connection_error", 8, StopReason.LLM_API_ERROR, True),
    ("context_window_exceeded", 10, StopReason.LLM_API_ERROR, True),
    ("malformed_stream", 4, StopReason.LLM_API_ERROR, True),
    ("tool_error", 8, StopReason.INVALID_TOOL_CALL, False),
    ("internal_error", 3, StopReason.ERROR, False),
)
FINISH_FOR_PROVIDER = {
    "openai": ("stop", "tool_calls"),
    "anthropic": ("end_turn", "tool_use"),
    "google": ("STOP", "STOP"),
}
AGENT_NAMES = (
    "support-triage", "billing-helper", "code-reviewer", "sql-analyst", "doc-writer", "travel-planner",
    "research-scout", "email-drafter", "onboarding-guide", "incident-responder", "contract-reader",
    "sales-qualifier", "translator", "data-cleaner", "meeting-summarizer", "ticket-router", "qa-tester",
    "hr-assistant", "pricing-advisor", "search-agent", "legal-checker", "inventory-bot", "tutor", "scheduler",
)  # fmt: skip
TAGS = ("prod", "beta", "eval", "vip", "batch", "experiment-42", "canary")
# Traffic by UTC hour: a working day in Europe and the Americas.
HOUR_WEIGHTS = (2, 1.5, 1, 1, 1, 1.5, 3, 5, 7, 8, 8, 8, 8, 8, 9, 9, 8, 7, 6, 5, 4, 4, 3, 2.5)
MAX_STEPS = 12
MEAN_EXTRA_STEPS = 2.3  # steps per run: 1 + an exponential with this mean, at most MAX_STEPS
FAILED_SHARE, CANCELLED_SHARE = 0.035, 0.008  # per step; a run stops at its first failed or cancelled step
PENDING_SHARE = 0.1  # of the last steps of runs started in the last two hours: still running
USERS = 10_000  # end users (user-00000 ...): 10,000,000 steps give each about 1,000
CONVERSATIONS_PER_USER = 8
TENANTS = 120

# What the messages and provider traces say: texts and tools of the sizes real runs have (see the docstring).
USER_ASKS = (
    "Where is my order 1042? It was supposed to arrive on Tuesday.",
    "Summarize yesterday's incidents for the on-call handover.",
    "Draft a reply to the customer who was charged twice.",
    "Which invoices from last month are still unpaid?",
    "Translate the release notes into German, keep the headings.",
    "Plot weekly sign-ups for the last quarter.",
)
FINAL_ANSWERS = (
    "Here is what I found: the order shipped on Monday from the Lyon warehouse and is due tomorrow. "
    "Tracking number 1Z999AA10123456784; nothing else is needed from you.",
    "Three incidents yesterday: a 12-minute API latency spike (resolved, cause: a slow query), a failed "
    "nightly export (re-run, fine) and a certificate warning on staging (renewed).",
    "Done. I refunded the duplicate charge of 49.90 EUR; it will show on the statement in 3 to 5 working days.",
    "Four invoices are unpaid: INV-2291, INV-2304, INV-2310 and INV-2318, 8,420 EUR in total.",
)
TOOLS = (
    ("search", '{"query": "order status 1042", "limit": 5}'),
    ("lookup_order", '{"order_id": "A-1042"}'),
    ("run_sql", '{"sql": "SELECT id, total FROM invoices WHERE paid_at IS NULL LIMIT 20"}'),
    ("fetch_url", '{"url": "https://status.example.com/api/incidents?since=yesterday"}'),
)
TOOL_RESULTS = (
    '{"rows": 3, "items": [{"id": "A-1042", "status": "shipped", "eta": "tomorrow"}]}',
    '{"order_id": "A-1042", "status": "shipped", "carrier": "UPS", "warehouse": "Lyon", "amount": 49.9}',
    '{"rows": 4, "columns": ["id", "total"], "data": [["INV-2291", 1200], ["INV-2304", 3400], ["INV-2310", 980]]}',
    '{"incidents": [{"id": 881, "title": "API latency", "minutes": 12}, {"id": 882, "title": "Nightly export"}]}',
)
REASONING = "The user needs live data; I will call the tool first and answer from what it returns."
TOOL_SCHEMA = {
    "type": "object",
    "required": ["query"],
    "properties": {"query": {"type": "string", "minLength": 1}, "limit": {"type": "integer", "maximum": 50}},
    "additionalProperties": False,
}


def user_content(ask: int) -> list[dict[str, Any]]:
    return [{"type": "text", "text": USER_ASKS[ask]}]


def assistant_content(answer: int | None, *, reasoning: bool) -> list[dict[str, Any]]:
    """An assistant message's parts: optional reasoning, then the final answer (or nothing before a tool call)."""
    parts: list[dict[str, Any]] = []
    if reasoning:
        parts.append({"type": "reasoning", "reasoning": REASONING, "is_native": True})
    if answer is not None:
        parts.append({"type": "text", "text": FINAL_ANSWERS[answer]})
    return parts


def tool_call(call_id: str, tool: int) -> list[dict[str, Any]]:
    name, arguments = TOOLS[tool]
    return [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]


def tool_returns(call_id: str, tool: int, *, ok: bool) -> list[dict[str, Any]]:
    response = TOOL_RESULTS[tool] if ok else "timeout after 30 s"
    status = "success" if ok else "error"
    return [{"tool_call_id": call_id, "status": status, "func_response": response, "stdout": None, "stderr": None}]


def trace_request(spec: ModelSpec, number: int) -> dict[str, Any]:
    """The request a step sends, shaped like the adapter records it: the conversation grows with the step number."""
    turns: list[dict[str, Any]] = [{"role": "user", "content": USER_ASKS[number % len(USER_ASKS)]}]
    for earlier in range(1, number):
        name, arguments = TOOLS[earlier % len(TOOLS)]
        call = f"call_{earlier:04d}"
        turns.append({"role": "assistant", "tool_calls": [
            {"id": call, "type": "function", "function": {"name": name, "arguments": arguments}}]})  # fmt: skip
        turns.append({"role": "tool", "tool_call_id": call, "content": TOOL_RESULTS[earlier % len(TOOL_RESULTS)]})
    tools = [{"name": name, "description": f"{name.replace('_', ' ').capitalize()} for the user's question.",
              "parameters": TOOL_SCHEMA} for name, _ in TOOLS[:2]]  # fmt: skip
    system = "You are a careful assistant for the support team. Use the tools before answering."
    if spec.api == "anthropic":
        return {"model": spec.model, "system": system, "messages": turns, "tools": tools, "stream": True,
                "max_tokens": 8192}  # fmt: skip
    if spec.api == "google":
        return {"contents": turns, "systemInstruction": {"parts": [{"text": system}]},
                "tools": [{"functionDeclarations": tools}], "generationConfig": {}}  # fmt: skip
    if spec.api == "openai_responses":
        return {"model": spec.model, "input": [{"role": "system", "content": system}, *turns], "tools": tools,
                "stream": True}  # fmt: skip
    return {"model": spec.model, "messages": [{"role": "system", "content": system}, *turns], "tools": tools,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip


def trace_response_base(spec: ModelSpec, *, last: bool) -> dict[str, Any]:
    """A successful response without its id and usage (added per step): text at the end, else a tool call."""
    content: list[dict[str, Any]] = []
    if spec.reasoning:
        content.append({"type": "reasoning", "reasoning": REASONING, "is_native": True})
    finish_stop, finish_tool = FINISH_FOR_PROVIDER[spec.provider]
    if last:
        content.append({"type": "text", "text": FINAL_ANSWERS[0]})
        return {"model": spec.model, "content": content, "finish_reason": finish_stop}
    name, arguments = TOOLS[0]
    content.append({"type": "tool_call", "id": "call_0001", "name": name, "input": json.loads(arguments)})
    calls = tool_call("call_0001", 0)
    return {"model": spec.model, "content": content, "tool_calls": calls, "finish_reason": finish_tool}


def usage_json(provider: str, row: dict[str, Any]) -> dict[str, Any]:
    """The provider's own usage object of a seeded step (what the adapters keep in response_json)."""
    prompt, completion = row["prompt_tokens"], row["completion_tokens"]
    cached, reasoning = row["cached_input_tokens"], row["reasoning_tokens"] or 0
    if provider == "anthropic":
        write = row["cache_write_tokens"] or 0
        return {"input_tokens": prompt - cached - write, "output_tokens": completion,
                "cache_read_input_tokens": cached, "cache_creation_input_tokens": write}  # fmt: skip
    if provider == "google":
        return {"promptTokenCount": prompt, "candidatesTokenCount": completion - reasoning,
                "thoughtsTokenCount": reasoning, "cachedContentTokenCount": cached,
                "totalTokenCount": prompt + completion}  # fmt: skip
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}  # fmt: skip


def error_message(error_type: str, provider: str) -> str:
    return f"{error_type.replace('_', ' ')} from {provider}"


def _cumulative(weights: Iterable[float]) -> list[float]:
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return out


@dataclass(frozen=True, slots=True)
class SeedAgent:
    agent: Agent
    primary: ModelSpec
    fallback: ModelSpec


@dataclass(frozen=True, slots=True)
class SeedPlan:
    """What both generators draw from: the organization, its agents, the time range and the shares."""

    organization: Organization
    agents: list[SeedAgent]
    now: datetime
    days: int
    detail_share: float
    users: int

    @property
    def start(self) -> datetime:
        return self.now - timedelta(days=self.days)

    @property
    def latest(self) -> datetime:
        return self.now - timedelta(minutes=2)

    @property
    def agent_cum(self) -> list[float]:
        return _cumulative(1.0 / (i + 1) ** 0.7 for i in range(len(self.agents)))


def _has_field(model: type[models.Model], name: str) -> bool:
    return any(f.name == name for f in model._meta.concrete_fields)


# --- the Python generator (SQLite and small counts) -------------------------------------------------------------


class Table:
    """A model's rows for bulk_create; keys the model does not have (a column of a newer schema) are left out."""

    def __init__(self, model: type[models.Model]) -> None:
        self.model = model
        self.attnames = {f.attname for f in model._meta.concrete_fields}
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> int:
        count = len(self.rows)
        if count:
            # Seeded rows carry their own (past) times: an auto_now_add field would stamp them all with now.
            stamped = [f for f in self.model._meta.concrete_fields if getattr(f, "auto_now_add", False)]
            for field in stamped:
                field.auto_now_add = False
            try:
                self.model.objects.bulk_create(
                    (self.model(**{k: v for k, v in row.items() if k in self.attnames}) for row in self.rows),
                    batch_size=500,
                )
            finally:
                for field in stamped:
                    field.auto_now_add = True
        self.rows = []
        return count


class Generator:
    """Makes runs and their steps (with metrics, messages, traces) one run at a time, in Python."""

    def __init__(self, *, plan: SeedPlan, rng: random.Random) -> None:
        self.plan = plan
        self.org = plan.organization
        self.rng = rng
        # Ids come from their own unseeded generator: seeding again (another organization, the same seed)
        # must not collide with rows already there.
        self.ids = random.Random()
        self.hour_cum = _cumulative(HOUR_WEIGHTS)
        self.error_cum = _cumulative(e[1] for e in ERRORS)
        self.agent_cum = plan.agent_cum
        self.runs = Table(Run)
        self.steps = Table(Step)
        self.metrics = Table(StepMetrics)
        self.messages = Table(Message)
        self.traces = Table(ProviderTrace)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.ids.getrandbits(128), version=4))

    def _when(self) -> datetime:
        rng, plan = self.rng, self.plan
        # Traffic grows about 2x over the period: later days are likelier.
        day = int(plan.days * math.sqrt(rng.random()))
        hour = rng.choices(range(24), cum_weights=self.hour_cum)[0]
        moment = plan.start.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
            days=day, hours=hour, seconds=rng.random() * 3600
        )
        if moment > plan.latest or moment < plan.start:
            moment = plan.start + (plan.latest - plan.start) * rng.random()
        return moment

    def run(self) -> int:
        """Generate one run and its steps; returns how many steps."""
        rng = self.rng
        agents = self.plan.agents
        seeded = agents[rng.choices(range(len(agents)), cum_weights=self.agent_cum)[0]]
        agent = seeded.agent
        spec = seeded.primary if rng.random() < 0.8 else seeded.fallback
        run_id = f"run-{self._uuid()}"
        request_id = f"req-{self._uuid()}"
        trace_id = f"{self.ids.getrandbits(128):032x}"
        user = rng.randrange(self.plan.users)
        user_id = f"user-{user:05d}"
        conversation_id = f"conv-{user:05d}-{rng.randrange(CONVERSATIONS_PER_USER)}"
        tenant = f"tenant-{user % TENANTS:03d}"
        env = "prod" if rng.random() < 0.85 else "staging"
        started = self._when()
        n_steps = min(1 + int(rng.expovariate(1 / MEAN_EXTRA_STEPS)), MAX_STEPS)
        detailed = rng.random() < self.plan.detail_share
        recent = self.plan.now - started < timedelta(hours=2)
        moment = started
        sequence = 0
        run_status, run_stop, run_error = RunStatus.COMPLETED, StopReason.END_TURN, None
        total_ns = 0
        run_ttft = None
        if detailed:
            sequence += 1
            self.messages.add(
                self._message(agent, run_id, None, sequence, moment, moment, "user", user_content(rng.randrange(6)))
            )
        for number in range(1, n_steps + 1):
            last = number == n_steps
            step_id = f"step-{self._uuid()}"
            roll = rng.random()
            status = StepStatus.SUCCESS
            if recent and last and roll < PENDING_SHARE:
                status = StepStatus.PENDING
            elif roll < FAILED_SHARE:
                status = StepStatus.FAILED
            elif roll < FAILED_SHARE + CANCELLED_SHARE:
                status = StepStatus.CANCELLED
            ttft_ns = int(rng.lognormvariate(math.log(spec.ttft_ms), 0.45) * 1e6)
            latency_ns = max(ttft_ns + 1_000_000, int(rng.lognormvariate(math.log(spec.latency_ms), 0.5) * 1e6))
            tool_ns = int(rng.lognormvariate(math.log(150), 1.0) * 1e6) if not last else 0
            row: dict[str, Any] = {
                "id": step_id, "organization_id": self.org.pk, "project_id": agent.project_id,
                "agent_id": agent.pk, "run_id": run_id, "origin": StepOrigin.SEED, "step_number": number,
                "attempt": 1, "provider_name": spec.provider, "provider_category": "base", "model": spec.model,
                "model_handle": spec.handle, "context_window_limit": spec.window,
                "request_id": request_id, "trace_id": trace_id, "span_id": f"{self.ids.getrandbits(64):016x}",
                "user_id": user_id, "conversation_id": conversation_id, "created_at": moment,
                "tags": sorted(rng.sample(TAGS, rng.choice((1, 1, 2)))) if rng.random() < 0.3 else [],
                "metadata": {"env": env, "tenant": tenant, "version": f"1.{rng.randrange(4)}"},
                "status": status, "progression": StepProgression.START,
            }  # fmt: skip
            if status == StepStatus.PENDING:
                self.steps.add(row)
                run_status, run_stop = RunStatus.RUNNING, None
                break
            if status != StepStatus.SUCCESS:
                if status == StepStatus.FAILED:
                    error_type, _, stop, provider_side = ERRORS[
                        rng.choices(range(len(ERRORS)), cum_weights=self.error_cum)[0]
                    ]
                else:
                    error_type, stop, provider_side = "cancelled", StopReason.CANCELLED, False
                if error_type in {"timeout", "connection_error"}:
                    ttft_ns = None
                    latency_ns = int(rng.uniform(10_000, 60_000) * 1e6) if error_type == "timeout" else 40_000_000
            completed = moment + timedelta(microseconds=(latency_ns + tool_ns) // 1000)
            row["completed_at"] = completed
            if status == StepStatus.SUCCESS:
                self._usage(row, spec, number)
                finish_stop, finish_tool = FINISH_FOR_PROVIDER[spec.provider]
                row["finish_reason"] = finish_stop if last else finish_tool
                row["stop_reason"] = self._last_stop() if last else None
                row["response_id"] = f"resp_{rng.getrandbits(64):016x}"
                row["progression"] = StepProgression.FINISHED
                if rng.random() < 0.02:
                    row["feedback"] = "positive" if rng.random() < 0.7 else "negative"
                if last:
                    run_stop = row["stop_reason"]
            else:
                row["error_type"] = error_type
                row["stop_reason"] = stop
                message = error_message(error_type, spec.provider)
                row["error_data"] = {"message": message, "traceback": None, "details": {"provider": spec.provider}}
                row["progression"] = StepProgression.START if provider_side else StepProgression.RESPONSE_RECEIVED
                run_status = RunStatus.FAILED if status == StepStatus.FAILED else RunStatus.CANCELLED
                run_stop, run_error = stop, row["error_data"]
                if provider_side and (detailed or rng.random() < 0.5):
                    self._trace(row, spec, number, last, latency_ns, error_type)
            row["ttft_ns"], row["latency_ns"] = ttft_ns, latency_ns
            self.steps.add(row)
            step_ns = latency_ns + tool_ns + 3_000_000
            start_ns = int(moment.timestamp() * 1e9)
            self.metrics.add(
                {"step_id": step_id, "step_created_at": moment, "step_start_ns": start_ns,
                 "llm_request_start_ns": start_ns + 2_000_000, "llm_request_ns": latency_ns, "ttft_ns": ttft_ns,
                 "tool_execution_ns": tool_ns or None, "step_ns": step_ns}
            )  # fmt: skip
            if run_ttft is None:
                run_ttft = ttft_ns
            total_ns += step_ns
            if detailed and status == StepStatus.SUCCESS:
                sequence = self._step_messages(agent, row, sequence, completed, last, spec)
                self._trace(row, spec, number, last, latency_ns, None)
            moment = completed + timedelta(milliseconds=5)
            if status != StepStatus.SUCCESS:
                break
        steps_made = number
        self.runs.add(
            {"id": run_id, "organization_id": self.org.pk, "project_id": agent.project_id, "agent_id": agent.pk,
             "request_id": request_id, "status": run_status, "stop_reason": run_stop, "ttft_ns": run_ttft,
             "total_duration_ns": total_ns, "step_count": steps_made, "user_id": user_id,
             "conversation_id": conversation_id, "trace_id": trace_id, "span_id": f"{self.ids.getrandbits(64):016x}",
             "origin": "seed", "metadata": {"env": env}, "error_data": run_error, "created_at": started,
             "started_at": started, "completed_at": None if run_status == RunStatus.RUNNING else moment}
        )  # fmt: skip
        return steps_made

    def _last_stop(self) -> str:
        roll = self.rng.random()
        if roll < 0.9:
            return StopReason.END_TURN
        if roll < 0.94:
            return StopReason.MAX_STEPS
        if roll < 0.97:
            return StopReason.MAX_TOKENS_EXCEEDED
        return StopReason.REQUIRES_APPROVAL

    def _usage(self, row: dict[str, Any], spec: ModelSpec, number: int) -> None:
        rng = self.rng
        prompt = int(rng.lognormvariate(math.log(2500 + 1800 * (number - 1)), 0.6))
        cached = int(prompt * rng.uniform(0.5, 0.92)) if number > 1 and rng.random() < 0.85 else 0
        cache_write = 0
        if spec.provider == "anthropic" and number == 1:
            cache_write = min(prompt - cached, int(prompt * rng.uniform(0.3, 0.7)))
        completion = int(rng.lognormvariate(math.log(220), 0.8)) + 1
        reasoning = int(completion * rng.uniform(0.2, 0.7)) if spec.reasoning else None
        if reasoning is not None:
            completion += reasoning
        uncached = prompt - cached - cache_write
        cost = (
            uncached * spec.input_usd + cached * spec.cached_usd + cache_write * spec.cache_write_usd
            + completion * spec.output_usd
        ) / 1_000_000  # fmt: skip
        row.update(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
            cached_input_tokens=cached, cache_write_tokens=cache_write if spec.provider == "anthropic" else None,
            reasoning_tokens=reasoning, cost_usd=Decimal(f"{cost:.10f}"),
        )  # fmt: skip

    def _message(
        self,
        agent: Agent,
        run_id: str,
        step_id: str | None,
        sequence: int,
        when: datetime,
        step_created_at: datetime,
        role: str,
        content: list,
    ) -> dict[str, Any]:
        return {
            "id": f"message-{self._uuid()}", "organization_id": self.org.pk, "agent_id": agent.pk, "run_id": run_id,
            "step_id": step_id, "role": role, "content": content, "sequence_id": sequence, "created_at": when,
            "step_created_at": step_created_at, "is_err": False,
        }  # fmt: skip

    def _step_messages(
        self, agent: Agent, step: dict[str, Any], sequence: int, when: datetime, last: bool, spec: ModelSpec
    ) -> int:
        rng = self.rng
        run_id, step_id, created = step["run_id"], step["id"], step["created_at"]
        reasoning = spec.reasoning and rng.random() < 0.5
        sequence += 1
        if last:
            content = assistant_content(rng.randrange(len(FINAL_ANSWERS)), reasoning=reasoning)
            self.messages.add(self._message(agent, run_id, step_id, sequence, when, created, "assistant", content))
            return sequence
        call_id = f"call_{rng.getrandbits(48):012x}"
        tool = rng.randrange(len(TOOLS))
        message = self._message(
            agent, run_id, step_id, sequence, when, created, "assistant", assistant_content(None, reasoning=reasoning)
        )
        message["tool_calls"] = tool_call(call_id, tool)
        self.messages.add(message)
        sequence += 1
        ok = rng.random() < 0.95
        result = self._message(agent, run_id, step_id, sequence, when, created, "tool", [])
        result.update(
            tool_call_id=call_id, name=TOOLS[tool][0], is_err=not ok, tool_returns=tool_returns(call_id, tool, ok=ok)
        )
        self.messages.add(result)
        return sequence

    def _trace(
        self,
        row: dict[str, Any],
        spec: ModelSpec,
        number: int,
        last: bool,
        latency_ns: int,
        error_type: str | None,
    ) -> None:
        response = None
        if not error_type:
            response = {"id": row["response_id"], **trace_response_base(spec, last=last),
                        "usage": usage_json(spec.provider, row)}  # fmt: skip
        self.traces.add(
            {"organization_id": self.org.pk, "step_id": row["id"], "step_created_at": row["created_at"],
             "attempt": 1, "provider": spec.provider, "api": spec.api, "model": spec.model,
             "request_json": trace_request(spec, number), "response_json": response,
             "latency_ms": latency_ns // 1_000_000, "error_type": error_type,
             "error_message": row["error_data"]["message"] if error_type else None, "created_at": row["created_at"]}
        )  # fmt: skip

    def flush(self) -> None:
        # Parents first: runs before steps, steps before what points at them.
        for table in (self.runs, self.steps, self.metrics, self.messages, self.traces):
            table.flush()


def _seed_python(*, plan: SeedPlan, count: int, rng: random.Random, chunk: int, log: Callable | None) -> int:
    generator = Generator(plan=plan, rng=rng)
    made, started = 0, time.monotonic()
    while made < count:
        target = min(count, made + chunk)
        while made < target:
            made += generator.run()
        generator.flush()
        if log:
            log(f"{made:>10,} steps  {time.monotonic() - started:6.1f}s")
    return made


# --- the PostgreSQL generator: the same distributions, drawn by the database ------------------------------------

# A normal deviate (Box-Muller) from two uniform draws; `1 - random()` is never 0.
_NORMAL = "(sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))"

# Stage 1: the runs of one chunk (`seed_r`): agent, model, end user, start, how many steps and how the run ends.
_RUNS_SQL = """
CREATE TEMP TABLE seed_r ON COMMIT DROP AS
WITH drawn AS MATERIALIZED (
    SELECT gi,
        1 + width_bucket(random() * %(agent_total)s, %(agent_cum)s::float8[]) AS a,
        random() < 0.8 AS use_primary,
        floor(random() * %(users)s)::int AS u,
        floor(random() * %(conversations)s)::int AS conv,
        random() < 0.85 AS prod,
        %(day0)s::timestamptz + make_interval(
            days => floor(%(days)s * sqrt(random()))::int,
            hours => width_bucket(random() * %(hour_total)s, %(hour_cum)s::float8[]),
            secs => random() * 3600) AS t0,
        random() AS tfix,
        least(1 + floor(-ln(1 - random()) * %(mean_extra)s)::int, %(max_steps)s) AS n_steps,
        random() < %(detail_share)s AS detailed,
        -- the first step that fails or is cancelled: geometric, as a roll per step would give
        1 + floor(ln(1 - random()) / ln(1 - %(end_share)s))::int AS fail_at,
        random() < %(failed_of_ended)s AS is_failed,
        1 + width_bucket(random() * %(error_total)s, %(error_cum)s::float8[]) AS e,
        random() < %(pending_share)s AS pending_roll
    FROM generate_series(1, %(runs)s) AS gi
), placed AS (
    SELECT drawn.*,
        CASE WHEN use_primary THEN (%(agent_primary)s::int[])[a] ELSE (%(agent_fallback)s::int[])[a] END AS m,
        CASE WHEN t0 > %(latest)s::timestamptz OR t0 < %(start)s::timestamptz
             THEN %(start)s::timestamptz + (%(latest)s::timestamptz - %(start)s::timestamptz) * tfix ELSE t0 END
            AS started,
        least(n_steps, fail_at) AS steps
    FROM drawn
), ended AS (
    SELECT placed.*,
        CASE
            WHEN %(now)s::timestamptz - started < interval '2 hours' AND fail_at >= n_steps AND pending_roll
                THEN 'pending'
            WHEN fail_at <= n_steps THEN CASE WHEN is_failed THEN 'failed' ELSE 'cancelled' END
        END AS ending,
        coalesce(sum(steps) OVER (ORDER BY gi ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS steps_before
    FROM placed
)
SELECT gi, a, m, u, conv, prod, started, steps, detailed, e, ending,
    'run-' || gen_random_uuid() AS run_id,
    'req-' || gen_random_uuid() AS request_id,
    replace(gen_random_uuid()::text, '-', '') AS trace_id,
    CASE WHEN ending = 'failed' THEN (%(error_provider_side)s::bool[])[e] ELSE false END AS provider_side,
    CASE WHEN ending = 'failed' THEN (%(error_types)s::text[])[e] WHEN ending = 'cancelled' THEN 'cancelled' END
        AS run_error_type
FROM ended
WHERE steps_before < %(remaining)s
"""

# Stage 2: the steps of those runs (`seed_s`), with their draws; created_at follows the previous step's end.
_STEPS_SQL = f"""
CREATE TEMP TABLE seed_s ON COMMIT DROP AS
WITH drawn AS MATERIALIZED (
    SELECT r.*, k AS number, k = r.steps AS last,
        CASE WHEN k = r.steps AND r.ending IS NOT NULL THEN r.ending ELSE 'success' END AS status,
        CASE WHEN k = r.steps THEN r.run_error_type END AS error_type,
        'step-' || gen_random_uuid() AS id,
        exp(ln((%(ttft_ms)s::float8[])[r.m]) + 0.45 * {_NORMAL}) * 1e6 AS ttft0,
        exp(ln((%(latency_ms)s::float8[])[r.m]) + 0.5 * {_NORMAL}) * 1e6 AS latency0,
        CASE WHEN k = r.steps THEN 0 ELSE (exp(ln(150) + {_NORMAL}) * 1e6)::bigint END AS tool_ns,
        random() AS timeout_roll,
        exp(ln(2500 + 1800 * (k - 1)) + 0.6 * {_NORMAL}) AS prompt0,
        random() AS cached_roll, random() AS cached_share, random() AS write_share,
        exp(ln(220) + 0.8 * {_NORMAL}) AS completion0, random() AS reasoning_share,
        random() AS stop_roll, random() AS feedback_roll, random() AS feedback_kind,
        random() AS tag_roll, random() AS tag_pair, random() AS tag_pick, random() AS version,
        random() AS reasoning_roll, random() AS content_pick, random() AS tool_ok, random() AS trace_roll
    FROM seed_r r CROSS JOIN LATERAL generate_series(1, r.steps) AS k
), timed AS (
    SELECT drawn.*,
        CASE WHEN status = 'pending' OR error_type IN ('timeout', 'connection_error') THEN NULL
             ELSE ttft0::bigint END AS ttft_ns,
        CASE WHEN status = 'pending' THEN NULL
             WHEN error_type = 'timeout' THEN ((10000 + 50000 * timeout_roll) * 1e6)::bigint
             WHEN error_type = 'connection_error' THEN 40000000
             ELSE greatest(ttft0::bigint + 1000000, latency0::bigint) END AS latency_ns
    FROM drawn
), used AS (
    SELECT timed.*,
        CASE WHEN status = 'success' THEN floor(prompt0)::bigint END AS prompt_tokens,
        CASE WHEN status <> 'success' THEN NULL
             WHEN number > 1 AND cached_roll < 0.85 THEN floor(floor(prompt0) * (0.5 + 0.42 * cached_share))::bigint
             ELSE 0 END AS cached_input_tokens,
        CASE WHEN status = 'success' AND (%(reasoning)s::bool[])[m]
             THEN floor((floor(completion0) + 1) * (0.2 + 0.5 * reasoning_share))::bigint END AS reasoning_tokens
    FROM timed
), priced AS (
    SELECT used.*,
        CASE WHEN status <> 'success' OR (%(providers)s::text[])[m] <> 'anthropic' THEN NULL
             WHEN number = 1
             THEN least(prompt_tokens - cached_input_tokens, floor(prompt_tokens * (0.3 + 0.4 * write_share))::bigint)
             ELSE 0 END AS cache_write_tokens,
        CASE WHEN status = 'success' THEN floor(completion0)::bigint + 1 + coalesce(reasoning_tokens, 0) END
            AS completion_tokens
    FROM used
)
SELECT priced.*,
    CASE WHEN status = 'success' THEN round(((
        (prompt_tokens - cached_input_tokens - coalesce(cache_write_tokens, 0)) * (%(input_usd)s::float8[])[m]
        + cached_input_tokens * (%(cached_usd)s::float8[])[m]
        + coalesce(cache_write_tokens, 0) * (%(cache_write_usd)s::float8[])[m]
        + completion_tokens * (%(output_usd)s::float8[])[m]) / 1000000)::numeric, 10) END AS cost_usd,
    started + (coalesce(sum(coalesce(latency_ns, 0) + tool_ns + 5000000) OVER (
        PARTITION BY gi ORDER BY number ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)::float8 / 1000)
        * interval '1 microsecond' AS created_at,
    sum(CASE WHEN status = 'pending' THEN 0 ELSE latency_ns + tool_ns + 3000000 END) OVER (PARTITION BY gi)
        AS run_duration_ns,
    first_value(ttft_ns) OVER (PARTITION BY gi ORDER BY number) AS run_ttft_ns
FROM priced
"""


def _lit(field: models.Field, value: Any) -> tuple[str, Any]:
    """SQL text and parameter for a field's default value."""
    if isinstance(field, models.JSONField):
        return "%s::jsonb", json.dumps(value)
    return "%s", value


def _insert_select(cursor: Any, model: type[models.Model], exprs: dict[str, str], tail: str, params: dict) -> int:
    """INSERT INTO the model's table every concrete column: `exprs` where given (by attname), else the field's
    default (NULL without one), FROM `tail`. Works whatever columns the schema has (step_created_at or not)."""
    qn = connection.ops.quote_name
    columns, values, literals = [], [], {}
    for field in model._meta.concrete_fields:
        if isinstance(field, models.AutoField):
            continue
        columns.append(qn(field.column))
        if field.attname in exprs:
            values.append(exprs[field.attname])
        elif field.has_default():
            sql, value = _lit(field, field.get_default())
            name = f"default_{model._meta.model_name}_{field.attname}"
            literals[name] = value
            values.append(sql.replace("%s", f"%({name})s"))
        else:
            values.append("NULL")
    cursor.execute(
        f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(columns)}) SELECT {', '.join(values)} FROM {tail}",
        {**params, **literals},
    )
    return cursor.rowcount


def _sql_params(plan: SeedPlan) -> dict[str, Any]:
    specs = list(MODELS)
    agent_cum = plan.agent_cum
    hour_cum = _cumulative(HOUR_WEIGHTS)
    error_cum = _cumulative(e[1] for e in ERRORS)
    day0 = plan.start.replace(hour=0, minute=0, second=0, microsecond=0)
    single_tags = [json.dumps([t]) for t in TAGS]
    pair_tags = [json.dumps(sorted((a, b))) for i, a in enumerate(TAGS) for b in TAGS[i + 1 :]]
    requests = [json.dumps(trace_request(spec, n)) for spec in specs for n in range(1, MAX_STEPS + 1)]
    responses = [json.dumps(trace_response_base(spec, last=last)) for spec in specs for last in (True, False)]
    finals = [json.dumps(assistant_content(i, reasoning=r)) for r in (False, True) for i in range(len(FINAL_ANSWERS))]
    return {
        "org": plan.organization.pk,
        "agent_total": agent_cum[-1],
        "agent_cum": agent_cum[:-1],
        "agent_ids": [a.agent.pk for a in plan.agents],
        "agent_projects": [a.agent.project_id for a in plan.agents],
        "agent_primary": [specs.index(a.primary) + 1 for a in plan.agents],
        "agent_fallback": [specs.index(a.fallback) + 1 for a in plan.agents],
        "users": plan.users,
        "conversations": CONVERSATIONS_PER_USER,
        "tenants": TENANTS,
        "day0": day0,
        "days": plan.days,
        "hour_total": hour_cum[-1],
        "hour_cum": hour_cum[:-1],
        "mean_extra": MEAN_EXTRA_STEPS,
        "max_steps": MAX_STEPS,
        "detail_share": plan.detail_share,
        "end_share": FAILED_SHARE + CANCELLED_SHARE,
        "failed_of_ended": FAILED_SHARE / (FAILED_SHARE + CANCELLED_SHARE),
        "pending_share": PENDING_SHARE,
        "error_total": error_cum[-1],
        "error_cum": error_cum[:-1],
        "error_types": [e[0] for e in ERRORS],
        "error_stops": [str(e[2]) for e in ERRORS],
        "error_provider_side": [e[3] for e in ERRORS],
        "now": plan.now,
        "start": plan.start,
        "latest": plan.latest,
        "providers": [s.provider for s in specs],
        "model_names": [s.model for s in specs],
        "handles": [s.handle for s in specs],
        "apis": [s.api for s in specs],
        "windows": [s.window for s in specs],
        "reasoning": [s.reasoning for s in specs],
        "ttft_ms": [s.ttft_ms for s in specs],
        "latency_ms": [s.latency_ms for s in specs],
        "input_usd": [s.input_usd for s in specs],
        "cached_usd": [s.cached_usd for s in specs],
        "output_usd": [s.output_usd for s in specs],
        "cache_write_usd": [s.cache_write_usd for s in specs],
        "finish_stop": [FINISH_FOR_PROVIDER[s.provider][0] for s in specs],
        "finish_tool": [FINISH_FOR_PROVIDER[s.provider][1] for s in specs],
        "single_tags": single_tags,
        "pair_tags": pair_tags,
        "requests": requests,
        "responses": responses,
        "user_asks": [json.dumps(user_content(i)) for i in range(len(USER_ASKS))],
        "finals": finals,
        "tool_only": json.dumps(assistant_content(None, reasoning=False)),
        "tool_reasoning": json.dumps(assistant_content(None, reasoning=True)),
        "tool_names": [t[0] for t in TOOLS],
        "tool_arguments": [t[1] for t in TOOLS],
        "tool_results": list(TOOL_RESULTS),
        "origin": StepOrigin.SEED.value,
    }


def _hex(bits: int) -> str:
    """SQL for `bits` random hex digits' worth (16 or 12 characters)."""
    return f"substr(md5(random()::text), 1, {bits // 4})"


_ERROR_DATA = (
    "CASE WHEN error_type IS NOT NULL THEN jsonb_build_object('message', replace(error_type, '_', ' ') || ' from ' "
    "|| (%(providers)s::text[])[m], 'traceback', NULL, 'details', jsonb_build_object('provider', "
    "(%(providers)s::text[])[m])) END"
)
_STEP_STOP = (
    "CASE WHEN status = 'failed' THEN (%(error_stops)s::text[])[e] WHEN status = 'cancelled' THEN 'cancelled' "
    "WHEN status = 'success' AND last THEN CASE WHEN stop_roll < 0.9 THEN 'end_turn' WHEN stop_roll < 0.94 "
    "THEN 'max_steps' WHEN stop_roll < 0.97 THEN 'max_tokens_exceeded' ELSE 'requires_approval' END END"
)
_RESPONSE_ID = "'resp_' || substr(md5(id || 'response'), 1, 16)"
_COMPLETED = "created_at + ((latency_ns + tool_ns) / 1000) * interval '1 microsecond'"


def _step_exprs(with_child_key: bool) -> dict[str, dict[str, str]]:
    """Column expressions (by attname) over seed_s, per model."""
    provider = "(%(providers)s::text[])[m]"
    step = {
        "id": "id", "organization_id": "%(org)s", "project_id": "(%(agent_projects)s::text[])[a]",
        "agent_id": "(%(agent_ids)s::text[])[a]", "run_id": "run_id", "origin": "%(origin)s",
        "step_number": "number", "attempt": "1", "provider_name": provider, "provider_category": "'base'",
        "model": "(%(model_names)s::text[])[m]", "model_handle": "(%(handles)s::text[])[m]",
        "context_window_limit": "(%(windows)s::int[])[m]",
        "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens",
        "total_tokens": "prompt_tokens + completion_tokens", "cached_input_tokens": "cached_input_tokens",
        "cache_write_tokens": "cache_write_tokens", "reasoning_tokens": "reasoning_tokens", "cost_usd": "cost_usd",
        "finish_reason": "CASE WHEN status = 'success' THEN CASE WHEN last THEN (%(finish_stop)s::text[])[m] "
                         "ELSE (%(finish_tool)s::text[])[m] END END",
        "stop_reason": _STEP_STOP,
        "response_id": f"CASE WHEN status = 'success' THEN {_RESPONSE_ID} END",
        "tags": "CASE WHEN tag_roll >= 0.3 THEN '[]'::jsonb WHEN tag_pair < 2.0 / 3 "
                "THEN (%(single_tags)s::jsonb[])[1 + floor(tag_pick * 7)::int] "
                "ELSE (%(pair_tags)s::jsonb[])[1 + floor(tag_pick * 21)::int] END",
        "metadata": "jsonb_build_object('env', CASE WHEN prod THEN 'prod' ELSE 'staging' END, 'tenant', 'tenant-' "
                    "|| lpad(mod(u, %(tenants)s)::text, 3, '0'), 'version', '1.' || floor(version * 4)::int)",
        "user_id": "'user-' || lpad(u::text, 5, '0')",
        "conversation_id": "'conv-' || lpad(u::text, 5, '0') || '-' || conv",
        "trace_id": "trace_id", "span_id": _hex(64), "request_id": "request_id",
        "feedback": "CASE WHEN status = 'success' AND feedback_roll < 0.02 THEN CASE WHEN feedback_kind < 0.7 "
                    "THEN 'positive' ELSE 'negative' END END",
        "error_type": "error_type", "error_data": _ERROR_DATA, "status": "status",
        "progression": "CASE WHEN status = 'success' THEN 5 WHEN status = 'pending' THEN 0 "
                       "WHEN provider_side THEN 0 ELSE 2 END",
        "created_at": "created_at",
        "completed_at": f"CASE WHEN status <> 'pending' THEN {_COMPLETED} END",
        "ttft_ns": "ttft_ns", "latency_ns": "latency_ns",
    }  # fmt: skip
    metrics = {
        "step_id": "id", "step_start_ns": "(extract(epoch FROM created_at) * 1000000)::bigint * 1000",
        "llm_request_start_ns": "(extract(epoch FROM created_at) * 1000000)::bigint * 1000 + 2000000",
        "llm_request_ns": "latency_ns", "ttft_ns": "ttft_ns", "tool_execution_ns": "nullif(tool_ns, 0)",
        "step_ns": "latency_ns + tool_ns + 3000000",
    }  # fmt: skip
    trace = {
        "organization_id": "%(org)s", "step_id": "id", "attempt": "1", "provider": provider,
        "api": "(%(apis)s::text[])[m]", "model": "(%(model_names)s::text[])[m]",
        "request_json": "(%(requests)s::jsonb[])[(m - 1) * %(max_steps)s + number]",
        "response_json": "CASE WHEN status = 'success' THEN (%(responses)s::jsonb[])[(m - 1) * 2 + "
                         "CASE WHEN last THEN 1 ELSE 2 END] || jsonb_build_object('id', "
                         f"{_RESPONSE_ID}, 'usage', {_USAGE_JSON}) END",
        "latency_ms": "latency_ns / 1000000", "error_type": "CASE WHEN status = 'failed' THEN error_type END",
        "error_message": "CASE WHEN status = 'failed' THEN replace(error_type, '_', ' ') || ' from ' || "
                         f"{provider} END",
        "created_at": "created_at",
    }  # fmt: skip
    run = {
        "id": "run_id", "organization_id": "%(org)s", "project_id": "(%(agent_projects)s::text[])[a]",
        "agent_id": "(%(agent_ids)s::text[])[a]", "request_id": "request_id",
        "status": "CASE status WHEN 'success' THEN 'completed' WHEN 'pending' THEN 'running' ELSE status END",
        "stop_reason": _STEP_STOP, "ttft_ns": "run_ttft_ns",
        "total_duration_ns": "run_duration_ns", "step_count": "number",
        "user_id": "'user-' || lpad(u::text, 5, '0')",
        "conversation_id": "'conv-' || lpad(u::text, 5, '0') || '-' || conv", "trace_id": "trace_id",
        "span_id": _hex(64), "origin": "'seed'",
        "metadata": "jsonb_build_object('env', CASE WHEN prod THEN 'prod' ELSE 'staging' END)",
        "error_data": _ERROR_DATA, "created_at": "started", "started_at": "started",
        "completed_at": f"CASE WHEN status <> 'pending' THEN {_COMPLETED} + interval '5 milliseconds' END",
    }  # fmt: skip
    message = {
        "id": "'message-' || gen_random_uuid()", "organization_id": "%(org)s", "agent_id": "(%(agent_ids)s::text[])[a]",
        "run_id": "run_id", "step_id": "CASE WHEN part = 0 THEN NULL ELSE id END",
        "role": "CASE part WHEN 0 THEN 'user' WHEN 1 THEN 'assistant' ELSE 'tool' END",
        "content": "CASE part WHEN 0 THEN (%(user_asks)s::jsonb[])[1 + floor(content_pick * 6)::int] "
                   "WHEN 1 THEN CASE WHEN last THEN (%(finals)s::jsonb[])[1 + floor(content_pick * 4)::int + "
                   "CASE WHEN thinks THEN 4 ELSE 0 END] WHEN thinks THEN %(tool_reasoning)s::jsonb "
                   "ELSE %(tool_only)s::jsonb END ELSE '[]'::jsonb END",
        "name": "CASE WHEN part = 2 THEN (%(tool_names)s::text[])[tool] END",
        "tool_calls": "CASE WHEN part = 1 AND NOT last THEN jsonb_build_array(jsonb_build_object('id', call_id, "
                      "'type', 'function', 'function', jsonb_build_object('name', (%(tool_names)s::text[])[tool], "
                      "'arguments', (%(tool_arguments)s::text[])[tool]))) END",
        "tool_call_id": "CASE WHEN part = 2 THEN call_id END",
        "tool_returns": "CASE WHEN part = 2 THEN jsonb_build_array(jsonb_build_object('tool_call_id', call_id, "
                        "'status', CASE WHEN tool_ok < 0.95 THEN 'success' ELSE 'error' END, 'func_response', "
                        "CASE WHEN tool_ok < 0.95 THEN (%(tool_results)s::text[])[tool] ELSE 'timeout after 30 s' "
                        "END, 'stdout', NULL, 'stderr', NULL)) END",
        "sequence_id": "CASE WHEN part = 0 THEN 1 ELSE 2 * number + part - 1 END",
        "is_err": "part = 2 AND tool_ok >= 0.95",
        "created_at": f"CASE WHEN part = 0 THEN created_at ELSE {_COMPLETED} END",
    }  # fmt: skip
    if with_child_key:
        for exprs in (metrics, trace):
            exprs["step_created_at"] = "created_at"
        message["step_created_at"] = "created_at"  # the user message's own created_at is its run's first step's
    return {"step": step, "metrics": metrics, "trace": trace, "run": run, "message": message}


_USAGE_JSON = (
    "CASE (%(providers)s::text[])[m] "
    "WHEN 'anthropic' THEN jsonb_build_object('input_tokens', prompt_tokens - cached_input_tokens "
    "- coalesce(cache_write_tokens, 0), 'output_tokens', completion_tokens, 'cache_read_input_tokens', "
    "cached_input_tokens, 'cache_creation_input_tokens', coalesce(cache_write_tokens, 0)) "
    "WHEN 'google' THEN jsonb_build_object('promptTokenCount', prompt_tokens, 'candidatesTokenCount', "
    "completion_tokens - coalesce(reasoning_tokens, 0), 'thoughtsTokenCount', coalesce(reasoning_tokens, 0), "
    "'cachedContentTokenCount', cached_input_tokens, 'totalTokenCount', prompt_tokens + completion_tokens) "
    "ELSE jsonb_build_object('prompt_tokens', prompt_tokens, 'completion_tokens', completion_tokens, "
    "'total_tokens', prompt_tokens + completion_tokens, 'prompt_tokens_details', jsonb_build_object("
    "'cached_tokens', cached_input_tokens), 'completion_tokens_details', jsonb_build_object('reasoning_tokens', "
    "coalesce(reasoning_tokens, 0))) END"
)

# The messages of a detailed run: the user's (part 0) with its first step, then per successful step an assistant
# message (1) and, unless it is the last step, the tool's answer (2).
_MESSAGES_FROM = (
    "(SELECT s.*, p.part, (%(reasoning)s::bool[])[s.m] AND s.reasoning_roll < 0.5 AS thinks, "
    "1 + floor(s.content_pick * 4)::int AS tool, 'call_' || substr(md5(s.id), 1, 12) AS call_id "
    "FROM seed_s s CROSS JOIN LATERAL generate_series(CASE WHEN s.number = 1 THEN 0 ELSE 1 END, "
    "CASE WHEN s.status <> 'success' THEN 0 WHEN s.last THEN 1 ELSE 2 END) AS p(part) "
    "WHERE s.detailed AND (p.part > 0 OR s.number = 1)) m"
)


def _seed_postgres(*, plan: SeedPlan, count: int, chunk: int, seed: int, log: Callable | None) -> int:
    params = _sql_params(plan)
    exprs = _step_exprs(with_child_key=_has_field(StepMetrics, "step_created_at"))
    per_run = 2.75  # average steps of a run (1 + Exp(2.3) capped at 12, cut at the first failure)
    made, started = 0, time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [(seed % 1000) / 1000])
        while made < count:
            remaining = min(count - made, chunk)
            runs = int(remaining / per_run * 1.15) + 5
            cursor.execute(_RUNS_SQL, {**params, "runs": runs, "remaining": remaining})
            cursor.execute(_STEPS_SQL, params)
            cursor.execute("SELECT count(*) FROM seed_s")
            made += cursor.fetchone()[0]
            tail = "seed_s WHERE last"
            _insert_select(cursor, Run, exprs["run"], tail, params)
            _insert_select(cursor, Step, exprs["step"], "seed_s", params)
            _insert_select(cursor, StepMetrics, exprs["metrics"], "seed_s WHERE status <> 'pending'", params)
            traced = (
                "seed_s WHERE (status = 'success' AND detailed) "
                "OR (status = 'failed' AND provider_side AND (detailed OR trace_roll < 0.5))"
            )
            _insert_select(cursor, ProviderTrace, exprs["trace"], traced, params)
            _insert_select(cursor, Message, exprs["message"], _MESSAGES_FROM, params)
            cursor.execute("DROP TABLE seed_s; DROP TABLE seed_r")
            if log:
                log(f"{made:>10,} steps  {time.monotonic() - started:6.1f}s")
    return made


# From this many steps on, foreign keys and secondary indexes are dropped for the load and rebuilt
# after; the tables are locked meanwhile, and the data is checked when the foreign keys come back.
BULK_THRESHOLD = 100_000
_BULK_TABLES = ("steps_step", "steps_stepmetrics", "steps_message", "agents_run", "traces_providertrace")


def _drop_for_bulk_load() -> list[str]:
    """Drop the bulk-loaded tables' foreign keys and indexes (primary and unique keys stay); return what
    recreates them.

    As pg_restore does: building an index once and validating a foreign key with one join are far
    faster than maintaining a dozen indexes and queueing millions of deferred checks row by row. On a
    partitioned table the parent's index or key is dropped (its partitions' go with it) and recreated on
    the parent, which builds it on every partition.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "WHERE c.contype = 'f' AND c.conparentid = 0 AND c.connamespace = current_schema()::regnamespace "
            "AND (c.conrelid::regclass::text = ANY(%s) OR c.confrelid::regclass::text = ANY(%s))",
            [list(_BULK_TABLES), list(_BULK_TABLES)],
        )
        foreign_keys = cursor.fetchall()
        cursor.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() "
            "AND i.tablename = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conname = i.indexname AND c.contype IN ('p', 'u', 'x'))",
            [list(_BULK_TABLES)],
        )
        indexes = cursor.fetchall()
        qn = connection.ops.quote_name
        for table, name, _ in foreign_keys:
            cursor.execute(f"ALTER TABLE {qn(table)} DROP CONSTRAINT {qn(name)}")
        for name, _ in indexes:
            cursor.execute(f"DROP INDEX {qn(name)}")
    # A partitioned table's index reads "ON ONLY <table>": recreated that way it would cover no partition.
    return [definition.replace(" ON ONLY ", " ON ", 1) for _, definition in indexes] + [
        f"ALTER TABLE {qn(table)} ADD CONSTRAINT {qn(name)} {definition}" for table, name, definition in foreign_keys
    ]


def _seed_agents(organization: Organization, rng: random.Random) -> list[SeedAgent]:
    projects = [project_get_or_create(organization=organization, name=n) for n in ("production", "staging", "evals")]
    existing = {a.name: a for a in Agent.objects.filter(organization=organization, deleted_at__isnull=True)}
    agents = []
    for index, name in enumerate(AGENT_NAMES):
        primary = MODELS[rng.choices(range(len(MODELS)), weights=MODEL_WEIGHTS)[0]]
        fallback = MODELS[rng.choices(range(len(MODELS)), weights=MODEL_WEIGHTS)[0]]
        agent = existing.get(name) or Agent.objects.create(
            organization=organization, project=projects[index % 3 if index % 5 else 2], name=name,
            model_handle=primary.handle, system=f"You are {name}.", max_steps=MAX_STEPS,
        )  # fmt: skip
        agents.append(SeedAgent(agent=agent, primary=primary, fallback=fallback))
    return agents


def seed_steps(*, organization_name: str, count: int, days: int = 35, seed: int = 7, detail_share: float = 1.0,
               users: int = USERS, chunk: int | None = None, log: Any = None,
               generator: str | None = None) -> Organization:  # fmt: skip
    """Create about `count` steps (whole runs, with metrics, messages, traces) for the organization over the last
    `days` days; rebuild its rollups. `generator` is "sql" (PostgreSQL only) or "python"; by default "sql" on
    PostgreSQL."""
    rng = random.Random(seed)
    organization = organization_get_or_create(name=organization_name)
    plan = SeedPlan(
        organization=organization, agents=_seed_agents(organization, rng), now=timezone.now().astimezone(UTC),
        days=days, detail_share=detail_share, users=users,
    )  # fmt: skip
    postgres = connection.vendor == "postgresql"
    generator = generator or ("sql" if postgres else "python")
    if generator == "sql" and not postgres:
        raise ValueError("the SQL generator needs PostgreSQL")
    started = time.monotonic()
    if partitions_ensure is not None and postgres:
        partitions_ensure(plan.start - timedelta(days=1), plan.now + timedelta(days=1))
    bulk = postgres and count >= BULK_THRESHOLD
    with transaction.atomic():
        if postgres:
            with connection.cursor() as cursor:  # a bulk load: its own commit need not wait for the disk
                cursor.execute("SET LOCAL synchronous_commit = off")
                cursor.execute("SET LOCAL work_mem = '64MB'")
        dropped = _drop_for_bulk_load() if bulk else []
        if generator == "sql":
            made = _seed_postgres(plan=plan, count=count, chunk=chunk or 250_000, seed=seed, log=log)
        else:
            made = _seed_python(plan=plan, count=count, rng=rng, chunk=chunk or 50_000, log=log)
        if dropped:
            if log:
                log(f"recreating indexes and foreign keys  {time.monotonic() - started:6.1f}s")
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
                for definition in dropped:
                    cursor.execute(definition)
    if log:
        log(f"rebuilding rollups  {time.monotonic() - started:6.1f}s")
    step_rollups_rebuild(organization=organization)
    if log:
        log(f"analyzing  {time.monotonic() - started:6.1f}s")
    if postgres:
        # VACUUM sets the steps' visibility map, so the errors report can use an index-only scan (the other tables
        # are only read through their indexes' heap rows: ANALYZE is enough there, and much faster than reading
        # and writing every page of the messages and provider traces). VACUUM cannot run inside a transaction (a
        # test's), where ANALYZE alone still gives the planner its statistics.
        vacuum = "ANALYZE" if connection.in_atomic_block else "VACUUM ANALYZE"
        with connection.cursor() as cursor:
            for model in (Run, Step, StepMetrics, Message, ProviderTrace, *_ROLLUP_MODELS):
                command = vacuum if model in (Step, *_ROLLUP_MODELS) else "ANALYZE"
                cursor.execute(f"{command} {model._meta.db_table}")
    if log:
        log(f"done: {made:,} steps in {time.monotonic() - started:.1f}s")
    return organization


_ROLLUP_MODELS = (StepRollupHour, StepRollupDay, SubjectRollupHour, SubjectRollupDay, ErrorRollupHour, ErrorRollupDay)


class Command(BaseCommand):
    help = "Seed realistic steps (generated by PostgreSQL itself there) for an organization, created if needed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=10_000, help="How many steps (about).")
        parser.add_argument("--organization", default="bench", help="Organization name (created if needed).")
        parser.add_argument("--days", type=int, default=35, help="Spread over the last N days.")
        parser.add_argument("--seed", type=int, default=7, help="Random seed (same seed, same data).")
        parser.add_argument(
            "--detail-share", type=float, default=1.0, help="Share of runs with messages and provider traces."
        )
        parser.add_argument("--users", type=int, default=USERS, help="End users the runs are spread over.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["count"] < 1:
            self.stderr.write("--count must be at least 1")
            return
        seed_steps(
            organization_name=options["organization"], count=options["count"], days=options["days"],
            seed=options["seed"], detail_share=options["detail_share"], users=options["users"],
            log=self.stdout.write,
        )  # fmt: skip
