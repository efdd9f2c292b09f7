"""The one write path for steps: start, progress, finish, fail, cancel; bulk recording; messages; feedback and tags.

The agent loop records step by step (step_start, then step_finish / step_fail), the OTLP ingest in bulk
(steps_record_many). Both take every row's values from the same rules (steps.recording, steps.provider_traces,
steps.rollups); only the I/O differs: one statement per row here, multi-row inserts or COPY there. Each call is
atomic; finishing or failing a step twice (a retried task, a re-sent span) changes nothing the second time.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Case, F, Max, Q, QuerySet, Value, When
from django.db.models.base import ModelState
from django.utils import timezone
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from accounts.models import Organization, Project
from accounts.selectors import project_scope
from agents.models import Agent, Run, RunStatus, StopReason
from config.db import advisory_xact_lock
from config.errors import ApplicationError, NotFound
from steps.models import (
    Feedback,
    Message,
    ProviderTrace,
    Step,
    StepMetrics,
    StepOrigin,
    StepProgression,
    StepStatus,
    new_message_id,
)
from steps.provider_traces import (
    PROVIDER_TRACE_COPY_COLUMNS,
    ProviderTraceIn,
    provider_trace_copy_rows,
    provider_trace_record,
    provider_traces_record_many,
)
from steps.recording import (
    METRIC_FIELDS,
    StepMetricsIn,
    error_data_from,
    failure_values,
    message_sequences,
    message_values,
    metrics_values,
    reported_progression,
    run_step_counts,
    step_links,
    success_values,
)
from steps.rollups import step_rollup_add, steps_rollups_add
from steps.values import MessageIn, Usage, validate_message

_FINAL = {StepStatus.SUCCESS, StepStatus.FAILED, StepStatus.CANCELLED}


class StepConflict(ApplicationError):
    """The step already ended in another way than the caller asks for."""

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra=extra, status_code=409)


def _validate_all(messages: Iterable[MessageIn | dict[str, Any]]) -> list[MessageIn]:
    validated = []
    for index, message in enumerate(messages):
        try:
            validated.append(validate_message(message))
        except ApplicationError as exc:
            exc.extra["message_index"] = index
            raise
    return validated


def step_start(
    *,
    organization: Organization,
    step_id: str | None = None,
    agent: Agent | None = None,
    run: Run | None = None,
    project: Project | None = None,
    origin: str = StepOrigin.AGENT_LOOP,
    step_number: int | None = None,
    attempt: int = 1,
    provider_name: str | None = None,
    provider_id: str | None = None,
    provider_category: str | None = None,
    model: str | None = None,
    model_handle: str | None = None,
    model_endpoint: str | None = None,
    context_window_limit: int | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    tid: str | None = None,
    user_id: str | None = None,
    conversation_id: str | None = None,
    tags: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> Step:
    """Create a pending step at progression START. With a known `step_id` the existing step is returned.

    A step of a run with a step number takes the run's row lock first and refuses (IntegrityError) an attempt
    already recorded: on PostgreSQL the unique key holds the partition key (created_at), so the lock, not the key
    alone, keeps (run, step_number, attempt) unique."""
    with transaction.atomic():
        if step_id is not None:
            # The id is unique only with created_at on PostgreSQL: serialize its insert.
            advisory_xact_lock(f"step:{step_id}")
            existing = Step.objects.filter(pk=step_id).first()
            if existing is not None:
                if existing.organization_id != organization.pk:
                    raise StepConflict("Step id is already taken.", extra={"step_id": "is already taken"})
                return existing
        if run is not None and step_number is not None:
            Run.objects.select_for_update().filter(pk=run.pk).values_list("pk", flat=True).first()
            if Step.objects.filter(run=run, step_number=step_number, attempt=attempt).exists():
                raise IntegrityError(
                    f"step_unique_run_attempt: run {run.pk} step {step_number} attempt {attempt} is already recorded"
                )
        return _step_insert(
            organization=organization,
            step_id=step_id,
            run=run,
            agent=agent,
            links=step_links(
                run=run,
                agent=agent,
                project=project,
                request_id=request_id,
                user_id=user_id,
                conversation_id=conversation_id,
            ),
            values={
                "origin": origin,
                "step_number": step_number,
                "attempt": attempt,
                "provider_name": provider_name,
                "provider_id": provider_id,
                "provider_category": provider_category,
                "model": model,
                "model_handle": model_handle,
                "model_endpoint": model_endpoint,
                "context_window_limit": context_window_limit,
                "trace_id": trace_id,
                "span_id": span_id,
                "tid": tid,
                "tags": sorted(set(tags)),
                "metadata": metadata or {},
                "created_at": created_at or timezone.now(),
            },
        )


def _step_insert(
    *,
    organization: Organization,
    step_id: str | None,
    run: Run | None,
    agent: Agent | None,
    links: dict[str, Any],
    values: dict[str, Any],
) -> Step:
    step = Step(
        organization=organization, **links, **values, status=StepStatus.PENDING, progression=StepProgression.START
    )
    # The objects stay cached on the step: its outcome's messages name the run and the agent.
    if run is not None:
        step.run = run
        if agent is None and run.agent_id is not None:
            agent = run.agent
    if agent is not None:
        step.agent = agent
    if step_id is None:
        step.save(force_insert=True)
        return step
    step.id = step_id
    try:
        with transaction.atomic():
            step.save(force_insert=True)
    except IntegrityError:  # a concurrent retry inserted it first: that step is the one
        return Step.objects.get(pk=step_id, organization=organization)
    return step


def step_progress(*, step: Step, progression: StepProgression) -> Step:
    """Record that a pending step reached `progression`; progression never moves backwards."""
    Step.objects.filter(pk=step.pk, status=StepStatus.PENDING, progression__lt=progression).update(
        progression=progression
    )
    step.progression = max(step.progression, progression)
    return step


def _end(step: Step, values: dict[str, Any]) -> Step | None:
    """Write a step's outcome if it is still pending: the check and the write are one statement.

    Returns the step with the values applied, or None when it had already ended (the caller decides).
    """
    if not Step.objects.filter(pk=step.pk, status=StepStatus.PENDING).update(**values):
        return None
    for name, value in values.items():
        setattr(step, name, value)
    return step


def _save_metrics(step: Step, metrics: StepMetricsIn | None) -> None:
    if metrics is None:
        return
    row = StepMetrics(step=step, step_created_at=step.created_at, **metrics_values(metrics))
    # One statement whether or not a row exists (an upsert, not a read then a write). The conflict target holds the
    # partition key, as the unique key must on PostgreSQL.
    StepMetrics.objects.bulk_create(
        [row], update_conflicts=True, unique_fields=["step", "step_created_at"], update_fields=METRIC_FIELDS
    )


def _record_outcome(
    step: Step, *, metrics: StepMetricsIn | None, provider_trace: ProviderTraceIn | None, messages: list[MessageIn]
) -> None:
    """What finishing and failing share: metrics, rollups, provider trace, messages and the run's step count."""
    _save_metrics(step, metrics)
    step_rollup_add(step=step)  # usage/errors rollups (steps.rollups); once per step, as it ends
    if provider_trace is not None:
        provider_trace_record(step=step, trace=provider_trace)
    last_sequence = None
    for run_id, added in run_step_counts([step]).items():
        last_sequence = _run_count_steps(run_id, added)
    if messages:
        _messages_insert(
            organization_id=step.organization_id, messages=messages, run=step.run, step=step, agent=step.agent,
            last_sequence=last_sequence,
        )  # fmt: skip


