"""Fill the database with realistic steps: `manage.py seed_steps --count 1000000 --organization bench`.

On PostgreSQL rows go in through COPY (psycopg 3), in chunks, with agents, runs, request ids, user
and conversation ids, tags, metadata, metrics, errors, messages and provider traces for a share of
the runs; then the rollups are rebuilt and the tables analyzed. Elsewhere (SQLite) it falls back to
bulk_create, which is fine for the small counts tests use. The same --seed gives the same data.
"""

import json
import math
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, models, transaction
from django.utils import timezone

from accounts.models import Organization, Project
from accounts.services import organization_get_or_create, project_get_or_create
from agents.models import Agent, Run, RunStatus, StopReason
from steps.models import (
    Message,
    ProviderTrace,
    Step,
    StepMetrics,
    StepOrigin,
    StepProgression,
    StepRollupDay,
    StepRollupHour,
    StepStatus,
)
from steps.rollups import step_rollups_rebuild


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


def _fmt(value: Any) -> str:
    """One value in COPY text format."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        value = json.dumps(value, separators=(",", ":"))
    elif not isinstance(value, str):
        return str(value)
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


class Table:
    """A model's columns for COPY; columns the seeder does not set get the field's default."""

    def __init__(self, model: type[models.Model]) -> None:
        self.model = model
        fields = [f for f in model._meta.concrete_fields if not isinstance(f, models.AutoField)]
        self.columns = [f.column for f in fields]
        self.attnames = [f.attname for f in fields]
        self.defaults = [f.get_default() if f.has_default() else None for f in fields]
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def copy_text(self) -> str:
        lines = []
        columns = list(zip(self.attnames, self.defaults, strict=True))
        for row in self.rows:
            lines.append("\t".join(_fmt(row.get(name, default)) for name, default in columns))
        return "\n".join(lines) + "\n" if lines else ""

    def flush(self, *, use_copy: bool) -> int:
        count = len(self.rows)
        if not count:
            return 0
        if use_copy:
            quoted = ", ".join(connection.ops.quote_name(c) for c in self.columns)
            with (
                connection.cursor() as cursor,
                cursor.copy(f"COPY {self.model._meta.db_table} ({quoted}) FROM STDIN") as copy,
            ):
                copy.write(self.copy_text())
        else:
            self.model.objects.bulk_create(
                (self.model(**{k: v for k, v in row.items()}) for row in self.rows), batch_size=500
            )
        self.rows = []
        return count


class Generator:
    """Makes runs and their steps (with metrics, messages, traces) one run at a time."""

    def __init__(
        self,
        *,
        organization: Organization,
        projects: list[Project],
        agents: list[tuple[Agent, ModelSpec, ModelSpec]],
        rng: random.Random,
        now: datetime,
        days: int,
        detail_share: float,
    ) -> None:
        self.org = organization
        self.projects = projects
        self.agents = agents
        self.rng = rng
        # Ids come from their own unseeded generator: seeding again (another organization, the same seed)
        # must not collide with rows already there.
        self.ids = random.Random()
        self.now = now
        self.start = now - timedelta(days=days)
        self.days = days
        self.detail_share = detail_share
        self.hour_cum = list(_cumulative(HOUR_WEIGHTS))
        self.error_cum = list(_cumulative([e[1] for e in ERRORS]))
        self.agent_cum = list(_cumulative([1.0 / (i + 1) ** 0.7 for i in range(len(agents))]))
        self.users = [f"user-{i:05d}" for i in range(5000)]
        self.tenants = [f"tenant-{i:03d}" for i in range(120)]
        self.runs = Table(Run)
        self.steps = Table(Step)
        self.metrics = Table(StepMetrics)
        self.messages = Table(Message)
        self.traces = Table(ProviderTrace)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.ids.getrandbits(128), version=4))

    def _when(self) -> datetime:
        rng = self.rng
        # Traffic grows about 2x over the period: later days are likelier.
        day = int(self.days * math.sqrt(rng.random()))
        hour = rng.choices(range(24), cum_weights=self.hour_cum)[0]
        moment = self.start.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
            days=day, hours=hour, seconds=rng.random() * 3600
        )
        latest = self.now - timedelta(minutes=2)
        if moment > latest or moment < self.start:
            moment = self.start + (latest - self.start) * rng.random()
        return moment

    def run(self) -> int:
        """Generate one run and its steps; returns how many steps."""
        rng = self.rng
        agent, primary, fallback = self.agents[rng.choices(range(len(self.agents)), cum_weights=self.agent_cum)[0]]
        spec = primary if rng.random() < 0.8 else fallback
        run_id = f"run-{self._uuid()}"
        request_id = f"req-{self._uuid()}"
        trace_id = f"{self.ids.getrandbits(128):032x}"
        user_id = rng.choice(self.users)
        conversation_id = f"conv-{user_id[5:]}-{rng.randrange(8)}"
        tenant = self.tenants[int(user_id[5:]) % len(self.tenants)]
        env = "prod" if rng.random() < 0.85 else "staging"
        started = self._when()
        n_steps = min(1 + int(rng.expovariate(1 / 2.3)), 12)
        detailed = rng.random() < self.detail_share
        recent = self.now - started < timedelta(hours=2)
        moment = started
        sequence = 0
        run_status, run_stop, run_error = RunStatus.COMPLETED, StopReason.END_TURN, None
        total_ns = 0
        run_ttft = None
        if detailed:
            sequence += 1
            self.messages.add(self._message(agent, run_id, None, sequence, moment, "user", _user_content(rng)))
        for number in range(1, n_steps + 1):
            last = number == n_steps
            step_id = f"step-{self._uuid()}"
            roll = rng.random()
            status = StepStatus.SUCCESS
            if recent and last and roll < 0.1:
                status = StepStatus.PENDING
            elif roll < 0.035:
                status = StepStatus.FAILED
            elif roll < 0.043:
                status = StepStatus.CANCELLED
            ttft_ns = int(rng.lognormvariate(math.log(spec.ttft_ms), 0.45) * 1e6)
            latency_ns = max(ttft_ns + 1_000_000, int(rng.lognormvariate(math.log(spec.latency_ms), 0.5) * 1e6))
            tool_ns = int(rng.lognormvariate(math.log(150), 1.0) * 1e6) if not last else 0
            row: dict[str, Any] = {
                "id": step_id, "organization_id": self.org.pk, "project_id": agent.project_id,
                "agent_id": agent.pk, "run_id": run_id, "origin": StepOrigin.SEED, "step_number": number,
                "attempt": 1, "provider_name": spec.provider, "provider_category": "base", "model": spec.model,
                "model_handle": spec.handle, "context_window_limit": spec_window(spec),
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
                if status == StepStatus.FAILED:
                    error_type, _, stop, provider_side = ERRORS[
                        rng.choices(range(len(ERRORS)), cum_weights=self.error_cum)[0]
                    ]
                else:
                    error_type, stop, provider_side = "cancelled", StopReason.CANCELLED, False
                row["error_type"] = error_type
                row["stop_reason"] = stop
                message = f"{error_type.replace('_', ' ')} from {spec.provider}"
                row["error_data"] = {"message": message, "traceback": None, "details": {"provider": spec.provider}}
                row["progression"] = StepProgression.START if provider_side else StepProgression.RESPONSE_RECEIVED
                if error_type in {"timeout", "connection_error"}:
                    ttft_ns = None
                    latency_ns = int(rng.uniform(10_000, 60_000) * 1e6) if error_type == "timeout" else 40_000_000
                run_status = RunStatus.FAILED if status == StepStatus.FAILED else RunStatus.CANCELLED
                run_stop, run_error = stop, row["error_data"]
                if provider_side and (detailed or rng.random() < 0.5):
                    self._trace(row, spec, moment, latency_ns, error_type)
            row["ttft_ns"], row["latency_ns"] = ttft_ns, latency_ns
            self.steps.add(row)
            step_ns = latency_ns + tool_ns + 3_000_000
            start_ns = int(moment.timestamp() * 1e9)
            self.metrics.add(
                {"step_id": step_id, "step_start_ns": start_ns, "llm_request_start_ns": start_ns + 2_000_000,
                 "llm_request_ns": latency_ns, "ttft_ns": ttft_ns, "tool_execution_ns": tool_ns or None,
                 "step_ns": step_ns}
            )  # fmt: skip
            if run_ttft is None:
                run_ttft = ttft_ns
            total_ns += step_ns
            if detailed and status == StepStatus.SUCCESS:
                sequence = self._step_messages(agent, run_id, step_id, sequence, completed, last, spec)
                self._trace(row, spec, moment, latency_ns, None)
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
        self, agent: Agent, run_id: str, step_id: str | None, sequence: int, when: datetime, role: str, content: list
    ) -> dict[str, Any]:
        return {
            "id": f"message-{self._uuid()}", "organization_id": self.org.pk, "agent_id": agent.pk, "run_id": run_id,
            "step_id": step_id, "role": role, "content": content, "sequence_id": sequence, "created_at": when,
            "is_err": False,
        }  # fmt: skip

    def _step_messages(
        self, agent: Agent, run_id: str, step_id: str, sequence: int, when: datetime, last: bool, spec: ModelSpec
    ) -> int:
        rng = self.rng
        content: list[dict[str, Any]] = []
        if spec.reasoning and rng.random() < 0.5:
            content.append({"type": "reasoning", "reasoning": "Let me check the details first.", "is_native": True})
        if last:
            content.append({"type": "text", "text": "Here is what I found: everything is in order."})
            sequence += 1
            self.messages.add(self._message(agent, run_id, step_id, sequence, when, "assistant", content))
            return sequence
        call_id = f"call_{rng.getrandbits(48):012x}"
        tool = rng.choice(("search", "lookup_order", "run_sql", "fetch_url"))
        sequence += 1
        message = self._message(agent, run_id, step_id, sequence, when, "assistant", content)
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": tool, "arguments": '{"query": "status"}'}}
        ]
        self.messages.add(message)
        sequence += 1
        ok = rng.random() < 0.95
        result = self._message(agent, run_id, step_id, sequence, when, "tool", [{"type": "text", "text": "ok"}])
        result.update(
            tool_call_id=call_id, name=tool, is_err=not ok,
            tool_returns=[{"tool_call_id": call_id, "status": "success" if ok else "error",
                           "func_response": '{"rows": 3}' if ok else "timeout", "stdout": None, "stderr": None}],
        )  # fmt: skip
        self.messages.add(result)
        return sequence

    def _trace(
        self, row: dict[str, Any], spec: ModelSpec, when: datetime, latency_ns: int, error_type: str | None
    ) -> None:
        request = {"model": spec.model, "messages": [{"role": "user", "content": "…"}], "stream": True}
        response = None if error_type else {"id": row.get("response_id"), "model": spec.model, "usage": {
            "prompt_tokens": row.get("prompt_tokens"), "completion_tokens": row.get("completion_tokens")}}  # fmt: skip
        self.traces.add(
            {"organization_id": self.org.pk, "step_id": row["id"], "attempt": 1, "provider": spec.provider,
             "api": "chat" if spec.provider == "openai" else "messages", "model": spec.model,
             "request_json": request, "response_json": response, "latency_ms": latency_ns // 1_000_000,
             "error_type": error_type, "error_message": row["error_data"]["message"] if error_type else None,
             "created_at": when}
        )  # fmt: skip

    def flush(self, *, use_copy: bool) -> None:
        # Parents first: runs before steps, steps before what points at them.
        for table in (self.runs, self.steps, self.metrics, self.messages, self.traces):
            table.flush(use_copy=use_copy)


# From this many steps on, foreign keys and secondary indexes are dropped for the load and rebuilt
# after; the tables are locked meanwhile, and the data is checked when the foreign keys come back.
BULK_THRESHOLD = 100_000
_BULK_TABLES = ("steps_step", "steps_stepmetrics", "steps_message", "agents_run", "traces_providertrace")


def _drop_for_bulk_load() -> list[str]:
    """Drop the bulk-loaded tables' foreign keys and indexes (primary keys stay); return what recreates them.

    As pg_restore does: building an index once and validating a foreign key with one join are far
    faster than maintaining a dozen indexes and queueing millions of deferred checks row by row.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace "
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
    return [definition for _, definition in indexes] + [
        f"ALTER TABLE {qn(table)} ADD CONSTRAINT {qn(name)} {definition}" for table, name, definition in foreign_keys
    ]


