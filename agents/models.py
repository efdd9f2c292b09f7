"""Agents (what to run) and runs (one request to an agent, made of steps)."""

import uuid

from django.db import models
from django.db.models import Q

from accounts.models import Organization, Project


def new_agent_id() -> str:
    return f"agent-{uuid.uuid4()}"


def new_run_id() -> str:
    return f"run-{uuid.uuid4()}"


class StopReason(models.TextChoices):
    """Why a run (and the step that ended it) stopped."""

    END_TURN = "end_turn"
    ERROR = "error"
    LLM_API_ERROR = "llm_api_error"
    INVALID_LLM_RESPONSE = "invalid_llm_response"
    INVALID_TOOL_CALL = "invalid_tool_call"
    MAX_STEPS = "max_steps"
    MAX_TOKENS_EXCEEDED = "max_tokens_exceeded"
    NO_TOOL_CALL = "no_tool_call"
    TOOL_RULE = "tool_rule"
    CANCELLED = "cancelled"
    REQUIRES_APPROVAL = "requires_approval"


class Agent(models.Model):
    """An agent definition: model, system prompt, tools and LLM settings. Deleting keeps its history."""

    id = models.CharField(primary_key=True, max_length=64, default=new_agent_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="agents")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="agents")
    name = models.CharField(max_length=200)
    model_handle = models.CharField(max_length=200, help_text="provider/model, e.g. openai/gpt-4o-mini")
    system = models.TextField(blank=True, default="")
    tools = models.JSONField(default=list, blank=True, help_text="Tool names from the tool registry.")
    temperature = models.FloatField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    context_window = models.PositiveIntegerField(null=True, blank=True)
    max_steps = models.PositiveIntegerField(default=10)
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"], condition=Q(deleted_at__isnull=True), name="agent_unique_live_name"
            )
        ]
        indexes = [models.Index(fields=["organization", "created_at"], name="agent_org_created")]

    def __str__(self) -> str:
        return self.name


class RunStatus(models.TextChoices):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused", "Paused (awaiting approval)"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Run(models.Model):
    """One request to an agent: the steps it took, how it stopped, and how long it took."""

    id = models.CharField(primary_key=True, max_length=64, default=new_run_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="runs")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    request_id = models.CharField(max_length=128, db_index=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.CREATED)
    stop_reason = models.CharField(max_length=32, choices=StopReason.choices, null=True, blank=True)
    background = models.BooleanField(default=False)
    ttft_ns = models.BigIntegerField(null=True, blank=True)
    total_duration_ns = models.BigIntegerField(null=True, blank=True)
    step_count = models.PositiveIntegerField(default=0)
    user_id = models.CharField(max_length=200, null=True, blank=True)
    conversation_id = models.CharField(max_length=200, null=True, blank=True)
    trace_id = models.CharField(max_length=32, null=True, blank=True, db_index=True)
    span_id = models.CharField(max_length=16, null=True, blank=True)
    origin = models.CharField(max_length=32, default="agent_loop")
    metadata = models.JSONField(default=dict, blank=True)
    error_data = models.JSONField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # The lease of the worker executing the run: it claims the row with a conditional UPDATE and touches
    # heartbeat_at every STEPLENS_RUN_HEARTBEAT_SECONDS; a heartbeat older than STEPLENS_STALE_RUN_SECONDS means
    # that worker is gone and the run may be taken over (at most STEPLENS_RUN_MAX_ATTEMPTS executions).
    lease = models.CharField(max_length=64, null=True, blank=True, help_text="Who executes the run now.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1, help_text="Execution attempt: +1 per lost worker.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "created_at"], name="run_org_created"),
            models.Index(fields=["agent", "created_at"], name="run_agent_created"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "trace_id", "span_id"],
                condition=Q(trace_id__isnull=False, span_id__isnull=False),
                name="run_unique_span",
            )
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def is_finished(self) -> bool:
        return self.status in {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}

    @property
    def error(self) -> dict[str, str] | None:
        """Why the run failed, as every run answer shows it: `{type, message}` from `error_data`, else None.

        `type` is the step's error type (`authentication`, `rate_limit`, `internal_error` …). The message was
        redacted before it was stored (provider error bodies can echo a key), so no credential appears here.
        """
        data = self.error_data
        if not isinstance(data, dict) or not (data.get("error_type") or data.get("message")):
            return None
        return {"type": str(data.get("error_type") or "error"), "message": str(data.get("message") or "")}
