"""What the console's pages make of the apps' selectors: a step's chat and phases, a run's waterfall, the
steps related to a step, and counts that stay fast at millions of rows (on any changelist's queryset).

Records are read through steps.selectors, agents.selectors and accounts.selectors; the steps they filter
go through the same StepFilterSet as the REST API.
"""

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connections
from django.db.models import QuerySet

from accounts.models import Organization
from agents.models import Run
from console.charts import Span
from steps.models import Message, Step, StepMetrics, StepStatus
from steps.rendering import render_messages
from steps.selectors import run_tool_call_names, run_usage, step_queryset

RELATED_STEPS_LIMIT = 50


def is_postgres(queryset: QuerySet) -> bool:
    return connections[queryset.db].vendor == "postgresql"


# --- counts --------------------------------------------------------------------------------------


def table_estimate(model: type) -> int | None:
    """PostgreSQL's row estimate for a table (pg_class.reltuples, kept by autovacuum/ANALYZE)."""
    qs = model.objects.all()
    if not is_postgres(qs):
        return None
    with connections[qs.db].cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table])
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None


def query_estimate(queryset: QuerySet) -> int | None:
    """The planner's row estimate for a filtered queryset (EXPLAIN, nothing is read)."""
    if not is_postgres(queryset):
        return None
    try:
        plan = json.loads(queryset.order_by().values("pk").explain(format="json"))
    except Exception:  # an estimate is optional: any planner hiccup means "no estimate"
        return None
    return int(plan[0]["Plan"]["Plan Rows"])


@dataclass(slots=True)
class CountResult:
    """A row count and whether it is exact or the planner's estimate."""

    value: int
    exact: bool


def capped_count(queryset: QuerySet, *, cap: int) -> CountResult:
    """Exact up to `cap` (counting stops there); above it the planner's estimate (never below cap + 1)."""
    if not queryset.query.where:
        estimate = table_estimate(queryset.model)
        if estimate is not None and estimate > cap:
            return CountResult(estimate, exact=False)
    counted = queryset.order_by().values("pk")[: cap + 1].count()
    if counted <= cap:
        return CountResult(counted, exact=True)
    estimate = query_estimate(queryset)
    return CountResult(max(estimate or 0, cap + 1), exact=False)


# --- one step -----------------------------------------------------------------------------------


