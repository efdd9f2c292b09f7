"""Writes one OTLP export request through the services: runs (agents/services), steps (steps_record_many).

trace_ingest (traces/services.py) is the entry; the mapping of spans onto records lives here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from django.db import transaction
from django.db.models import F, Max

from accounts.models import Organization, Project
from agents.models import Agent, Run, RunStatus, StopReason
from agents.services import RunRecord, agent_get_or_create, runs_record_many
from steps.models import Message, Step, StepMetrics, StepOrigin
from steps.provider_traces import ProviderTraceIn, provider_trace_json
from steps.services import StepMetricsIn, StepRecord, messages_create, steps_record_many
from steps.values import MessageIn, validate_message
from traces.ingest.decode import OtlpSpan
from traces.ingest.mapping import (
    AgentInvocation,
    LlmCall,
    SpanRejected,
    ToolExecution,
    agent_invocation,
    llm_call,
    new_turn,
    ns_to_datetime,
    span_kind,
    tool_execution,
)
from traces.services import IngestResult, rejection_message


def _classify(
    spans: Sequence[OtlpSpan],
) -> tuple[list[LlmCall], list[AgentInvocation], list[ToolExecution], int, dict[str, int]]:
    calls: list[LlmCall] = []
    agents: list[AgentInvocation] = []
    tools: list[ToolExecution] = []
    rejected = 0
    reasons: dict[str, int] = defaultdict(int)
    for span in spans:
        kind = span_kind(span)
        try:
            if kind == "llm":
                calls.append(llm_call(span))
            elif kind == "agent":
                agents.append(agent_invocation(span))
            elif kind == "tool":
                tools.append(tool_execution(span))
            elif not span.ids_valid:
                raise SpanRejected("span has an invalid trace_id or span_id")
        except SpanRejected as exc:
            rejected += 1
            reasons[str(exc)] += 1
    return calls, agents, tools, rejected, reasons


def _agent_of_call(
    call: LlmCall, spans_by_id: dict[tuple[str, str], OtlpSpan], agent_keys: set[tuple[str, str]]
) -> str | None:
    """The span id of the nearest invoke_agent ancestor of `call` within this request, if any."""
    parent, hops = call.span.parent_span_id, 0
    while parent and hops < 64:
        if (call.span.trace_id, parent) in agent_keys:
            return parent
        parent_span = spans_by_id.get((call.span.trace_id, parent))
        parent = parent_span.parent_span_id if parent_span is not None else ""
        hops += 1
    return None


def _runs_for(
    organization: Organization,
    agents: list[AgentInvocation],
    first_chunk_at: dict[tuple[str, str], int],
    project: Project | None,
) -> tuple[dict[tuple[str, str], Run], list[Run]]:
    """Run per agent span (stored before, or recorded now with runs_record_many); and the runs new in this call.
    New runs, and agents created here, belong to `project` (the sending key's) when there is one."""
    agents_by_name: dict[str, Agent] = {}
    records = []
    for invocation in agents:
        agent = agents_by_name.get(invocation.agent_name)
        if agent is None:
            handle = "/".join(p for p in (invocation.provider, invocation.request_model) if p)
            agent = agent_get_or_create(
                organization=organization,
                name=invocation.agent_name,
                model_handle=handle,
                metadata={"external_id": invocation.agent_external_id} if invocation.agent_external_id else None,
                project=project,
            )
            agents_by_name[invocation.agent_name] = agent
        span = invocation.span
        failed = invocation.error_type is not None
        first = first_chunk_at.get((span.trace_id, span.span_id))
        records.append(
            RunRecord(
                agent=agent,
                project=project,
                trace_id=span.trace_id,
                span_id=span.span_id,
                request_id=invocation.request_id or span.trace_id,
                status=RunStatus.FAILED if failed else RunStatus.COMPLETED,
                stop_reason=StopReason.ERROR if failed else StopReason.END_TURN,
                created_at=ns_to_datetime(span.start_ns),
                completed_at=ns_to_datetime(span.end_ns or span.start_ns),
                total_duration_ns=max(0, (span.end_ns or span.start_ns) - span.start_ns),
                # Time to first token of the run: its start to the first chunk of its earliest step seen here.
                ttft_ns=max(0, first - span.start_ns) if first is not None else None,
                user_id=invocation.user_id,
                conversation_id=invocation.conversation_id,
                origin=StepOrigin.OTLP,
                metadata={"otel": {"span_name": span.name, "service_name": span.resource.get("service.name")}},
                error_data={"error_type": invocation.error_type, "message": invocation.error_message}
                if failed
                else None,
            )
        )
    runs, inserted = runs_record_many(organization=organization, records=records)
    return runs, [run for run in runs.values() if run.pk in inserted]


def _stored_run_of_calls(organization: Organization, calls: list[LlmCall], project: Project | None) -> dict[str, Run]:
    """span_id -> Run for LLM calls whose agent span is not in this request: the stored run of the direct parent
    span, else the trace's only stored run (with `project`, only that project's runs)."""
    out: dict[str, Run] = {}
    in_project = {"project": project} if project is not None else {}
    stored = list(
        Run.objects.select_related("agent").filter(
            organization=organization, trace_id__in={c.span.trace_id for c in calls}, **in_project
        )
    )
    if not stored:
        return out
    by_span = {(r.trace_id, r.span_id): r for r in stored}
    by_trace: dict[str, list[Run]] = defaultdict(list)
    for run in stored:
        by_trace[run.trace_id].append(run)
    for call in calls:
        run = by_span.get((call.span.trace_id, call.span.parent_span_id))
        if run is None and len(by_trace.get(call.span.trace_id, [])) == 1:
            run = by_trace[call.span.trace_id][0]
        if run is not None:
            out[call.span.span_id] = run
    return out


def _tool_message(tool: ToolExecution) -> MessageIn | None:
    if not tool.call_id or tool.result is None:
        return None
    status = "error" if tool.error_type else "success"
    return validate_message(
        {
            "role": "tool",
            "content": [{"type": "tool_return", "tool_call_id": tool.call_id, "content": tool.result,
                         "is_error": tool.error_type is not None}],
            "tool_call_id": tool.call_id,
            "tool_returns": [{"tool_call_id": tool.call_id, "status": status, "func_response": tool.result}],
            "is_err": tool.error_type is not None,
            "otid": f"otel-{tool.span.span_id}",
        }
    )  # fmt: skip


def _attach_tools(calls: list[LlmCall], tools: list[ToolExecution]) -> tuple[set[str], list[ToolExecution]]:
    """Give each tool span to the LLM call that asked for it (by call id, else the last call before it under the
    same parent). Returns the tool call ids that got a message, and the tool spans left unmatched."""
    by_call_id: dict[tuple[str, str], LlmCall] = {}
    for call in calls:
        for message in call.output_messages:
            for tool_call in message.tool_calls or []:
                by_call_id[(call.span.trace_id, tool_call.id)] = call
    covered: set[str] = set()
    unmatched: list[ToolExecution] = []
    for tool in tools:
        owner = by_call_id.get((tool.span.trace_id, tool.call_id or ""))
        if owner is None:
            earlier = [
                c
                for c in calls
                if c.span.trace_id == tool.span.trace_id
                and c.span.parent_span_id == tool.span.parent_span_id
                and c.span.start_ns <= tool.span.start_ns
            ]
            owner = max(earlier, key=lambda c: c.span.start_ns, default=None)
        if owner is None:
            unmatched.append(tool)
            continue
        owner.tool_ns += max(0, tool.span.end_ns - tool.span.start_ns)
        message = _tool_message(tool)
        if message is not None:
            owner.tool_messages.append(message)
            covered.add(tool.call_id or "")
    return covered, unmatched


def _record(call: LlmCall, run: Run | None, covered_tool_ids: set[str], project: Project | None) -> StepRecord:
    span = call.span
    duration = max(0, (span.end_ns or span.start_ns) - span.start_ns)
    inputs = new_turn(call.input_messages) if run is not None else call.input_messages
    # A tool result already stored from its execute_tool span is not stored again from the next call's input.
    inputs = [m for m in inputs if not (m.role == "tool" and m.tool_call_id in covered_tool_ids)]
    model = call.response_model or call.request_model
    usage_json = {k: v for k, v in call.usage.as_counts().items() if v is not None}
    # Cut here, once, to count the cuts for the batch's result; the services store these values as they are.
    request_json = provider_trace_json({"model": call.request_model, "messages": call.raw_input, **call.request_params})
    response_json = provider_trace_json(
        {
            "id": call.response_id,
            "model": call.response_model,
            "finish_reason": call.finish_reason,
            "usage": usage_json,
            # The output is stored as the step's messages; kept here only when some of it could not be.
            **({"output": call.raw_output} if call.dropped_messages else {}),
        }
    )
    call.trace_cut = request_json.cut or response_json.cut
    return StepRecord(
        trace_id=span.trace_id,
        span_id=span.span_id,
        usage=call.usage,
        created_at=call.created_at,
        completed_at=call.completed_at,
        run=run,
        agent=run.agent if run is not None else None,
        project=project,  # the sending key's project wins over the run's and the agent's
        origin=StepOrigin.OTLP,
        provider_name=call.provider,
        model=model,
        model_handle=f"{call.provider}/{call.request_model}" if call.provider and call.request_model else None,
        request_id=call.request_id or (run.request_id if run is not None else span.trace_id),
        user_id=call.user_id,
        conversation_id=call.conversation_id,
        tags=call.tags,
        metadata={
            "otel": {
                "span_name": span.name,
                "parent_span_id": span.parent_span_id or None,
                "service_name": span.resource.get("service.name"),
                "scope": span.scope or None,
            }
        },
        finish_reason=call.finish_reason,
        stop_reason=StopReason.LLM_API_ERROR if call.error_type else None,
        response_id=call.response_id,
        metrics=StepMetricsIn(
            step_start_ns=span.start_ns,
            llm_request_start_ns=span.start_ns,
            llm_request_ns=duration,
            ttft_ns=call.ttft_ns,
            tool_execution_ns=call.tool_ns or None,
            step_ns=duration + call.tool_ns,
        ),
        messages=[*inputs, *call.output_messages, *call.tool_messages],
        provider_trace=ProviderTraceIn(
            provider=call.provider or "unknown",
            model=model or "",
            api=str(span.attributes.get("gen_ai.operation.name") or "chat")[:32],
            request_json=request_json,
            response_json=response_json,
            latency_ms=duration // 1_000_000,
            error_type=call.error_type,
            error_message=call.error_message,
        ),
        error_type=call.error_type,
        error_message=call.error_message,
        traceback=call.traceback,
        error_details={"span_status": call.span.status_message} if call.error_type else None,
    )


def _adopt_orphans(
    organization: Organization, new_runs: list[Run], inserted: set[str], project: Project | None
) -> None:
    """Steps stored by an earlier request before their trace's invoke_agent span arrived join the new run.

    Only when the trace has exactly this one run. The step keeps its agent (none), so the rollups stay exact.
    With `project`, only that project's steps.
    """
    if not new_runs:
        return
    traces = {run.trace_id for run in new_runs}
    orphans_by_trace: dict[str, list[str]] = defaultdict(list)
    for pk, trace_id in (
        Step.objects.filter(organization=organization, trace_id__in=traces, run__isnull=True, origin=StepOrigin.OTLP)
        .filter(**({"project": project} if project is not None else {}))
        .exclude(pk__in=inserted)
        .order_by("created_at", "pk")
        .values_list("pk", "trace_id")
    ):
        orphans_by_trace[trace_id].append(pk)
    if not orphans_by_trace:
        return
    counts: dict[str, int] = defaultdict(int)
    for trace_id in Run.objects.filter(organization=organization, trace_id__in=set(orphans_by_trace)).values_list(
        "trace_id", flat=True
    ):
        counts[trace_id] += 1
    for run in new_runs:
        orphans = orphans_by_trace.get(run.trace_id)
        if not orphans or counts[run.trace_id] != 1:
            continue
        Step.objects.filter(pk__in=orphans).update(run=run)
        last = Message.objects.filter(run=run).aggregate(m=Max("sequence_id"))["m"] or 0
        order = {pk: i for i, pk in enumerate(orphans)}
        messages = sorted(
            Message.objects.filter(step_id__in=orphans, run__isnull=True),
            key=lambda m: (order[m.step_id], m.sequence_id),
        )
        for offset, message in enumerate(messages, start=1):
            message.run_id, message.sequence_id = run.pk, last + offset
        Message.objects.bulk_update(messages, ["run_id", "sequence_id"])
        Run.objects.filter(pk=run.pk).update(step_count=F("step_count") + len(orphans))


def _tool_leftovers(organization: Organization, tools: list[ToolExecution], project: Project | None) -> None:
    """Tool spans whose LLM call was stored by an earlier request: the trace's last step before the tool started
    (with `project`, of that project: a project-limited key writes into its project only).

    Applied once per tool span: its message carries otid `otel-<span_id>`, and a stored one means done.
    """
    for tool in tools:
        step = (
            Step.objects.filter(
                organization=organization,
                trace_id=tool.span.trace_id,
                created_at__lte=ns_to_datetime(tool.span.start_ns),
                **({"project": project} if project is not None else {}),
            )
            .order_by("-created_at")
            .first()
        )
        otid = f"otel-{tool.span.span_id}"
        if step is None or Message.objects.filter(step=step, otid=otid).exists():
            continue
        metrics, _ = StepMetrics.objects.select_for_update().get_or_create(
            step=step, defaults={"step_created_at": step.created_at}
        )
        metrics.tool_execution_ns = (metrics.tool_execution_ns or 0) + max(0, tool.span.end_ns - tool.span.start_ns)
        metrics.save(update_fields=["tool_execution_ns"])
        message = _tool_message(tool) or validate_message(
            {"role": "tool", "content": [], "tool_call_id": tool.call_id, "otid": otid}
        )
        messages_create(organization=organization, messages=[message.model_copy(update={"otid": otid})], step=step)


def ingest_spans(
    *, organization: Organization, spans: Sequence[OtlpSpan], project_id: str | None = None
) -> IngestResult:
    """See traces.services.trace_ingest."""
    return ingest_span_groups(organization=organization, groups=[spans], project_id=project_id)[0]


@transaction.atomic
def ingest_span_groups(
    *, organization: Organization, groups: Sequence[Sequence[OtlpSpan]], project_id: str | None = None
) -> list[IngestResult]:
    """Map several export requests (staged batches) of one organization in one transaction, as if they were one
    request; returns each group's own result. A span repeated across groups is mapped once.

    `project_id`: the project the sending API key is limited to. Every step and every new run (and agent) goes
    there, overriding the project of the agent or run a span would otherwise give it; stored runs and steps of
    other projects are not joined or changed."""
    project = Project.objects.filter(organization=organization, pk=project_id).first() if project_id else None
    calls: list[LlmCall] = []
    agents: list[AgentInvocation] = []
    tools: list[ToolExecution] = []
    group_of: dict[tuple[str, str], int] = {}
    counts: list[tuple[int, int, dict[str, int]]] = []
    seen: set[tuple[str, str]] = set()
    for index, spans in enumerate(groups):
        fresh = []
        for span in spans:
            key = (span.trace_id, span.span_id)
            if span.ids_valid and key in seen:
                continue
            seen.add(key)
            fresh.append(span)
            group_of.setdefault(key, index)
        group_calls, group_agents, group_tools, rejected, reasons = _classify(fresh)
        calls += group_calls
        agents += group_agents
        tools += group_tools
        counts.append((len(spans), rejected, reasons))

    spans_by_id = {(span.trace_id, span.span_id): span for spans in groups for span in spans}
    agent_keys = {(a.span.trace_id, a.span.span_id) for a in agents}
    agent_of_call: dict[str, str] = {}
    first_chunk_at: dict[tuple[str, str], int] = {}
    for call in calls:
        agent_span_id = _agent_of_call(call, spans_by_id, agent_keys) if agent_keys else None
        if agent_span_id is None:
            continue
        agent_of_call[call.span.span_id] = agent_span_id
        if call.ttft_ns is not None:
            key, at = (call.span.trace_id, agent_span_id), call.span.start_ns + call.ttft_ns
            first_chunk_at[key] = min(first_chunk_at.get(key, at), at)

    runs, new_runs = _runs_for(organization, agents, first_chunk_at, project) if agents else ({}, [])
    run_of = {
        call.span.span_id: runs[(call.span.trace_id, agent_of_call[call.span.span_id])]
        for call in calls
        if call.span.span_id in agent_of_call and (call.span.trace_id, agent_of_call[call.span.span_id]) in runs
    }
    rest = [call for call in calls if call.span.span_id not in run_of]
    if rest:
        run_of.update(_stored_run_of_calls(organization, rest, project))
    covered, unmatched_tools = _attach_tools(calls, tools)

    records = [_record(call, run_of.get(call.span.span_id), covered, project) for call in calls]
    inserted = steps_record_many(organization=organization, records=records)
    _adopt_orphans(organization, new_runs, {step.pk for step in inserted}, project)
    if unmatched_tools:
        _tool_leftovers(organization, unmatched_tools, project)

    steps_created = [0] * len(groups)
    for step in inserted:
        steps_created[group_of.get((step.trace_id, step.span_id), 0)] += 1
    runs_created = [0] * len(groups)
    for run in new_runs:
        runs_created[group_of.get((run.trace_id, run.span_id), 0)] += 1
    dropped, traces_cut = [0] * len(groups), [0] * len(groups)
    for call in calls:
        group = group_of.get((call.span.trace_id, call.span.span_id), 0)
        dropped[group] += call.dropped_messages
        traces_cut[group] += call.trace_cut
    return [
        IngestResult(
            accepted=total - rejected,
            rejected=rejected,
            message=rejection_message(
                rejected,
                reasons,
                dropped[index],
                cut=[key for span in groups[index] for key in span.cut_attributes],
                traces_cut=traces_cut[index],
            ),
            steps_created=steps_created[index],
            runs_created=runs_created[index],
        )
        for index, (total, rejected, reasons) in enumerate(counts)
    ]
