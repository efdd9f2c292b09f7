"""One recording path: the same steps stored step by step (the agent loop's services) into one organization and in
bulk (steps_record_many, the OTLP ingest's) into another give the same rows in every table the write path keeps.

Compared column by column, every column of every row: steps, step metrics, messages, provider traces, the hour
and day usage rollups, the hour and day errors rollups, the hour and day subject (end user, conversation)
rollups, and the runs' step counts. Left out are only the values
that must differ between two organizations or two moments of writing:
- `id` of steps, messages, provider traces and rollup rows: generated at write time (step and message ids are
  random, the others serial). Step, run, agent and project ids are mapped to names instead (STEP0, RUN, ...),
  wherever they appear: foreign keys, rollup dimensions, the errors rollup's example step.
- `organization_id`: the point of the comparison is two organizations.
- `created_at` of messages and provider traces: the moment each row was written (auto_now_add in the per-step
  path, the batch's clock in the bulk path), not a value the caller gives. A step's own created_at and
  completed_at are given by the caller and compared.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agents.models import Run, StopReason
from steps import services
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
    SubjectRollupDay,
    SubjectRollupHour,
)
from steps.provider_traces import ProviderTraceIn
from steps.recording import StepMetricsIn
from steps.rollups import step_rollups_rebuild, subject_rollup_rows
from steps.services import StepRecord
from steps.values import Usage
from tests.factories import AgentFactory, OrganizationFactory, ProjectFactory, RunFactory

pytestmark = pytest.mark.django_db

# Across an hour and a day boundary, so several hour and day rollup rows are written and some are shared.
T0 = datetime(2026, 3, 1, 23, 40, tzinfo=UTC)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
TOOL_CALL = [{"id": "call_1", "function": {"name": "chart", "arguments": '{"city": "Oslo"}'}}]


def _steps() -> list[dict[str, Any]]:
    """What each step is: the fields a caller gives either path. `run`: in the run (else only the agent, or
    neither with `agent=False`)."""
    return [
        {
            "run": True, "provider": "anthropic", "model": "claude-sonnet-4-5", "minutes": 0,
            "usage": Usage(prompt_tokens=1000, completion_tokens=100, cached_input_tokens=200, cache_write_tokens=100,
                           prompt_tokens_details={"cache_read_input_tokens": 200, "input_tokens": 700}),
            "metrics": StepMetricsIn(step_start_ns=1, llm_request_start_ns=2, llm_request_ns=800_000_000,
                                     ttft_ns=120_000_000, tool_execution_ns=5_000_000, step_ns=900_000_000),
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Chart the weather"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}},
                ]},
                {"role": "assistant", "content": [{"type": "reasoning", "reasoning": "think", "signature": "sig"}],
                 "tool_calls": TOOL_CALL},
                {"role": "tool", "tool_call_id": "call_1", "tool_returns": [{
                    "tool_call_id": "call_1", "status": "success", "func_response": [
                        {"type": "text", "text": "chart"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    ]}]},
            ],
            "trace": ProviderTraceIn(
                provider="anthropic", model="claude-sonnet-4-5", api="messages", latency_ms=800,
                request_json={"model": "claude-sonnet-4-5", "headers": {"x-api-key": "sk-ant-secret"}},
                response_json={"id": "msg_1", "usage": {"input_tokens": 700}},
            ),
            "finish_reason": "tool_calls", "stop_reason": None, "response_id": "msg_1",
        },
        {
            "run": True, "provider": "openai", "model": "gpt-4o-mini", "minutes": 5,
            "usage": Usage(prompt_tokens=50, completion_tokens=20, reasoning_tokens=4),
            "metrics": StepMetricsIn(step_ns=300_000_000),  # no LLM duration: the latency is the step's
            "messages": [{"role": "assistant", "content": [{"type": "text", "text": "Sunny."}]}],
            "trace": ProviderTraceIn(provider="openai", model="gpt-4o-mini", request_json={"authorization": "Bearer x"},
                                     response_json={"id": "chatcmpl-1"}),
            "finish_reason": "stop", "stop_reason": StopReason.END_TURN, "response_id": "chatcmpl-1",
        },
        {   # failed after the provider reported usage: it cost money and reached RESPONSE_RECEIVED
            "run": True, "provider": "openai", "model": "gpt-4o-mini", "minutes": 25,
            "usage": Usage(prompt_tokens=70, completion_tokens=3),
            "metrics": StepMetricsIn(llm_request_ns=2_000_000_000),
            "messages": [{"role": "assistant", "content": [{"type": "text", "text": "Part"}], "is_err": True}],
            "trace": ProviderTraceIn(provider="openai", model="gpt-4o-mini", error_type="server_error",
                                     error_message="boom " * 10),
            "error": ("server_error", "The server broke.", "Traceback (most recent call last): ...", {"code": 500}),
            "stop_reason": StopReason.LLM_API_ERROR,
        },
        {   # failed with nothing reported, no run (only the agent), in the next hour and day; its own end user
            "run": False, "user_id": "user-9", "provider": "anthropic", "model": "claude-sonnet-4-5", "minutes": 30,
            "usage": Usage(),
            "metrics": None,
            "messages": [],
            "trace": ProviderTraceIn(provider="anthropic", error_type="rate_limit", error_message="slow down"),
            "error": ("rate_limit", "Too many requests.", None, None),
            "stop_reason": StopReason.ERROR,
        },
        {   # no run, an unknown model (no cost, and why), messages numbered by the step; a conversation, no user
            "run": False, "conversation_id": "conv-5", "provider": "openai", "model": "my-llama", "minutes": 31,
            "usage": Usage(prompt_tokens=10, completion_tokens=1),
            "metrics": StepMetricsIn(ttft_ns=1, llm_request_ns=10),
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            ],
            "trace": None,
            "finish_reason": "length", "stop_reason": StopReason.MAX_TOKENS_EXCEEDED, "response_id": None,
        },
        {   # neither run nor agent
            "run": False, "agent": False, "provider": "google", "model": "gemini-2.0-flash", "minutes": 90,
            "usage": Usage(prompt_tokens=5, completion_tokens=5),
            "metrics": StepMetricsIn(llm_request_ns=50_000_000),
            "messages": [{"role": "assistant", "content": [{"type": "text", "text": "ok"}]}],
            "trace": ProviderTraceIn(provider="google", model="gemini-2.0-flash", request_json={"contents": []}),
            "finish_reason": "stop", "stop_reason": StopReason.END_TURN, "response_id": "g-1",
        },
    ]  # fmt: skip


def _world(organization):
    project = ProjectFactory(organization=organization, name="shop")
    agent = AgentFactory(organization=organization, project=project, name="helper")
    run = RunFactory(
        organization=organization, agent=agent, project=project, request_id="req-1", user_id="user-7",
        conversation_id="conv-3",
    )  # fmt: skip
    return {"project": project, "agent": agent, "run": run}


def _common(spec: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "provider_name": spec["provider"], "model": spec["model"],
        "model_handle": f"{spec['provider']}/{spec['model']}",
        "model_endpoint": "https://api.example.com/v1", "trace_id": f"{index:032x}", "span_id": f"{index + 1:016x}",
        "tags": ["b", "a", "b"], "metadata": {"otel": {"span_name": f"chat {spec['model']}"}},
    }  # fmt: skip


def _owner(spec, world) -> dict[str, Any]:
    subject = {name: spec[name] for name in ("user_id", "conversation_id") if name in spec}
    if spec["run"]:
        return {"run": world["run"], **subject}
    return {"agent": world["agent"], **subject} if spec.get("agent", True) else subject


def _record_one_by_one(organization, world) -> None:
    """The agent loop's path: step_start, then step_finish or step_fail (with the progression the loop reports)."""
    for index, spec in enumerate(_steps()):
        created = T0 + timedelta(minutes=spec["minutes"])
        step = services.step_start(
            organization=organization, origin=StepOrigin.OTLP, created_at=created, **_owner(spec, world),
            **_common(spec, index),
        )  # fmt: skip
        ended = {
            "metrics": spec["metrics"], "messages": spec["messages"], "provider_trace": spec["trace"],
            "completed_at": created + timedelta(seconds=2),
        }  # fmt: skip
        if "error" in spec:
            error_type, message, traceback, details = spec["error"]
            if spec["usage"].prompt_tokens is not None:
                services.step_progress(step=step, progression=StepProgression.RESPONSE_RECEIVED)
            services.step_fail(
                step=step, error_type=error_type, message=message, traceback=traceback, details=details,
                stop_reason=spec["stop_reason"], usage=spec["usage"], **ended,
            )  # fmt: skip
        else:
            services.step_finish(
                step=step, usage=spec["usage"], finish_reason=spec["finish_reason"], stop_reason=spec["stop_reason"],
                response_id=spec["response_id"], **ended,
            )  # fmt: skip


