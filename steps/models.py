"""Steps (one LLM call of a run with its usage, cost and outcome), their metrics, messages and provider traces.

Field names follow the Letta step schema this service grew from.
"""

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization, Project
from agents.models import Agent, Run, StopReason
from steps.histograms import BUCKETS


def new_step_id() -> str:
    return f"step-{uuid.uuid4()}"


def new_message_id() -> str:
    return f"message-{uuid.uuid4()}"


class StepStatus(models.TextChoices):
    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepProgression(models.IntegerChoices):
    """How far a step got; kept when a step fails so the failure point is known."""

    START = 0, "START"
    STREAM_RECEIVED = 1, "STREAM_RECEIVED"
    RESPONSE_RECEIVED = 2, "RESPONSE_RECEIVED"
    STEP_LOGGED = 3, "STEP_LOGGED"
    LOGGED_TRACE = 4, "LOGGED_TRACE"
    FINISHED = 5, "FINISHED"


class Feedback(models.TextChoices):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class StepOrigin(models.TextChoices):
    AGENT_LOOP = "agent_loop"
    OTLP = "otlp"
    SEED = "seed"


class Step(models.Model):
    """One LLM call: who made it, with which model, what it used and cost, and how it ended."""

    id = models.CharField(primary_key=True, max_length=64, default=new_step_id, editable=False)
    # Composite indexes below lead with these columns, so the FKs need no index of their own.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="steps", db_index=False)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="steps")
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="steps", db_index=False
    )
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="steps")
    origin = models.CharField(max_length=32, choices=StepOrigin.choices, default=StepOrigin.AGENT_LOOP)
    step_number = models.PositiveIntegerField(null=True, blank=True, help_text="Position in the run, from 1.")
    attempt = models.PositiveSmallIntegerField(default=1, help_text="Retry attempt of this step, from 1.")

    provider_id = models.CharField(max_length=64, null=True, blank=True)
    provider_name = models.CharField(max_length=64, null=True, blank=True)
    provider_category = models.CharField(max_length=32, null=True, blank=True)
    model = models.CharField(max_length=200, null=True, blank=True)
    model_handle = models.CharField(max_length=256, null=True, blank=True)
    model_endpoint = models.CharField(max_length=500, null=True, blank=True)
    context_window_limit = models.PositiveIntegerField(null=True, blank=True)

    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_write_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens_details = models.JSONField(null=True, blank=True)
    completion_tokens_details = models.JSONField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    cost_detail = models.CharField(
        max_length=300, blank=True, default="", help_text="Why cost_usd is empty, when it is (e.g. unknown model)."
    )

    finish_reason = models.CharField(max_length=64, null=True, blank=True)
    stop_reason = models.CharField(max_length=32, choices=StopReason.choices, null=True, blank=True)
    response_id = models.CharField(max_length=200, null=True, blank=True)
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    user_id = models.CharField(max_length=200, null=True, blank=True)
    conversation_id = models.CharField(max_length=200, null=True, blank=True)
    tid = models.CharField(max_length=200, null=True, blank=True, help_text="Transaction id.")
    trace_id = models.CharField(max_length=32, null=True, blank=True)
    span_id = models.CharField(max_length=16, null=True, blank=True)
    request_id = models.CharField(max_length=128, null=True, blank=True)
    feedback = models.CharField(max_length=16, choices=Feedback.choices, null=True, blank=True)

    error_type = models.CharField(max_length=64, null=True, blank=True)
    error_data = models.JSONField(null=True, blank=True, help_text="message, traceback, details")
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    progression = models.PositiveSmallIntegerField(choices=StepProgression.choices, default=StepProgression.START)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Copied from StepMetrics by the write path, so list filters and reports need no join.
    ttft_ns = models.BigIntegerField(null=True, blank=True, help_text="Time to first token (from StepMetrics).")
    latency_ns = models.BigIntegerField(
        null=True, blank=True, help_text="LLM request duration, or the whole step's when unknown (from StepMetrics)."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "created_at", "id"], name="step_org_created"),
            models.Index(fields=["agent", "created_at", "id"], name="step_agent_created_id"),
            models.Index(fields=["request_id"], name="step_request_id"),
            models.Index(fields=["trace_id"], name="step_trace_id"),
            models.Index(fields=["status", "created_at"], name="step_status_created"),
            models.Index(fields=["error_type"], name="step_error_type", condition=Q(error_type__isnull=False)),
            # One organization's (and its projects') error types, one probe per type (the console's filter choices).
            models.Index(
                fields=["organization", "error_type", "project"],
                condition=Q(error_type__isnull=False),
                name="step_org_error_type",
            ),
            # The errors report reads only this index (index-only scan on PostgreSQL).
            models.Index(
                fields=["organization", "created_at"],
                include=["error_type", "provider_name", "model", "agent", "status", "id"],
                condition=Q(error_type__isnull=False),
                name="step_org_errors",
            ),
            models.Index(fields=["run", "created_at", "id"], name="step_run_created_id"),
            # End users are a first-class filter (deleting one user's steps, monitors split by user).
            models.Index(fields=["organization", "user_id"], condition=Q(user_id__isnull=False), name="step_org_user"),
            # The errors report's `cancelled` count (a small share of the steps: the rows are not read).
            models.Index(
                fields=["organization", "created_at"], condition=Q(status="cancelled"), name="step_org_cancelled"
            ),
        ]
        constraints = [
            # Every unique key holds created_at, the partition key on PostgreSQL. A span's step is created at the
            # span's start time, so a re-sent span still collides: OTLP ingest stays idempotent.
            models.UniqueConstraint(
                fields=["organization", "trace_id", "span_id", "created_at"],
                condition=Q(trace_id__isnull=False, span_id__isnull=False),
                name="step_unique_span",
            ),
            # A retried or resumed step gets the next attempt number; two workers can never record the same one:
            # numbers are allocated under the run's row lock, the key only backs that up at one created_at.
            models.UniqueConstraint(
                fields=["run", "step_number", "attempt", "created_at"],
                condition=Q(run__isnull=False, step_number__isnull=False),
                name="step_unique_run_attempt",
            ),
        ]

    def __str__(self) -> str:
        return self.id