def _run_count_steps(run_id: str, added: int) -> int:
    """Count steps on their run and return the run's last message sequence id, in one locking statement."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Run._meta.db_table} SET step_count = step_count + %s WHERE id = %s "
            f"RETURNING (SELECT MAX(sequence_id) FROM {Message._meta.db_table} WHERE run_id = %s)",
            [added, run_id, run_id],
        )
        row = cursor.fetchone()
    return (row[0] if row else None) or 0


@transaction.atomic
def step_finish(
    *,
    step: Step,
    usage: Usage,
    finish_reason: str | None = None,
    stop_reason: str | None = None,
    response_id: str | None = None,
    metrics: StepMetricsIn | None = None,
    messages: Sequence[MessageIn | dict[str, Any]] = (),
    provider_trace: ProviderTraceIn | None = None,
    model: str | None = None,
    completed_at: datetime | None = None,
) -> Step:
    """End a step successfully with its usage, cost, metrics, messages and provider trace.

    Idempotent: finishing an already successful step returns it unchanged. Finishing a failed or
    cancelled step is a conflict. Invalid messages reject the whole call and nothing is written.
    """
    validated = _validate_all(messages)
    values = success_values(
        step=step, usage=usage, model=model, finish_reason=finish_reason, stop_reason=stop_reason,
        response_id=response_id, metrics=metrics, completed_at=completed_at or timezone.now(),
    )  # fmt: skip
    ended = _end(step, values)
    if ended is None:
        current = Step.objects.get(pk=step.pk)
        if current.status == StepStatus.SUCCESS:
            return current
        raise StepConflict(f"Step already ended as {current.status}.")
    _record_outcome(ended, metrics=metrics, provider_trace=provider_trace, messages=validated)
    return ended


@transaction.atomic
def step_fail(
    *,
    step: Step,
    error_type: str,
    message: str,
    exc: BaseException | None = None,
    traceback: str | None = None,
    details: dict[str, Any] | None = None,
    stop_reason: str | None = StopReason.ERROR,
    status: StepStatus = StepStatus.FAILED,
    usage: Usage | None = None,
    metrics: StepMetricsIn | None = None,
    messages: Sequence[MessageIn | dict[str, Any]] = (),
    provider_trace: ProviderTraceIn | None = None,
    completed_at: datetime | None = None,
) -> Step:
    """End a step as failed (or cancelled) with error_type and error_data; the progression reached is kept.

    Idempotent: failing a step that already ended returns it unchanged.
    """
    validated = _validate_all(messages)
    error_data = error_data_from(message=message, exc=exc, details=details)
    if traceback is not None:
        error_data["traceback"] = traceback
    values = failure_values(
        step=step, error_type=error_type, error_data=error_data, stop_reason=stop_reason, status=status, usage=usage,
        metrics=metrics, completed_at=completed_at or timezone.now(),
    )  # fmt: skip
    ended = _end(step, values)  # the progression reached is left as it is
    if ended is None:
        return Step.objects.get(pk=step.pk)
    _record_outcome(ended, metrics=metrics, provider_trace=provider_trace, messages=validated)
    return ended


def step_cancel(*, step: Step, message: str = "Run cancelled.", **kwargs: Any) -> Step:
    """End a step as cancelled (the run was cancelled while it was in flight)."""
    return step_fail(
        step=step, error_type="cancelled", message=message, stop_reason=StopReason.CANCELLED,
        status=StepStatus.CANCELLED, **kwargs,
    )  # fmt: skip


def _messages_insert(
    *,
    organization_id: str,
    messages: Sequence[MessageIn],
    run: Run | None,
    step: Step | None,
    agent: Agent | None,
    last_sequence: int | None = None,
) -> list[Message]:
    # Sequence ids are allocated under a lock on the run (or step) row, so concurrent writers never collide.
    # `last_sequence` is given by a caller that already holds the run's row lock (see _run_count_steps).
    last, last_without_run = 0, 0
    if last_sequence is not None:
        last = last_sequence
    elif run is not None:
        with connection.cursor() as cursor:
            # SQLite has no FOR UPDATE; its write transactions (IMMEDIATE) lock the database instead.
            lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
            cursor.execute(
                f"SELECT (SELECT MAX(sequence_id) FROM {Message._meta.db_table} WHERE run_id = %s) "
                f"FROM {Run._meta.db_table} WHERE id = %s{lock}",
                [run.pk, run.pk],
            )
            row = cursor.fetchone()
        last = (row[0] if row else None) or 0
    elif step is not None:
        last_without_run = Message.objects.filter(step=step).aggregate(m=Max("sequence_id"))["m"] or 0
    run_id = run.pk if run is not None else None
    # The partition key: the step's time, or the message's own (now) without a step.
    step_created_at = step.created_at if step is not None else timezone.now()
    numbered = message_sequences(
        items=[(None, run_id, messages)],
        last_by_run={run_id: last} if run_id is not None else {},
        last_without_run=last_without_run,
    )
    rows = [
        Message(
            organization_id=organization_id, agent=agent, run=run, step=step, **message_values(message),
            sequence_id=sequence, step_created_at=step_created_at,
        )
        for _, message, sequence in numbered
    ]  # fmt: skip
    return Message.objects.bulk_create(rows)


@transaction.atomic
def messages_create(
    *,
    organization: Organization,
    messages: Sequence[MessageIn | dict[str, Any]],
    run: Run | None = None,
    step: Step | None = None,
    agent: Agent | None = None,
) -> list[Message]:
    """Validate and store messages (e.g. a run's input) in order; all or nothing."""
    validated = _validate_all(messages)
    if step is not None:
        run = run or step.run
        agent = agent or step.agent
    if run is not None:
        agent = agent or run.agent
    return _messages_insert(organization_id=organization.pk, messages=validated, run=run, step=step, agent=agent)


@transaction.atomic
def step_set_feedback(
    *,
    organization: Organization,
    step_id: str,
    feedback: str | None = None,
    set_feedback: bool = False,
    add_tags: Sequence[str] = (),
    remove_tags: Sequence[str] = (),
) -> Step:
    """Set or clear feedback and add/remove tags; tags are never replaced wholesale."""
    step = (
        Step.objects.select_for_update()
        .filter(pk=step_id, organization=organization, **project_scope(organization))
        .first()
    )
    if step is None:
        raise NotFound("Step not found.")
    if set_feedback:
        if feedback is not None and feedback not in Feedback.values:
            raise ApplicationError("Invalid feedback.", extra={"feedback": f"must be one of {Feedback.values} or null"})
        step.feedback = feedback
    tags = (set(step.tags or []) | set(add_tags)) - set(remove_tags)
    step.tags = sorted(tags)
    step.save(update_fields=["feedback", "tags"])
    return step


def steps_fail_pending(
    *,
    steps: QuerySet[Step],
    error_type: str,
    message: str,
    exc: BaseException | None = None,
    stop_reason: str | None = None,
) -> int:
    """Fail every still-pending step of `steps` (nothing will finish them); each keeps its progression.

    Returns how many this call failed (a step another writer ended meanwhile is left as it is).
    """
    failed = 0
    for step in steps.filter(status=StepStatus.PENDING).iterator():
        ended = step_fail(step=step, error_type=error_type, message=message, exc=exc, stop_reason=stop_reason)
        failed += ended.error_type == error_type
    return failed


def steps_fail_stale(*, older_than: timedelta) -> int:
    """Fail every step nothing will finish: pending after `older_than`, or pending in a run that already ended."""
    ended = Q(run__status__in=[RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
    return steps_fail_pending(
        steps=Step.objects.filter(Q(created_at__lt=timezone.now() - older_than) | ended),
        error_type="worker_lost",
        message=f"Step was still pending after {older_than} or after its run ended; its worker stopped before "
        "finishing it.",
        stop_reason=StopReason.ERROR,
    )


# --- bulk recording (OTLP ingest) ---------------------------------------------------------------------------------
# The per-step functions above cost several queries per step; an ingest batch of hundreds of spans records its
# finished steps here in a constant number of queries, with the same validation, usage, cost, metrics, messages,
# provider-trace redaction and rollups.


@dataclass(slots=True)
class StepRecord:
    """A step that already ended (e.g. an ingested span), recorded in one go by `steps_record_many`.

    `error_type` set means the step failed (`error_message`, `traceback`, `error_details` go to error_data).
    """

    trace_id: str
    span_id: str
    usage: Usage
    created_at: datetime
    completed_at: datetime
    agent: Agent | None = None
    run: Run | None = None
    project: Project | None = None
    origin: str = StepOrigin.OTLP
    provider_name: str | None = None
    model: str | None = None
    model_handle: str | None = None
    model_endpoint: str | None = None
    request_id: str | None = None
    user_id: str | None = None
    conversation_id: str | None = None
    tags: Sequence[str] = ()
    metadata: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None
    response_id: str | None = None
    metrics: StepMetricsIn | None = None
    messages: Sequence[MessageIn | dict[str, Any]] = ()
    provider_trace: ProviderTraceIn | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    error_details: dict[str, Any] | None = None


def _field_defaults(model: type) -> tuple[dict[str, Any], list[Any]]:
    static, per_instance = {}, []
    for f in model._meta.concrete_fields:
        if f.has_default() and callable(f.default):
            per_instance.append(f)
        else:
            static[f.attname] = f.get_default()
    return static, per_instance


_STEP_STATIC_DEFAULTS, _STEP_CALLABLE_DEFAULTS = _field_defaults(Step)


def _new_step(**values: Any) -> Step:
    """An unsaved Step from attnames (`agent_id`, not `agent`), for the bulk path.

    The same instance `Step(**values)` gives, built without Model.__init__ (~0.1 ms per step, too much for ingest
    batches): every field gets its default, then the values.
    """
    step = Step.__new__(Step)
    step._state = ModelState()
    state = step.__dict__
    state.update(_STEP_STATIC_DEFAULTS)
    for f in _STEP_CALLABLE_DEFAULTS:
        if f.attname not in values:
            state[f.attname] = f.get_default()
    state.update(values)
    return step


def _step_from_record(organization: Organization, record: StepRecord) -> Step:
    """The step of a record, with the values the per-step path would give it (steps.recording)."""
    failed = record.error_type is not None
    step = _new_step(
        organization_id=organization.pk,
        **step_links(
            run=record.run, agent=record.agent, project=record.project, request_id=record.request_id,
            user_id=record.user_id, conversation_id=record.conversation_id,
        ),
        origin=record.origin,
        provider_name=record.provider_name,
        model=record.model,
        model_handle=record.model_handle,
        model_endpoint=record.model_endpoint,
        trace_id=record.trace_id,
        span_id=record.span_id,
        tags=sorted(set(record.tags)),
        metadata=record.metadata or {},
        created_at=record.created_at,
        response_id=record.response_id,
        status=StepStatus.PENDING,
        # A failed call keeps the progression it reached: a response with usage arrived, or nothing did.
        progression=reported_progression(record.usage) if failed else StepProgression.START,
    )  # fmt: skip
    if failed:
        error_data = error_data_from(message=record.error_message or record.error_type, details=record.error_details)
        error_data["traceback"] = record.traceback
        values = failure_values(
            step=step, error_type=record.error_type, error_data=error_data,
            stop_reason=record.stop_reason or StopReason.ERROR, status=StepStatus.FAILED, usage=record.usage,
            metrics=record.metrics, completed_at=record.completed_at,
        )  # fmt: skip
    else:
        values = success_values(
            step=step, usage=record.usage, model=record.model, finish_reason=record.finish_reason,
            stop_reason=record.stop_reason, response_id=record.response_id, metrics=record.metrics,
            completed_at=record.completed_at,
        )  # fmt: skip
    step.__dict__.update(values)
    return step


_MESSAGE_COLUMNS = (
    "id", "organization_id", "agent_id", "run_id", "step_id", "role", "content", "name", "tool_calls",
    "tool_call_id", "tool_returns", "otid", "is_err", "sequence_id", "created_at", "step_created_at",
)  # fmt: skip
_JSON_MESSAGE_COLUMNS = {"content", "tool_calls", "tool_returns"}
_message_list_adapter: TypeAdapter[list[MessageIn]] = TypeAdapter(list[MessageIn])


def _validate_records_messages(records: Sequence[StepRecord]) -> list[list[MessageIn]]:
    """Every record's messages as MessageIn; dicts are validated (in one pass), MessageIn are taken as built.

    A MessageIn was validated when it was made (validate_message or the model itself), so it is not validated
    again. When the one-pass validation fails, the per-message path raises the error naming the message.
    """
    raw = [m for record in records for m in record.messages if not isinstance(m, MessageIn)]
    if not raw:
        return [list(record.messages) for record in records]  # type: ignore[arg-type]
    try:
        checked = iter(_message_list_adapter.validate_python(raw))
    except PydanticValidationError:
        return [_validate_all(record.messages) for record in records]
    return [[m if isinstance(m, MessageIn) else next(checked) for m in record.messages] for record in records]


def _copy_rows(model: type, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """COPY rows into `model`'s table (PostgreSQL); values already in their database form (JSON as text)."""
    qn = connection.ops.quote_name
    sql = f"COPY {qn(model._meta.db_table)} ({', '.join(qn(c) for c in columns)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


def _write_rows(model: type, columns: Sequence[str], rows: Sequence[Sequence[Any]], fallback) -> None:
    if not rows:
        return
    if connection.vendor == "postgresql":
        _copy_rows(model, columns, rows)
    else:
        fallback()


def _copy_steps(steps: Sequence[Step]) -> bool:
    """COPY new steps (PostgreSQL). False when not possible: another vendor, or a concurrent writer stored one
    of these spans first (the savepoint is rolled back and the caller takes the conflict-aware path)."""
    if connection.vendor != "postgresql":
        return False
    concrete = Step._meta.concrete_fields
    attnames = [f.attname for f in concrete]
    json_at = [i for i, f in enumerate(concrete) if f.get_internal_type() == "JSONField"]

    def row(step: Step) -> list[Any]:
        values = [getattr(step, name) for name in attnames]
        for i in json_at:
            if values[i] is not None:
                values[i] = json.dumps(values[i])
        return [v.value if isinstance(v, Enum) else v for v in values]

    try:
        with transaction.atomic():
            _copy_rows(Step, [f.column for f in concrete], (row(step) for step in steps))
    except IntegrityError:
        return False
    return True


def _message_row(organization_id: str, step: Step, message: MessageIn, sequence: int, now: datetime) -> dict:
    """A Message row of a bulk write, by column (message_values, as the per-step path stores them)."""
    return {
        "id": new_message_id(), "organization_id": organization_id, "agent_id": step.agent_id, "run_id": step.run_id,
        "step_id": step.pk, **message_values(message), "sequence_id": sequence, "created_at": now,
        "step_created_at": step.created_at,
    }  # fmt: skip


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


@transaction.atomic
def steps_record_many(*, organization: Organization, records: Sequence[StepRecord]) -> list[Step]:
    """Record ended steps in bulk; returns the steps this call inserted.

    Idempotent on (organization, trace_id, span_id): a record whose span is already stored (or is inserted by a
    concurrent call) is skipped with its metrics, messages and provider trace. Invalid messages reject the whole
    call and nothing is written. Runs' step counts and message sequence ids are kept as the per-step path keeps them.
    On PostgreSQL the rows go in with COPY; elsewhere (and after losing an insert race) with bulk_create.
    """
    if not records:
        return []
    validated = _validate_records_messages(records)
    existing = set(
        Step.objects.filter(
            organization=organization,
            trace_id__in={r.trace_id for r in records},
            span_id__in={r.span_id for r in records},
        ).values_list("trace_id", "span_id")
    )
    pending: dict[tuple[str, str], tuple[Step, StepRecord, list[MessageIn]]] = {}
    # Key order: two transactions inserting overlapping spans take the unique-index locks in the same order.
    for record, messages in sorted(zip(records, validated, strict=True), key=lambda i: (i[0].trace_id, i[0].span_id)):
        key = (record.trace_id, record.span_id)
        if key in existing or key in pending:
            continue
        pending[key] = (_step_from_record(organization, record), record, messages)
    if not pending:
        return []
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Message and trace texts are ~2 KB each: lz4 compresses them several times faster than pglz (when
            # the server has it; readers need nothing).
            cursor.execute(
                "SELECT set_config('default_toast_compression', 'lz4', true) FROM pg_settings "
                "WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
            )
    steps = [step for step, _, _ in pending.values()]
    if not _copy_steps(steps):
        # ignore_conflicts: a concurrent request carrying the same spans may commit first; its rows win.
        Step.objects.bulk_create(steps, ignore_conflicts=True)
        inserted_ids = set(Step.objects.filter(pk__in=[s.pk for s in steps]).values_list("pk", flat=True))
        steps = [step for step in steps if step.pk in inserted_ids]
    inserted_ids = {step.pk for step in steps}
    done = [(step, record, messages) for step, record, messages in pending.values() if step.pk in inserted_ids]
    now = timezone.now()

    metrics = [(step, metrics_values(record.metrics)) for step, record, _ in done if record.metrics is not None]
    _write_rows(
        StepMetrics,
        ["step_id", "step_created_at", *METRIC_FIELDS],
        [(step.pk, step.created_at, *(values[name] for name in METRIC_FIELDS)) for step, values in metrics],
        lambda: StepMetrics.objects.bulk_create(
            [StepMetrics(step=step, step_created_at=step.created_at, **values) for step, values in metrics]
        ),
    )
    traces = [(step, record.provider_trace) for step, record, _ in done if record.provider_trace is not None]
    _write_rows(
        ProviderTrace,
        list(PROVIDER_TRACE_COPY_COLUMNS),
        provider_trace_copy_rows(items=traces, created_at=now),
        lambda: provider_traces_record_many(items=traces),
    )

    # Messages: sequence ids allocated under the runs' row locks (taken in id order), as in _messages_insert.
    run_ids = sorted({step.run_id for step, _, messages in done if messages and step.run_id})
    last_by_run: dict[str, int] = {}
    if run_ids:
        list(Run.objects.select_for_update().filter(pk__in=run_ids).order_by("pk").values_list("pk", flat=True))
        last_by_run = dict(
            Message.objects.filter(run_id__in=run_ids).values_list("run_id").annotate(m=Max("sequence_id"))
        )
    in_order = sorted(done, key=lambda item: (item[0].created_at, item[0].pk))
    rows = [
        _message_row(organization.pk, step, message, sequence, now)
        for step, message, sequence in message_sequences(
            items=[(step, step.run_id, messages) for step, _, messages in in_order], last_by_run=last_by_run
        )
    ]
    _write_rows(
        Message,
        list(_MESSAGE_COLUMNS),
        [tuple(_json_text(row[c]) if c in _JSON_MESSAGE_COLUMNS else row[c] for c in _MESSAGE_COLUMNS) for row in rows],
        lambda: Message.objects.bulk_create([Message(**row) for row in rows]),
    )

    per_run = run_step_counts(step for step, _, _ in done)
    if per_run:  # one UPDATE for every run, in id order (the same lock order as the message allocation above)
        Run.objects.filter(pk__in=sorted(per_run)).update(
            step_count=F("step_count")
            + Case(*(When(pk=run_id, then=Value(n)) for run_id, n in per_run.items()), default=Value(0))
        )
    # Last: the rollup rows are shared by every concurrent writer, so their locks are held for the shortest time.
    steps_rollups_add(steps=[step for step, _, _ in done])
    return [step for step, _, _ in done]