def _record_in_bulk(organization, world) -> list[Step]:
    records = []
    for index, spec in enumerate(_steps()):
        created = T0 + timedelta(minutes=spec["minutes"])
        common = _common(spec, index)
        error_type, message, traceback, details = spec.get("error", (None, None, None, None))
        records.append(
            StepRecord(
                trace_id=common.pop("trace_id"),
                span_id=common.pop("span_id"),
                usage=spec["usage"],
                created_at=created,
                completed_at=created + timedelta(seconds=2),
                origin=StepOrigin.OTLP,
                metrics=spec["metrics"],
                messages=spec["messages"],
                provider_trace=spec["trace"],
                finish_reason=spec.get("finish_reason"),
                stop_reason=spec["stop_reason"],
                response_id=spec.get("response_id"),
                error_type=error_type,
                error_message=message,
                traceback=traceback,
                error_details=details,
                **_owner(spec, world),
                **common,
            )
        )
    return services.steps_record_many(organization=organization, records=records)


def _names(organization, world) -> dict[str, str]:
    """The ids of one organization's records -> names shared by both organizations."""
    names = {world[key].pk: key.upper() for key in ("project", "agent", "run")}
    for index, step_id in enumerate(
        Step.objects.filter(organization=organization).order_by("created_at").values_list("pk", flat=True)
    ):
        names[step_id] = f"STEP{index}"
    return names