def _pretty_json(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _image_src(part: dict[str, Any]) -> str | None:
    source = part.get("source") or {}
    if source.get("type") == "base64" and source.get("media_type", "").startswith("image/"):
        return f"data:{source['media_type']};base64,{source.get('data', '')}"
    url = source.get("url") or ""
    if url.startswith(("http://", "https://", "data:image/")):
        return url
    return None


def _parts(content: Any) -> list[dict[str, Any]]:
    """Text and image parts for display: images become an <img> src (data: URL or http(s) URL)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"kind": "text", "text": content}]
    parts = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, dict) and part.get("type") == "image":
            src = _image_src(part)
            if src:
                parts.append({"kind": "image", "src": src, "media_type": part.get("source", {}).get("media_type")})
            else:
                parts.append({"kind": "text", "text": "[image]"})
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append({"kind": "text", "text": part.get("text", "")})
        else:
            parts.append({"kind": "json", "text": _pretty_json(part)})
    return parts


@dataclass(slots=True)
class ChatItem:
    """One bubble of the chat view."""

    kind: str
    role: str
    step_id: str | None
    current: bool
    parts: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    status: str = ""
    collapsed: bool = False
    json: str = ""
    call_id: str = ""
    tool_name: str = ""


def chat_items(*, messages: list[Message], step_id: str) -> list[ChatItem]:
    """Messages as chat bubbles from the typed message union (steps.rendering), the same the API returns."""
    names: dict[str, str] = {}
    items = []
    for rendered in render_messages(messages):
        kind = rendered["message_type"]
        common = {"kind": kind, "step_id": rendered["step_id"], "current": rendered["step_id"] == step_id}
        if kind == "system_message":
            items.append(ChatItem(role="system", parts=_parts(rendered["content"]), collapsed=True, **common))
        elif kind == "user_message":
            items.append(ChatItem(role="user", parts=_parts(rendered["content"]), **common))
        elif kind == "assistant_message":
            items.append(ChatItem(role="assistant", parts=_parts(rendered["content"]), **common))
        elif kind == "reasoning_message":
            title = "Reasoning summary" if rendered.get("source") == "summary" else "Reasoning"
            items.append(
                ChatItem(role="reasoning", parts=_parts(rendered["reasoning"]), collapsed=True, title=title, **common)
            )
        elif kind == "hidden_reasoning_message":
            items.append(ChatItem(role="reasoning", title=f"Reasoning {rendered['state']} by the provider", **common))
        elif kind in {"tool_call_message", "approval_request_message"}:
            call = rendered["tool_call"]
            names[call["tool_call_id"]] = call["name"]
            items.append(
                ChatItem(
                    role="tool_call",
                    json=_pretty_json(call["arguments"]),
                    call_id=call["tool_call_id"],
                    tool_name=call["name"],
                    title="Approval requested" if kind.startswith("approval") else "",
                    **common,
                )
            )
        elif kind == "tool_return_message":
            ret = rendered["tool_return"]
            parts = _parts(ret.get("func_response"))
            for stream in ("stdout", "stderr"):
                if ret.get(stream):
                    parts.append({"kind": "json", "text": f"{stream}:\n" + "".join(ret[stream])})
            items.append(
                ChatItem(
                    role="tool_return",
                    parts=parts,
                    status=ret.get("status") or "",
                    call_id=ret.get("tool_call_id") or "",
                    tool_name=names.get(ret.get("tool_call_id") or "", ""),
                    **common,
                )
            )
        elif kind == "approval_response_message":
            verdict = {True: "approved", False: "denied", None: "answered"}[rendered["approve"]]
            items.append(
                ChatItem(
                    role="approval",
                    title=f"Tool call {verdict}",
                    parts=_parts(rendered.get("reason")),
                    call_id=rendered.get("tool_call_id") or "",
                    **common,
                )
            )
    return items


def pretty_json(value: Any) -> str:
    return "" if value is None else _pretty_json(value)


def step_phases(*, metrics: StepMetrics | None) -> list[Span]:
    """A step's phases in ms from its start: preparation, waiting for the first token, streaming, tools, the rest."""
    if metrics is None or metrics.step_start_ns is None:
        return []
    origin = metrics.step_start_ns
    spans: list[Span] = []
    llm_start = metrics.llm_request_start_ns
    end_total = (metrics.step_ns or 0) / 1e6
    cursor = 0.0
    if llm_start is not None:
        start = (llm_start - origin) / 1e6
        if start > 0:
            spans.append(Span("preparation", 0, start, "queue"))
        cursor = start
        ttft = metrics.ttft_ns / 1e6 if metrics.ttft_ns is not None else None
        llm = metrics.llm_request_ns / 1e6 if metrics.llm_request_ns is not None else None
        if ttft is not None:
            spans.append(Span("waiting for first token", start, ttft, "wait"))
            if llm is not None and llm >= ttft:
                spans.append(Span("streaming the response", start + ttft, llm - ttft, "stream"))
        elif llm is not None:
            spans.append(Span("LLM request", start, llm, "llm"))
        if llm is not None:
            cursor = start + llm
    if metrics.tool_execution_ns:
        tools = metrics.tool_execution_ns / 1e6
        spans.append(Span("tool execution", cursor, tools, "tool"))
        cursor += tools
    if end_total > cursor:
        spans.append(Span("recording and the rest", cursor, end_total - cursor, "finish"))
    spans.append(Span("whole step", 0, max(end_total, cursor), "step"))
    return spans


def related_steps(*, organization: Organization, step: Step) -> dict[str, list[Step]]:
    """Other steps of the same run and of the same request (through the shared FilterSet)."""
    columns = ("id", "created_at", "status", "step_number", "attempt", "model_handle", "error_type", "run_id")
    related: dict[str, list[Step]] = {"run": [], "request": []}
    if step.run_id:
        qs = step_queryset(organization=organization, filters={"run_id": step.run_id})
        related["run"] = list(qs.only(*columns).order_by("created_at", "id")[:RELATED_STEPS_LIMIT])
    if step.request_id:
        qs = step_queryset(organization=organization, filters={"request_id": step.request_id})
        if step.run_id:
            qs = qs.exclude(run_id=step.run_id)
        related["request"] = list(qs.only(*columns).order_by("created_at", "id")[:RELATED_STEPS_LIMIT])
    return related


# --- a run ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Waterfall:
    """A run's steps (and their tool execution) on one time axis, with the run's totals."""

    spans: list[Span]
    totals: dict[str, Any]
    steps: list[Step]
    duration_ms: float | None


def run_waterfall(*, organization: Organization, run: Run, step_url: Any = None) -> Waterfall:
    """Every step of a run as a bar from its start, with the LLM call (first-token tick) and the tools under it."""
    usage = run_usage(organization=organization, run_id=run.pk)
    steps = list(
        step_queryset(organization=organization, filters={"run_id": run.pk})
        .select_related("metrics")
        .order_by("created_at", "id")
    )
    tools = run_tool_call_names(run_id=run.pk)

    def start_ns(step: Step) -> int:
        metrics = getattr(step, "metrics", None)
        if metrics is not None and metrics.step_start_ns:
            return metrics.step_start_ns
        return int(step.created_at.timestamp() * 1e9)

    origin = min((start_ns(s) for s in steps), default=0)
    spans: list[Span] = []
    end_ms = 0.0
    for step in steps:
        try:
            metrics = step.metrics
        except StepMetrics.DoesNotExist:
            metrics = None
        begin = (start_ns(step) - origin) / 1e6
        duration_ns = (metrics.step_ns if metrics else None) or step.latency_ns or 0
        if not duration_ns and step.completed_at:
            duration_ns = int((step.completed_at - step.created_at).total_seconds() * 1e9)
        duration = duration_ns / 1e6
        kind = {StepStatus.FAILED: "failed", StepStatus.CANCELLED: "cancelled"}.get(step.status, "step")
        number = step.step_number or len(spans) + 1
        label = f"step {number}" + (f" (attempt {step.attempt})" if step.attempt > 1 else "")
        detail = f"{step.status}" + (f", {step.error_type}" if step.error_type else "")
        link = step_url(step.pk) if step_url else None
        spans.append(Span(label, begin, duration, kind, link=link, detail=detail))
        if metrics and metrics.llm_request_start_ns and metrics.llm_request_ns is not None:
            llm_begin = (metrics.llm_request_start_ns - origin) / 1e6
            marker = llm_begin + metrics.ttft_ns / 1e6 if metrics.ttft_ns is not None else None
            spans.append(
                Span(
                    f"{step.model_handle or 'LLM'} call",
                    llm_begin,
                    metrics.llm_request_ns / 1e6,
                    "llm",
                    depth=1,
                    marker_ms=marker,
                    link=link,
                )
            )
            if metrics.tool_execution_ns:
                tool_begin = llm_begin + metrics.llm_request_ns / 1e6
                label = ", ".join(tools.get(step.pk, [])) or "tools"
                spans.append(Span(label, tool_begin, metrics.tool_execution_ns / 1e6, "tool", depth=1, link=link))
        end_ms = max(end_ms, begin + duration)
    totals = dict(usage["totals"])
    totals["cost_usd"] = totals.get("cost_usd") or Decimal(0)
    duration_ms = run.total_duration_ns / 1e6 if run.total_duration_ns else (end_ms or None)
    return Waterfall(spans=spans, totals=totals, steps=steps, duration_ms=duration_ms)