class StepMetrics(models.Model):
    """Timings of one step, in nanoseconds: when it started, the LLM request, first token, tools, total."""

    # No database FK to steps (db_constraint=False): on PostgreSQL steps_step is partitioned by created_at and no
    # unique key on (id) alone can exist; children are deleted with their steps by the application.
    step = models.OneToOneField(
        Step, primary_key=True, on_delete=models.CASCADE, related_name="metrics", db_constraint=False
    )
    step_created_at = models.DateTimeField(help_text="The step's created_at: the partition key on PostgreSQL.")
    step_start_ns = models.BigIntegerField(null=True, blank=True, help_text="Unix epoch ns.")
    llm_request_start_ns = models.BigIntegerField(null=True, blank=True, help_text="Unix epoch ns.")
    llm_request_ns = models.BigIntegerField(null=True, blank=True, help_text="Duration of the LLM call.")
    ttft_ns = models.BigIntegerField(null=True, blank=True, help_text="Request start to first chunk.")
    tool_execution_ns = models.BigIntegerField(null=True, blank=True)
    step_ns = models.BigIntegerField(null=True, blank=True, help_text="Duration of the whole step.")

    class Meta:
        verbose_name_plural = "step metrics"
        constraints = [
            # The upsert's conflict target; it holds the partition key, as every unique key must on PostgreSQL.
            models.UniqueConstraint(fields=["step", "step_created_at"], name="metrics_unique_step"),
        ]

    def __str__(self) -> str:
        return f"metrics of {self.step_id}"