# Per table: how its rows are found, and the columns that must differ (see the module docstring).
TABLES = [
    (Step, "organization", {"id", "organization_id"}),
    (StepMetrics, "step__organization", set()),
    (Message, "organization", {"id", "organization_id", "created_at"}),
    (ProviderTrace, "organization", {"id", "organization_id", "created_at"}),
    (StepRollupHour, "organization", {"id", "organization_id"}),
    (StepRollupDay, "organization", {"id", "organization_id"}),
    (ErrorRollupHour, "organization", {"id", "organization_id"}),
    (ErrorRollupDay, "organization", {"id", "organization_id"}),
    (SubjectRollupHour, "organization", {"id", "organization_id"}),
    (SubjectRollupDay, "organization", {"id", "organization_id"}),
]


def _table(model, lookup: str, excluded: set[str], organization, names: dict[str, str]) -> list[dict[str, Any]]:
    columns = [f.attname for f in model._meta.concrete_fields if f.attname not in excluded]
    rows = []
    for row in model.objects.filter(**{lookup: organization}).values(*columns):
        # Ids of steps, runs, agents and projects, wherever they are (keys, dimensions, example step), by name.
        rows.append({k: names.get(v, v) if isinstance(v, str) else v for k, v in row.items()})
    return sorted(rows, key=lambda row: [str(row[c]) for c in columns])


def test_one_by_one_and_in_bulk_store_the_same_rows_in_every_table():
    one, bulk = OrganizationFactory(), OrganizationFactory()
    one_world, bulk_world = _world(one), _world(bulk)
    _record_one_by_one(one, one_world)
    inserted = _record_in_bulk(bulk, bulk_world)
    assert len(inserted) == len(_steps())

    one_names, bulk_names = _names(one, one_world), _names(bulk, bulk_world)
    for model, lookup, excluded in TABLES:
        expected = _table(model, lookup, excluded, one, one_names)
        assert expected, f"{model.__name__}: nothing stored, nothing compared"
        assert _table(model, lookup, excluded, bulk, bulk_names) == expected, model.__name__
    # The run's counters: every column of the run (its step count is what the write path keeps).
    run_columns = [f.attname for f in Run._meta.concrete_fields if f.attname not in {"id", "organization_id"}]
    one_run = Run.objects.filter(pk=one_world["run"].pk).values(*run_columns).get()
    bulk_run = Run.objects.filter(pk=bulk_world["run"].pk).values(*run_columns).get()
    assert one_run["step_count"] == 3
    for name in run_columns:
        if name in {"agent_id", "project_id", "created_at", "request_id"}:
            continue  # the run itself was made by the test, once per organization
        assert one_run[name] == bulk_run[name], name

    # What the comparison rests on is really there: redaction, images, tool calls, a failure's cost and progression.
    steps = {one_names[s.pk]: s for s in Step.objects.filter(organization=one)}
    assert steps["STEP2"].progression == StepProgression.RESPONSE_RECEIVED and steps["STEP2"].cost_usd > 0
    assert steps["STEP3"].progression == StepProgression.START and steps["STEP3"].error_type == "rate_limit"
    assert steps["STEP0"].cost_usd == Decimal("0.0040350000")
    assert steps["STEP4"].cost_usd is None and "my-llama" in steps["STEP4"].cost_detail
    assert steps["STEP1"].latency_ns == 300_000_000
    assert "sk-ant-secret" not in str(list(ProviderTrace.objects.filter(organization=bulk).values("request_json")))
    assert Message.objects.filter(organization=bulk, tool_calls__isnull=False).count() == 1
    assert list(
        Message.objects.filter(organization=bulk, run__isnull=True).order_by("step__created_at", "sequence_id")
        .values_list("sequence_id", flat=True)
    ) == [1, 2, 1]  # fmt: skip
    assert ErrorRollupHour.objects.filter(organization=bulk).count() == 2
    subjects = SubjectRollupDay.objects.filter(organization=bulk)
    assert sorted(subjects.values_list("kind", "subject_id").distinct()) == [
        ("conversation", "conv-3"), ("conversation", "conv-5"), ("user", "user-7"), ("user", "user-9"),
    ]  # fmt: skip


