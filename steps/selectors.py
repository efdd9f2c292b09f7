"""Reads for steps: every query is scoped to one organization; another organization's object is not found."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import Count, Q, QuerySet, Sum
from django.http import QueryDict

from accounts.models import Organization
from accounts.selectors import project_scope
from agents.models import Agent, Run
from config.db import ModelRows, placeholders
from config.db_router import read_connection
from config.errors import NotFound
from steps.filters import step_filterset
from steps.models import Message, ProviderTrace, Step, StepMetrics, StepRollupDay, StepStatus
from steps.pagination import DEFAULT_LIMIT, Page, expanded_keyset_page, keyset_page
from steps.rendering import render_message, render_messages

USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def step_get(*, organization: Organization, step_id: str) -> Step:
    """One step of `organization` with its metrics; another organization's step is not found."""
    step = (
        Step.objects.select_related("metrics", "agent", "run")
        .filter(organization=organization, pk=step_id, **project_scope(organization))
        .first()
    )
    if step is None:
        raise NotFound("Step not found.")
    return step


def step_queryset(*, organization: Organization, filters: Mapping[str, Any] | QueryDict | None = None) -> QuerySet:
    """`organization`'s steps narrowed by the step filters (steps.filters); invalid filters are a 400."""
    return step_filterset(organization=organization, params=filters or {}).qs