def spec_window(spec: ModelSpec) -> int:
    return 200_000 if spec.provider == "anthropic" else 128_000


def _cumulative(weights: Iterable[float]) -> Iterable[float]:
    total = 0.0
    for weight in weights:
        total += weight
        yield total


def _user_content(rng: random.Random) -> list[dict[str, Any]]:
    asks = ("Where is my order 1042?", "Summarize yesterday's incidents.", "Draft a reply to the customer.")
    return [{"type": "text", "text": rng.choice(asks)}]


def seed_steps(*, organization_name: str, count: int, days: int = 35, seed: int = 7, detail_share: float = 0.05,
               chunk: int = 50_000, log: Any = None) -> Organization:  # fmt: skip
    """Create `count` steps (and their runs, metrics, messages, traces) for the organization; rebuild rollups."""
    rng = random.Random(seed)
    organization = organization_get_or_create(name=organization_name)
    projects = [project_get_or_create(organization=organization, name=n) for n in ("production", "staging", "evals")]
    existing = {a.name: a for a in Agent.objects.filter(organization=organization, deleted_at__isnull=True)}
    agents = []
    for index, name in enumerate(AGENT_NAMES):
        primary = MODELS[rng.choices(range(len(MODELS)), weights=MODEL_WEIGHTS)[0]]
        fallback = MODELS[rng.choices(range(len(MODELS)), weights=MODEL_WEIGHTS)[0]]
        agent = existing.get(name) or Agent.objects.create(
            organization=organization, project=projects[index % 3 if index % 5 else 2], name=name,
            model_handle=primary.handle, system=f"You are {name}.", max_steps=12,
        )  # fmt: skip
        agents.append((agent, primary, fallback))
    use_copy = connection.vendor == "postgresql"
    generator = Generator(
        organization=organization, projects=projects, agents=agents, rng=rng, now=timezone.now().astimezone(UTC),
        days=days, detail_share=detail_share,
    )  # fmt: skip
    made, started = 0, time.monotonic()
    bulk = use_copy and count >= BULK_THRESHOLD
    with transaction.atomic():
        dropped = _drop_for_bulk_load() if bulk else []
        while made < count:
            target = min(count, made + chunk)
            while made < target:
                made += generator.run()
            generator.flush(use_copy=use_copy)
            if log:
                log(f"{made:>10,} steps  {time.monotonic() - started:6.1f}s")
        if dropped:
            if log:
                log(f"recreating indexes and foreign keys  {time.monotonic() - started:6.1f}s")
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
                for definition in dropped:
                    cursor.execute(definition)
    if log:
        log(f"rebuilding rollups  {time.monotonic() - started:6.1f}s")
    step_rollups_rebuild(organization=organization)
    if log:
        log(f"analyzing  {time.monotonic() - started:6.1f}s")
    if use_copy:
        # VACUUM sets the visibility map, so the errors report can use an index-only scan; it cannot run
        # inside a transaction (a test's), where ANALYZE alone still gives the planner its statistics.
        command = "ANALYZE" if connection.in_atomic_block else "VACUUM ANALYZE"
        with connection.cursor() as cursor:
            for model in (Run, Step, StepMetrics, Message, ProviderTrace, StepRollupHour, StepRollupDay):
                cursor.execute(f"{command} {model._meta.db_table}")
    if log:
        log(f"done: {made:,} steps in {time.monotonic() - started:.1f}s")
    return organization


class Command(BaseCommand):
    help = "Seed realistic steps (COPY on PostgreSQL) for an organization, created if needed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=10_000, help="How many steps (about).")
        parser.add_argument("--organization", default="bench", help="Organization name (created if needed).")
        parser.add_argument("--days", type=int, default=35, help="Spread over the last N days.")
        parser.add_argument("--seed", type=int, default=7, help="Random seed (same seed, same data).")
        parser.add_argument("--detail-share", type=float, default=0.05, help="Share of runs with messages/traces.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["count"] < 1:
            self.stderr.write("--count must be at least 1")
            return
        seed_steps(
            organization_name=options["organization"], count=options["count"], days=options["days"],
            seed=options["seed"], detail_share=options["detail_share"], log=self.stdout.write,
        )  # fmt: skip