ROLLUPS = [table for table in TABLES if table[0].__name__.endswith(("RollupHour", "RollupDay"))]


@pytest.mark.parametrize("record", [_record_one_by_one, _record_in_bulk], ids=["one_by_one", "in_bulk"])
def test_rebuilding_the_rollups_gives_the_rows_the_write_path_kept(record):
    organization = OrganizationFactory()
    world = _world(organization)
    record(organization, world)
    names = _names(organization, world)
    kept = {model: _table(model, lookup, excluded, organization, names) for model, lookup, excluded in ROLLUPS}
    assert len(kept) == 6 and all(kept.values())

    step_rollups_rebuild(organization=organization)

    for model, lookup, excluded in ROLLUPS:
        assert _table(model, lookup, excluded, organization, names) == kept[model], model.__name__


def _hour(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_subject_rollup_rows_sum_a_window_per_end_user_or_conversation():
    organization = OrganizationFactory()
    world = _world(organization)
    _record_in_bulk(organization, world)
    two_days = {"start": _hour("2026-03-01T00:00"), "end": _hour("2026-03-03T00:00")}

    users = subject_rollup_rows(organization=organization, kind="user", **two_days)
    assert set(users) == {"user-7", "user-9"}
    assert (users["user-7"].counts["steps"], users["user-7"].counts["error_steps"]) == (3, 1)
    assert users["user-7"].counts["total_tokens"] == 1100 + 70 + 73
    assert users["user-7"].cost_usd == sum(
        Step.objects.filter(organization=organization, user_id="user-7").values_list("cost_usd", flat=True)
    )
    assert sum(users["user-7"].latency) == 3 and sum(users["user-7"].ttft) == 1
    assert (users["user-9"].counts["steps"], users["user-9"].counts["error_steps"]) == (1, 1)

    openai = subject_rollup_rows(organization=organization, kind="user", filters={"provider": ["openai"]}, **two_days)
    assert set(openai) == {"user-7"} and openai["user-7"].counts["steps"] == 2
    # Hours at a ragged day end and the whole day after: the same subject summed across both tables.
    mixed = subject_rollup_rows(
        organization=organization, kind="user", start=_hour("2026-03-01T23:00"), end=_hour("2026-03-03T00:00")
    )
    assert mixed["user-7"].counts["steps"] == 3
    one_hour = subject_rollup_rows(
        organization=organization, kind="user", start=_hour("2026-03-01T23:00"), end=_hour("2026-03-02T00:00")
    )
    assert set(one_hour) == {"user-7"} and one_hour["user-7"].counts["steps"] == 2

    conversations = subject_rollup_rows(organization=organization, kind="conversation", **two_days)
    assert {key: row.counts["steps"] for key, row in conversations.items()} == {"conv-3": 3, "conv-5": 1}
    only = subject_rollup_rows(organization=organization, kind="conversation", subject_ids=["conv-5"], **two_days)
    assert list(only) == ["conv-5"]
    # Another organization's rows are not read; a bound inside an hour is for the caller to add from the steps.
    assert subject_rollup_rows(organization=OrganizationFactory(), kind="user", **two_days) == {}
    assert (
        subject_rollup_rows(
            organization=organization, kind="user", start=_hour("2026-03-01T23:30"), end=two_days["end"]
        )
        is None
    )