def step_list(
    *,
    organization: Organization,
    filters: Mapping[str, Any] | QueryDict | None = None,
    order: str = "desc",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """A page of steps, newest first (or oldest with order=asc), keyed on (created_at, id)."""
    queryset = step_queryset(organization=organization, filters=filters)
    return keyset_page(
        queryset=queryset, kind="steps", fields=("created_at", "id"), types=(datetime, str), order=order,
        limit=limit, cursor=cursor,
    )  # fmt: skip


def step_messages(
    *,
    organization: Organization,
    step_id: str,
    order: str = "asc",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """A page of the messages a step produced (or was given) as the typed message union, in sequence order.

    `limit` counts what is returned: one stored message may render as several typed messages (reasoning, text,
    tool calls), and a page may stop inside one; the cursor goes on from there.
    """
    step = Step.objects.filter(organization=organization, pk=step_id, **project_scope(organization)).only("pk").first()
    if step is None:
        raise NotFound("Step not found.")
    queryset = Message.objects.filter(step=step)
    return expanded_keyset_page(
        queryset=queryset, kind=f"message-items:{step_id}", fields=("sequence_id", "id"), types=(int, str),
        expand=render_message, order=order, limit=limit, cursor=cursor,
    )  # fmt: skip


def run_messages(*, run_id: str, role: str | None = None, newest_first: bool = False) -> QuerySet[Message]:
    """The messages stored for a run's steps (only `role`'s, when given), in sequence order or newest first."""
    messages = Message.objects.filter(run_id=run_id)
    if role is not None:
        messages = messages.filter(role=role)
    return messages.order_by("-sequence_id" if newest_first else "sequence_id")


def step_metrics_get(*, organization: Organization, step_id: str) -> StepMetrics:
    """A step's timings; a step that has none yet gets an empty (all null) StepMetrics, not a 404."""
    step = step_get(organization=organization, step_id=step_id)
    try:
        return step.metrics
    except StepMetrics.DoesNotExist:
        return StepMetrics(step=step)


def run_usage_totals(*, run_id: str) -> dict[str, Any]:
    """A run's step count, failed steps, token sums and cost, summed by the database (every attempt counts)."""
    return Step.objects.filter(run_id=run_id).aggregate(
        steps=Count("pk"),
        failed_steps=Count("pk", filter=Q(status=StepStatus.FAILED)),
        cost_usd=Sum("cost_usd"),
        **{name: Sum(name) for name in USAGE_FIELDS},
    )


def run_usage(*, organization: Organization, run_id: str) -> dict[str, Any]:
    """The usage of every step of a run (however many), with the run's totals summed by the database."""
    run = Run.objects.filter(organization=organization, pk=run_id, **project_scope(organization))
    run = run.only("pk", "agent_id", "request_id").first()
    if run is None:
        raise NotFound("Run not found.")
    steps = Step.objects.filter(run=run)
    totals = run_usage_totals(run_id=run.pk)
    columns = ["id", "step_number", "attempt", "status", "provider_name", "model", "model_handle", *USAGE_FIELDS]
    columns += ["cost_usd", "ttft_ns", "latency_ns", "created_at"]
    rows = list(steps.order_by("created_at", "id").values(*columns))
    return {"run_id": run.pk, "agent_id": run.agent_id, "request_id": run.request_id, "totals": totals, "steps": rows}


# --- provider traces and the request-id join: everything one request produced, in one place -----


def provider_traces_for_step(*, organization: Organization, step_id: str) -> list[ProviderTrace]:
    """Every attempt's provider trace of a step, oldest attempt first; an unknown step is not found."""
    if not Step.objects.filter(organization=organization, pk=step_id, **project_scope(organization)).exists():
        raise NotFound("Step not found.")
    return list(ProviderTrace.objects.filter(organization=organization, step_id=step_id).order_by("attempt"))


def provider_trace_get(*, organization: Organization, step_id: str, attempt: int | None = None) -> ProviderTrace:
    """A step's provider trace: the given attempt, or the last one."""
    traces = provider_traces_for_step(organization=organization, step_id=step_id)
    if attempt is not None:
        traces = [t for t in traces if t.attempt == attempt]
    if not traces:
        raise NotFound("No provider trace for this step.")
    return traces[-1]


@dataclass(slots=True)
class RequestRecord:
    """Everything recorded for one request id: runs, steps (with metrics), messages, traces and errors."""

    request_id: str
    runs: list[Run] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    provider_traces: list[ProviderTrace] = field(default_factory=list)


_RUN, _STEP, _METRICS = ModelRows(Run), ModelRows(Step), ModelRows(StepMetrics)
_MESSAGE, _TRACE = ModelRows(Message), ModelRows(ProviderTrace)
_AGENT_NAME = ["id", "name"]


class _Statements:
    """Runs a read's statements. On PostgreSQL, `generic` statements (those that cannot name a partition, such as
    the request join's runs, steps and messages by request or run id) are prepared once per connection and run
    with a generic plan: planning them over every partition and its twenty indexes cost more than running them
    (2.1 of 2.4 ms for the request join's steps at 1M steps, growing with the partitions); a generic plan is made
    once. `planned` statements (those matching the partition key) are planned each time, so PostgreSQL reads only
    the partitions they name.

    A prepared statement outlives the transaction on its connection; with connection pooling in transaction
    mode (`DISABLE_SERVER_SIDE_CURSORS`, as Django asks for PgBouncer) every statement is planned each time.
    Use inside a transaction (the plan mode is set for it only)."""

    def __init__(self, db: BaseDatabaseWrapper) -> None:
        self.db = db
        # Where queries are logged (DEBUG, a test capturing them) the log needs the SQL text, which Django reads
        # from a client-side cursor only: planned each time there.
        self.prepare = (
            db.vendor == "postgresql"
            and not db.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
            and not db.queries_logged
        )

    def __enter__(self) -> "_Statements":
        self.cursor = self.db.cursor()
        self.prepared: CursorWrapper | None = None
        if self.prepare:
            self.cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")  # only prepared statements use it
            # Django turns psycopg's statement preparation off (prepare_threshold None); on for this cursor only
            # (Django's own cursors bind on the client and never prepare). What was prepared stays for next time.
            self.threshold = self.db.connection.prepare_threshold
            self.db.connection.prepare_threshold = _NEVER_BY_COUNT
            raw = _prepared_cursor_class()(self.db.connection)
            self.prepared = self.db.make_cursor(raw)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.prepared is not None:
            self.prepared.close()
            if self.db.connection is not None:  # None: closed after an error
                self.db.connection.prepare_threshold = self.threshold
        self.cursor.close()

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """`column` matching one of `values`, for a `generic` statement: an array parameter keeps its text the
        same whatever the number of values (one prepared statement)."""
        if self.prepared is not None:
            return f"{column} = ANY(%s)", [list(values)]
        return f"{column} IN ({placeholders(values)})", list(values)

    def generic(self, sql: str, params: list[Any]) -> list[tuple]:
        cursor = self.prepared or self.cursor
        cursor.execute(sql, params)
        return cursor.fetchall()

    def planned(self, sql: str, params: list[Any]) -> list[tuple]:
        self.cursor.execute(sql, params)
        return self.cursor.fetchall()


_NEVER_BY_COUNT = 1 << 30  # psycopg prepares a statement run this often; ours ask for it explicitly
_PREPARED_CURSOR: type | None = None


def _prepared_cursor_class() -> type:
    """A psycopg cursor binding on the server and preparing every statement it runs (Django's default cursor binds
    on the client, which cannot prepare)."""
    global _PREPARED_CURSOR
    if _PREPARED_CURSOR is None:
        import psycopg

        class PreparedCursor(psycopg.Cursor):
            def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: Any = None):
                return super().execute(query, params, prepare=True, binary=binary)

        _PREPARED_CURSOR = PreparedCursor
    return _PREPARED_CURSOR


def request_get(*, organization: Organization, request_id: str) -> RequestRecord:
    """The request-id join. Steps match on their own request_id or through their run's.

    Five indexed queries whatever the size of the organization, written by hand (building them
    through the ORM took longer than running them), in one read transaction; not found when nothing
    carries the id. No time bound narrows the runs, steps and messages: an ingested run's steps may
    start before it, and a step may carry the request id without the run (see `_Statements`).
    """
    org = organization.pk
    db = read_connection(Step)  # the replica where the request may read from it
    with transaction.atomic(using=db.alias), _Statements(db) as q:
        runs = []
        for row in q.generic(
            f"SELECT {_RUN.columns('r')}, a.id, a.name FROM {_RUN.table} r LEFT JOIN {ModelRows(Agent).table} a "
            "ON a.id = r.agent_id WHERE r.organization_id = %s AND r.request_id = %s ORDER BY r.created_at, r.id",
            [org, request_id],
        ):
            run = _RUN.load(row)
            if row[_RUN.width] is not None:
                run.agent = Agent.from_db(db.alias, _AGENT_NAME, row[_RUN.width :])
            runs.append(run)
        run_ids = [run.pk for run in runs]

        step_match, params = "s.request_id = %s", [org, request_id]
        if run_ids:
            in_runs, run_params = q.any_of("s.run_id", run_ids)
            step_match += f" OR {in_runs}"
            params += run_params
        # No join to the metrics here: on PostgreSQL it probes every metrics partition per step, and the planner
        # costs that high enough to start parallel workers (~20 ms). The metrics are read next, by partition key.
        steps = [
            _STEP.load(row)
            for row in q.generic(
                f"SELECT {_STEP.columns('s')} FROM {_STEP.table} s "
                f"WHERE s.organization_id = %s AND ({step_match}) ORDER BY s.created_at, s.id",
                params,
            )
        ]
        if scoped := project_scope(organization):  # a project-limited API key reads only its project's records
            runs = [run for run in runs if run.project_id == scoped["project_id"]]
            run_ids = [run.pk for run in runs]
            steps = [step for step in steps if step.project_id == scoped["project_id"]]
        if not runs and not steps:
            raise NotFound("Nothing recorded for this request id.")
        step_ids = [step.pk for step in steps]
        # The children carry their step's created_at (the partition key): matching it too reads only the
        # partitions the steps are in.
        step_times = [db.ops.adapt_datetimefield_value(t) for t in sorted({step.created_at for step in steps})]
        in_steps = f"step_id IN ({placeholders(step_ids)}) AND step_created_at IN ({placeholders(step_times)})"

        metrics: dict[str, StepMetrics] = {}
        if step_ids:
            for row in q.planned(
                f"SELECT {_METRICS.columns(_METRICS.table)} FROM {_METRICS.table} WHERE {in_steps}",
                [*step_ids, *step_times],
            ):
                loaded = _METRICS.load(row)
                metrics[loaded.step_id] = loaded
        for step in steps:
            Step.metrics.related.set_cached_value(step, metrics.get(step.pk))  # step.metrics without another query

        # A message without a step is in the partition of its own time, which nothing bounds: by run id, generic.
        matches, params = [], [org]
        for column, ids in (("step_id", step_ids), ("run_id", run_ids)):
            if ids:
                match, match_params = q.any_of(column, ids)
                matches.append(match)
                params += match_params
        messages = [
            _MESSAGE.load(row)
            for row in q.generic(
                f"SELECT {_MESSAGE.columns(_MESSAGE.table)} FROM {_MESSAGE.table} WHERE organization_id = %s "
                f"AND ({' OR '.join(matches)}) ORDER BY run_id, sequence_id, id",
                params,
            )
        ]

        traces = []
        if step_ids:
            traces = [
                _TRACE.load(row)
                for row in q.planned(
                    f"SELECT {_TRACE.columns(_TRACE.table)} FROM {_TRACE.table} WHERE organization_id = %s "
                    f"AND {in_steps} ORDER BY created_at, id",
                    [org, *step_ids, *step_times],
                )
            ]
    return RequestRecord(request_id=request_id, runs=runs, steps=steps, messages=messages, provider_traces=traces)


# --- across organizations (the console lists every organization's steps) ---------------------------


def organization_with_most_steps() -> Organization | None:
    """The organization with the most recorded steps (from the small day rollup), else the first by name."""
    busiest = StepRollupDay.objects.values("organization_id").annotate(n=Sum("steps")).order_by("-n").first()
    if busiest is not None:
        found = Organization.objects.filter(pk=busiest["organization_id"]).first()
        if found is not None:
            return found
    return Organization.objects.order_by("name").first()


def step_dimension_values(
    *, column: str, organization_id: str | None = None, project_ids: Sequence[str] | None = None
) -> list[str]:
    """Distinct provider/model/model_handle values, read from the day rollup (thousands of rows, not millions);
    only those of `project_ids` when given (a person limited to some projects sees no other project's names)."""
    rows = StepRollupDay.objects.exclude(**{column: ""})
    if organization_id:
        rows = rows.filter(organization_id=organization_id)
    if project_ids:
        rows = rows.filter(project_id__in=list(project_ids))
    return list(rows.order_by(column).values_list(column, flat=True).distinct()[:200])


def step_error_types(*, organization_id: str | None = None, project_ids: Sequence[str] | None = None) -> list[str]:
    """Distinct error types (of `organization_id` and of `project_ids` only, when given), at most 200.

    On PostgreSQL a loose index scan: one probe of each partition per type, whatever the number of steps, over
    (organization, error_type, project) for an organization (the projects checked in the index), else over
    (error_type). Elsewhere a DISTINCT."""
    base = Step.objects.all()
    if organization_id:
        base = base.filter(organization_id=organization_id)
    if project_ids:
        base = base.filter(project_id__in=list(project_ids))
    db = connections[base.db]
    if db.vendor != "postgresql" or (project_ids and not organization_id):
        distinct = base.filter(error_type__isnull=False).order_by("error_type").values_list("error_type", flat=True)
        return list(distinct.distinct()[:200])
    table = Step._meta.db_table
    # Planning the two probes over every partition costs more than running them: a generic plan, made once.
    with transaction.atomic(using=db.alias), _Statements(db) as q:
        where, params = "", []
        if organization_id:
            where, params = "organization_id = %s AND ", [organization_id]
            if project_ids:
                in_projects, project_params = q.any_of("project_id", project_ids)
                where += f"{in_projects} AND "
                params += project_params
        sql = f"""
            WITH RECURSIVE types(t) AS (
                (SELECT error_type FROM {table} WHERE {where}error_type IS NOT NULL ORDER BY error_type LIMIT 1)
                UNION ALL
                SELECT (SELECT error_type FROM {table} WHERE {where}error_type > types.t ORDER BY error_type LIMIT 1)
                FROM types WHERE types.t IS NOT NULL
            )
            SELECT t FROM types WHERE t IS NOT NULL LIMIT 200
        """
        return [row[0] for row in q.generic(sql, params * 2)]


def step_organization(*, step_id: str) -> Organization | None:
    """The organization a step belongs to (the console spans organizations; the selectors take one)."""
    return Organization.objects.filter(steps__pk=step_id).first()


def step_conversation(*, step: Step, limit: int) -> tuple[list[Message], bool]:
    """The messages up to and including this step's: the run's history when there is a run, else the step's own.

    Returns (at most `limit` messages in sequence order, whether older messages were left out).
    """
    if step.run_id:
        last = Message.objects.filter(step_id=step.pk).order_by("-sequence_id").values_list("sequence_id", flat=True)
        last_seq = last.first()
        base = Message.objects.filter(run_id=step.run_id)
        if last_seq is not None:
            base = base.filter(sequence_id__lte=last_seq)
        else:
            # A failed step produced nothing: its context is what the run had before it started.
            base = base.filter(created_at__lte=step.created_at)
    else:
        base = Message.objects.filter(step_id=step.pk)
    messages = list(base.order_by("-sequence_id")[: limit + 1])
    truncated = len(messages) > limit
    return list(reversed(messages[:limit])), truncated


def run_tool_call_names(*, run_id: str) -> dict[str, list[str]]:
    """Tool names called by each step of a run (from its assistant and approval messages), by step id."""
    names: dict[str, list[str]] = {}
    for message in Message.objects.filter(run_id=run_id, role__in=["assistant", "approval"]).only(
        "step_id", "tool_calls", "content", "role", "name", "tool_call_id"
    ):
        for item in render_messages([message]):
            if item["message_type"] in {"tool_call_message", "approval_request_message"}:
                names.setdefault(item["step_id"] or "", []).append(item["tool_call"]["name"])
    return names