class MessageRole(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    APPROVAL = "approval"


class Message(models.Model):
    """One message of a conversation; `content` is a validated list of typed parts (steps.values)."""

    id = models.CharField(primary_key=True, max_length=64, default=new_message_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="messages")
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    step = models.ForeignKey(
        Step,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="messages",
        db_index=False,
        db_constraint=False,  # see StepMetrics.step
    )
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.JSONField(default=list, blank=True)
    name = models.CharField(max_length=200, null=True, blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=200, null=True, blank=True)
    tool_returns = models.JSONField(null=True, blank=True)
    sequence_id = models.BigIntegerField(help_text="Order within the run (or step when there is no run).")
    otid = models.CharField(max_length=200, null=True, blank=True, help_text="Client-side id, for idempotent sends.")
    is_err = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    step_created_at = models.DateTimeField(
        help_text="The step's created_at (the message's own without a step): the partition key on PostgreSQL."
    )

    class Meta:
        ordering = ["sequence_id"]
        indexes = [
            models.Index(fields=["step", "sequence_id"], name="message_step_seq"),
            models.Index(fields=["run", "sequence_id"], name="message_run_seq"),
        ]
        constraints = [
            # With the partition key it no longer stops two rows at different times by itself: sequence ids are
            # allocated under the run's row lock (steps.services._messages_insert, steps_record_many).
            models.UniqueConstraint(
                fields=["run", "sequence_id", "step_created_at"],
                condition=Q(run__isnull=False),
                name="message_unique_run_seq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.id}"


class ProviderTrace(models.Model):
    """What was sent to the provider and what came back (or the error), for one attempt of a step.

    Kept in its original table (it was the `traces` app's model): moving it changed no row.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="provider_traces")
    step = models.ForeignKey(
        Step, on_delete=models.CASCADE, related_name="provider_traces", db_index=False, db_constraint=False
    )  # see StepMetrics.step
    attempt = models.PositiveSmallIntegerField(default=1)
    provider = models.CharField(max_length=64)
    api = models.CharField(max_length=32, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    request_json = models.JSONField(null=True, blank=True)
    response_json = models.JSONField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error_type = models.CharField(max_length=64, null=True, blank=True)
    error_message = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    step_created_at = models.DateTimeField(help_text="The step's created_at: the partition key on PostgreSQL.")

    class Meta:
        db_table = "traces_providertrace"
        # The unique constraint's index serves lookups by step; it holds the partition key (one step has one
        # created_at, so it is as strict as (step, attempt)).
        constraints = [
            models.UniqueConstraint(fields=["step", "attempt", "step_created_at"], name="ptrace_unique_step_attempt"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} trace of {self.step_id}"


class RollupKey(models.Model):
    """What every rollup row is keyed by: organization, time bucket and the step dimensions.

    Dimensions are never NULL ('' means none) so one unique key serves the upsert on every database.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    bucket = models.DateTimeField(help_text="Start of the hour (or day), UTC.")
    project_id = models.CharField(max_length=64, blank=True, default="")
    agent_id = models.CharField(max_length=64, blank=True, default="")
    provider_name = models.CharField(max_length=64, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    model_handle = models.CharField(max_length=256, blank=True, default="")

    class Meta:
        abstract = True


class StepRollup(RollupKey):
    """Ended steps summed per time bucket and dimension; maintained by the write path (steps.rollups).

    Counts and sums are exact; latency and TTFT are log-scale histograms (steps.histograms).
    """

    steps = models.BigIntegerField(default=0)
    error_steps = models.BigIntegerField(default=0, help_text="Steps with status failed.")
    cancelled_steps = models.BigIntegerField(default=0, help_text="Steps with status cancelled (not errors).")
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.bucket:%Y-%m-%d %H:00} {self.model_handle or self.model} {self.agent_id}"


# One column per histogram bucket: summing columns is what keeps a 30-day report in milliseconds.
for _index in range(BUCKETS):
    StepRollup.add_to_class(f"latency_h{_index:02d}", models.IntegerField(default=0))
for _index in range(BUCKETS):
    StepRollup.add_to_class(f"ttft_h{_index:02d}", models.IntegerField(default=0))

ROLLUP_DIMENSIONS = ("project_id", "agent_id", "provider_name", "model", "model_handle")


class StepRollupHour(StepRollup):
    """Ended steps per UTC hour and dimension."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *ROLLUP_DIMENSIONS], name="step_rollup_hour_unique"
            )
        ]


class StepRollupDay(StepRollup):
    """Ended steps per UTC day and dimension (the hourly rollup summed; read for long ranges)."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *ROLLUP_DIMENSIONS], name="step_rollup_day_unique"
            )
        ]


class SubjectKind(models.TextChoices):
    """Whom a subject rollup row is about: the end user a step served, or its conversation."""

    USER = "user"
    CONVERSATION = "conversation"


class SubjectRollup(StepRollup):
    """Ended steps summed per time bucket, end user or conversation (`kind`, `subject_id`) and dimension: what a
    monitor split by end user or conversation reads, rather than scanning the steps every minute.

    A separate table, not two more dimensions of StepRollupHour/Day: there, every key would multiply by the
    number of users and conversations, and every usage report would read those rows. A step adds to one row per
    kind it has (its user_id, its conversation_id; neither when both are empty), with the same measures as the
    usage rollups (counts, tokens, cost, failed steps, latency and TTFT histograms). Kept by the write path
    (steps.rollups, both the per-step and the bulk variant) and rebuilt by step_rollups_rebuild like the others.
    """

    kind = models.CharField(max_length=16, choices=SubjectKind.choices)
    subject_id = models.CharField(max_length=200, help_text="The step's user_id or conversation_id.")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.bucket:%Y-%m-%d %H:00} {self.kind} {self.subject_id} {self.model_handle or self.model}"


