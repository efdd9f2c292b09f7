"""Reads for provider traces and the request-id join: everything one request produced, in one place."""

from dataclasses import dataclass, field

from accounts.models import Organization
from agents.models import Agent, Run
from config.db import ModelRows, placeholders
from config.db_router import read_connection
from config.errors import NotFound
from steps.models import Message, Step, StepMetrics
from traces.models import ProviderTrace


def provider_traces_for_step(*, organization: Organization, step_id: str) -> list[ProviderTrace]:
    """Every attempt's provider trace of a step, oldest attempt first; an unknown step is not found."""
    if not Step.objects.filter(organization=organization, pk=step_id).exists():
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


def request_get(*, organization: Organization, request_id: str) -> RequestRecord:
    """The request-id join. Steps match on their own request_id or through their run's.

    Four indexed queries whatever the size of the organization, written by hand (building them
    through the ORM took longer than running them); not found when nothing carries the id.
    """
    org = organization.pk
    db = read_connection(Step)  # the replica where the request may read from it
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT {_RUN.columns('r')}, a.id, a.name FROM {_RUN.table} r LEFT JOIN {ModelRows(Agent).table} a "
            "ON a.id = r.agent_id WHERE r.organization_id = %s AND r.request_id = %s ORDER BY r.created_at, r.id",
            [org, request_id],
        )
        runs = []
        for row in cursor.fetchall():
            run = _RUN.load(row)
            if row[_RUN.width] is not None:
                run.agent = Agent.from_db(db.alias, _AGENT_NAME, row[_RUN.width :])
            runs.append(run)
        run_ids = [run.pk for run in runs]

        step_match, params = "s.request_id = %s", [org, request_id]
        if run_ids:
            step_match += f" OR s.run_id IN ({placeholders(run_ids)})"
            params += run_ids
        cursor.execute(
            f"SELECT {_STEP.columns('s')}, {_METRICS.columns('m')} FROM {_STEP.table} s "
            f"LEFT JOIN {_METRICS.table} m ON m.step_id = s.id "
            f"WHERE s.organization_id = %s AND ({step_match}) ORDER BY s.created_at, s.id",
            params,
        )
        steps = []
        for row in cursor.fetchall():
            step = _STEP.load(row)
            metrics = None if _METRICS.is_null(row, _STEP.width) else _METRICS.load(row, _STEP.width)
            Step.metrics.related.set_cached_value(step, metrics)  # step.metrics without another query
            steps.append(step)
        if not runs and not steps:
            raise NotFound("Nothing recorded for this request id.")
        step_ids = [step.pk for step in steps]

        matches, params = [], [org]
        if step_ids:
            matches.append(f"step_id IN ({placeholders(step_ids)})")
            params += step_ids
        if run_ids:
            matches.append(f"run_id IN ({placeholders(run_ids)})")
            params += run_ids
        cursor.execute(
            f"SELECT {_MESSAGE.columns(_MESSAGE.table)} FROM {_MESSAGE.table} WHERE organization_id = %s "
            f"AND ({' OR '.join(matches)}) ORDER BY run_id, sequence_id, id",
            params,
        )
        messages = [_MESSAGE.load(row) for row in cursor.fetchall()]

        traces = []
        if step_ids:
            cursor.execute(
                f"SELECT {_TRACE.columns(_TRACE.table)} FROM {_TRACE.table} WHERE organization_id = %s "
                f"AND step_id IN ({placeholders(step_ids)}) ORDER BY created_at, id",
                [org, *step_ids],
            )
            traces = [_TRACE.load(row) for row in cursor.fetchall()]
    return RequestRecord(request_id=request_id, runs=runs, steps=steps, messages=messages, provider_traces=traces)