# The subject rollups' key after the organization: kind first, so a read of one kind over a range uses the index.
SUBJECT_ROLLUP_KEY = ("kind", "bucket", "subject_id", *ROLLUP_DIMENSIONS)


class SubjectRollupHour(SubjectRollup):
    """Ended steps per UTC hour, end user or conversation, and dimension."""

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", *SUBJECT_ROLLUP_KEY], name="subject_rollup_hour_unique")
        ]


class SubjectRollupDay(SubjectRollup):
    """Ended steps per UTC day, end user or conversation, and dimension (the hourly rollup summed)."""

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", *SUBJECT_ROLLUP_KEY], name="subject_rollup_day_unique")
        ]


class ErrorRollup(RollupKey):
    """Ended steps with an error_type, per time bucket, error type and dimension (the errors report).

    Exact: the count, the first and last created_at, and the greatest step id in byte order (the
    report's example) combine across rows and segments without loss.
    """

    error_type = models.CharField(max_length=64)
    count = models.BigIntegerField(default=0)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    example_step_id = models.CharField(max_length=64, help_text="The greatest step id (byte order).")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.bucket:%Y-%m-%d %H:00} {self.error_type} {self.model_handle or self.model} ({self.count})"


ERROR_ROLLUP_KEY = ("error_type", *ROLLUP_DIMENSIONS)


class ErrorRollupHour(ErrorRollup):
    """Errors per UTC hour, error type and dimension."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *ERROR_ROLLUP_KEY], name="error_rollup_hour_unique"
            )
        ]


class ErrorRollupDay(ErrorRollup):
    """Errors per UTC day, error type and dimension."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *ERROR_ROLLUP_KEY], name="error_rollup_day_unique"
            )
        ]


class RetentionRun(models.Model):
    """One run of the retention task (steps.retention): when, which policies, how many rows it removed.

    Kept so an operator can answer "what did retention delete, and when" without reading worker logs."""

    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    purge_rollups = models.BooleanField(default=False, help_text="Whether rollup rows older than the cutoff went too.")
    policies = models.JSONField(default=list, blank=True, help_text="[{organization, project, days, cutoff}, ...]")
    steps_removed = models.BigIntegerField(default=0)
    metrics_removed = models.BigIntegerField(default=0)
    messages_removed = models.BigIntegerField(default=0)
    provider_traces_removed = models.BigIntegerField(default=0)
    runs_removed = models.BigIntegerField(default=0)
    rollup_rows_removed = models.BigIntegerField(default=0)
    partitions_dropped = models.JSONField(
        default=list, blank=True, help_text="Whole partitions dropped (PostgreSQL): [{lower, upper, rows}, ...]."
    )

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"retention {self.started_at:%Y-%m-%d %H:%M} ({self.steps_removed} steps)"


class DeletionStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def new_deletion_id() -> str:
    return f"deletion-{uuid.uuid4()}"


class DeletionJob(models.Model):
    """A deletion of the steps matching a filter (steps.deletion), resumable: `cursor` is the greatest step id
    already handled, and each batch moves it in the same transaction that deletes the rows and subtracts them
    from the rollups, so a crashed worker's job goes on where it stopped and nothing is subtracted twice."""

    id = models.CharField(primary_key=True, max_length=64, default=new_deletion_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="deletion_jobs")
    filters = models.JSONField(default=dict, help_text="The GET /v1/steps filters, {name: [values]}.")
    project_scope = models.CharField(max_length=64, blank=True, default="", help_text="The key's project, if any.")
    status = models.CharField(max_length=16, choices=DeletionStatus.choices, default=DeletionStatus.PENDING)
    cursor = models.CharField(max_length=64, blank=True, default="", help_text="Greatest step id handled.")
    steps_total = models.BigIntegerField(default=0, help_text="Steps matching when the job was created.")
    steps_deleted = models.BigIntegerField(default=0)
    messages_deleted = models.BigIntegerField(default=0)
    provider_traces_deleted = models.BigIntegerField(default=0)
    runs_deleted = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Times a worker started (or resumed) the job; the sweep stops resuming at the limit."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, help_text="Last start, batch or failure.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "updated_at"], name="deletion_status_updated")]

    def __str__(self) -> str:
        return self.id
