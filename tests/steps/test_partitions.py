"""Time-partitioned storage on PostgreSQL (steps.partitions, steps 0012): windowed queries touch only their
partitions, the migration keeps existing rows, partitions are made ahead and rows move out of the DEFAULT
partition, OTLP ingest stays idempotent, (run, step_number, attempt) stays unique, retention drops whole
partitions. All PostgreSQL-only: SQLite is not partitioned (one test checks that it stays a no-op there)."""

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import IntegrityError, connection, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import load_backend
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.models import Run
from steps import services
from steps.models import Message, ProviderTrace, RetentionRun, Step, StepMetrics
from steps.partitions import (
    PARTITIONED_TABLES,
    default_partition_name,
    is_partitioned,
    partition_floor,
    partition_interval,
    partition_name,
    partitions_detach,
    partitions_drop,
    partitions_drop_detached,
    partitions_ensure,
    partitions_list,
)
from steps.retention import retention_apply
from steps.services import StepMetricsIn
from steps.tasks import ensure_partitions
from steps.values import Usage
from tests.factories import AgentFactory, MessageFactory, OrganizationFactory, ProjectFactory

TABLES = [table for table, _ in PARTITIONED_TABLES]


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _where(table: str, pk_column: str, pk: object) -> str:
    """The partition (relation name) that holds a row."""
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT tableoid::regclass::text FROM "{table}" WHERE "{pk_column}" = %s', [pk])
        return cursor.fetchone()[0]


def _step(organization, *, when: datetime, agent=None, error: bool = False, project=None, run=None, **kwargs) -> Step:
    """One ended step through the real write path (rollups, metrics, provider trace, messages)."""
    agent = agent or AgentFactory(organization=organization, project=project)
    step = services.step_start(
        organization=organization, agent=agent, project=project, run=run, provider_name="openai",
        model="gpt-4o-mini", model_handle="openai/gpt-4o-mini", created_at=when, **kwargs,
    )  # fmt: skip
    metrics = StepMetricsIn(ttft_ns=80_000_000, llm_request_ns=600_000_000)
    if error:
        return services.step_fail(step=step, error_type="rate_limit", message="429", metrics=metrics)
    step = services.step_finish(step=step, usage=Usage(prompt_tokens=100, completion_tokens=10), metrics=metrics)
    services.messages_create(
        organization=organization, step=step, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    )
    return step


def _relations(plan: object) -> set[str]:
    found: set[str] = set()
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            found.add(plan["Relation Name"])
        for value in plan.values():
            found |= _relations(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= _relations(value)
    return found


def _touched_partitions(sql: str) -> set[str]:
    """The partitions of the four tables a query reads, from EXPLAIN (FORMAT JSON): pruned ones are absent."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
        raw = cursor.fetchone()[0]
    plan = json.loads(raw) if isinstance(raw, str) else raw
    return {name for name in _relations(plan) if any(name.startswith(f"{table}_") for table in TABLES)}


def test_sqlite_is_not_partitioned_and_ensure_is_a_no_op(db):
    if connection.vendor == "postgresql":
        assert is_partitioned()
        return
    assert not is_partitioned()
    assert partitions_ensure(timezone.now() - timedelta(days=30), timezone.now()) == []
    assert partitions_list() == []


def test_the_four_tables_are_partitioned_with_a_default_partition(postgres, db):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname = ANY(%s) OR relname = ANY(%s)",
            [TABLES, [default_partition_name(t) for t in TABLES]],
        )
        kinds = dict(cursor.fetchall())
    assert {t: kinds[t] for t in TABLES} == dict.fromkeys(TABLES, "p")
    assert all(kinds[default_partition_name(t)] == "r" for t in TABLES)
    # The migration made the current interval and the ones ahead, for every table with the same bounds.
    now = timezone.now()
    bounds = {t: {(p.lower, p.upper) for p in partitions_list() if p.table == t and not p.is_default} for t in TABLES}
    assert all(b == bounds["steps_step"] for b in bounds.values())
    assert (partition_floor(now), partition_floor(now) + partition_interval()) in bounds["steps_step"]


def test_beat_task_creates_partitions_ahead_and_is_idempotent(postgres, db):
    now = timezone.now()
    with override_settings(STEPLENS_PARTITION_AHEAD=8):
        created = ensure_partitions.apply().get()
        assert ensure_partitions.apply().get() == []
    assert settings.CELERY_BEAT_SCHEDULE["ensure-partitions"]["task"] == ensure_partitions.name
    far = partition_floor(now) + 8 * partition_interval()
    assert {partition_name(t, far) for t in TABLES} <= set(created)
    names = {p.name for p in partitions_list()}
    assert all(partition_name(t, far) in names for t in TABLES)


def test_partitions_ensure_moves_rows_out_of_the_default_partition(postgres, db, organization):
    now = timezone.now()
    old = now - timedelta(days=200)  # before any partition the migration made: lands in DEFAULT
    step = _step(organization, when=old)
    message = Message.objects.get(step=step)
    assert _where("steps_step", "id", step.pk) == default_partition_name("steps_step")
    assert _where("steps_stepmetrics", "step_id", step.pk) == default_partition_name("steps_stepmetrics")

    created = partitions_ensure(old - timedelta(days=1), old + timedelta(days=1))
    assert created and partitions_ensure(old - timedelta(days=1), old + timedelta(days=1)) == []
    lower = partition_floor(old)
    assert _where("steps_step", "id", step.pk) == partition_name("steps_step", lower)
    assert _where("steps_stepmetrics", "step_id", step.pk) == partition_name("steps_stepmetrics", lower)
    assert _where("steps_message", "id", message.pk) == partition_name("steps_message", lower)
    # Nothing lost or doubled, and the children still join their step.
    assert Step.objects.filter(pk=step.pk).count() == 1
    assert StepMetrics.objects.get(step=step).step_created_at == step.created_at
    assert Message.objects.filter(step=step).count() == 1


def test_windowed_queries_touch_only_the_partitions_of_their_window(postgres, db, organization, api_client):
    now = timezone.now()
    partitions_ensure(now - timedelta(days=70), now)
    agent = AgentFactory(organization=organization)
    for days in range(1, 70, 3):
        _step(organization, agent=agent, when=now - timedelta(days=days, minutes=7), error=days % 2 == 0)
    # An unaligned window of about two weeks, three weeks back: partitions on both sides hold rows.
    start = (now - timedelta(days=35)).replace(minute=13, second=5, microsecond=0)
    end = (now - timedelta(days=21)).replace(minute=47, second=2, microsecond=0)
    window = {
        p.name
        for p in partitions_list()
        if not p.is_default and p.lower < end and start < p.upper and p.table in TABLES
    }
    outside = {p.name for p in partitions_list(exact=True) if p.table == "steps_step" and p.rows} - window
    assert outside, "rows outside the window, or the check proves nothing"

    requests = [
        ("/v1/steps", {"start": _iso(start), "end": _iso(end), "agent_id": agent.pk}),
        ("/v1/usage", {"group_by": "model,day", "start": _iso(start), "end": _iso(end)}),
        ("/v1/errors", {"start": _iso(start), "end": _iso(end)}),
    ]
    for path, params in requests:
        with CaptureQueriesContext(connection) as queries:
            response = api_client.get(path, params)
        assert response.status_code == 200, response.content
        windowed = [q["sql"] for q in queries if "steps_step" in q["sql"] and q["sql"].lstrip().startswith("SELECT")]
        assert windowed, f"{path} read no steps"
        read: set[str] = set()
        for sql in windowed:
            touched = _touched_partitions(sql)
            assert touched <= window, f"{path}: {sorted(touched - window)} outside the window in {sql}"
            read |= touched
        assert read, f"{path} read no partition at all"


def test_otlp_ingest_of_an_old_span_sent_twice_stores_one_step(postgres, db, api_client):
    from tests.traces.test_ingest import _agent_trace, _json_body, _post, _spans

    document = _json_body(_spans(_agent_trace))
    shift = 21 * 86_400 * 10**9  # three weeks back: into a partition of its own, not the current one
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("startTimeUnixNano", "endTimeUnixNano"):
                    span[key] = str(int(span[key]) - shift)
    partitions_ensure(timezone.now() - timedelta(days=28), timezone.now())
    body = json.dumps(document).encode()
    for _ in range(2):
        response = _post(api_client, body, "application/json")
        assert response.status_code == 200, response.content
    steps = list(Step.objects.all())
    assert len(steps) == 2 and len({(s.trace_id, s.span_id) for s in steps}) == 2
    assert Message.objects.count() == Message.objects.values("step_id", "sequence_id", "run_id").distinct().count()
    assert ProviderTrace.objects.count() == 2
    lower = partition_floor(steps[0].created_at)
    assert lower < partition_floor(timezone.now())
    assert _where("steps_step", "id", steps[0].pk) == partition_name("steps_step", lower)


@pytest.mark.django_db(transaction=True)
def test_two_connections_recording_the_same_run_step_attempt_store_one(postgres):
    organization = OrganizationFactory()
    agent = AgentFactory(organization=organization)
    run = Run.objects.create(organization=organization, agent=agent, request_id="req-race")
    barrier, outcomes = threading.Barrier(2), []

    def record(offset_days: int) -> None:
        try:
            barrier.wait(timeout=10)
            services.step_start(
                organization=organization, agent=agent, run=run, step_number=1, attempt=1,
                created_at=timezone.now() - timedelta(days=offset_days),  # different created_at: the key alone
            )  # fmt: skip                                               # would let both in
            outcomes.append("stored")
        except IntegrityError:
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=record, args=(days,)) for days in (0, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["refused", "stored"]
    assert Step.objects.filter(run=run, step_number=1, attempt=1).count() == 1


def test_retention_drops_whole_partitions_past_every_retention_and_batches_the_rest(postgres, db, organization):
    now = timezone.now()
    partitions_ensure(now - timedelta(days=90), now)
    organization.retention_days = 30
    organization.save()
    keep_forever = OrganizationFactory()
    steps = [_step(organization, when=now - timedelta(days=d)) for d in (80, 75, 60, 45, 31, 20, 2)]
    kept_old = _step(keep_forever, when=now - timedelta(days=58))  # holds its partition
    pending = services.step_start(organization=organization, created_at=now - timedelta(days=52))  # holds its own
    cutoff = now - timedelta(days=30)

    record = retention_apply(now=now)

    dropped = {
        (datetime.fromisoformat(d["lower"]), datetime.fromisoformat(d["upper"])) for d in record.partitions_dropped
    }
    assert dropped, record.partitions_dropped
    names = {p.name for p in partitions_list()}
    for lower, upper in dropped:
        assert upper <= cutoff
        assert not any(partition_name(t, lower) in names for t in TABLES)  # all four tables, same bounds
        assert not (lower <= kept_old.created_at < upper) and not (lower <= pending.created_at < upper)
    assert Step.objects.filter(pk=kept_old.pk).exists()
    # Partitions or batches (the pending step's partition was kept; the batches removed the step): no step of
    # the organization past its retention is left.
    assert not Step.objects.filter(organization=organization, created_at__lt=cutoff).exists()
    assert Step.objects.filter(organization=organization).count() == 2  # 20 and 2 days old
    removed = [s.pk for s in steps if s.created_at < cutoff]
    assert record.steps_removed == len(removed) + 1  # and the pending one
    assert not StepMetrics.objects.filter(step_id__in=removed).exists()
    assert not Message.objects.filter(step_id__in=removed).exists()
    assert record.messages_removed >= len(removed) and record.metrics_removed == len(removed)
    stored = RetentionRun.objects.get(pk=record.pk)
    assert stored.partitions_dropped == record.partitions_dropped
    by_drop = sum(d["rows"]["steps_step"] for d in record.partitions_dropped)
    assert 0 < by_drop <= len(removed)


def test_retention_drop_records_exactly_the_rows_dropped_and_removes_the_runs_the_drop_left_empty(
    postgres, db, organization
):
    now = timezone.now()
    partitions_ensure(now - timedelta(days=90), now)
    organization.retention_days = 30
    organization.save()
    gone = Run.objects.create(organization=organization, request_id="req-gone")
    Run.objects.filter(pk=gone.pk).update(created_at=now - timedelta(days=62))
    for days in (60, 61):  # its only steps: in a partition that is dropped
        _step(organization, when=now - timedelta(days=days), run=gone)
    # A step-less message of that run in a partition that stays: it goes with the run.
    services.messages_create(
        organization=organization, run=gone, messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    )
    mixed = Run.objects.create(organization=organization, request_id="req-mixed")
    Run.objects.filter(pk=mixed.pk).update(created_at=now - timedelta(days=62))
    _step(organization, when=now - timedelta(days=60), run=mixed)
    recent = _step(organization, when=now - timedelta(days=5), run=mixed)
    before = {p.name: p.rows for p in partitions_list(exact=True)}
    models = (Step, StepMetrics, Message, ProviderTrace)
    totals = {model: model.objects.count() for model in models}

    record = retention_apply(now=now)

    assert record.partitions_dropped
    for dropped in record.partitions_dropped:
        lower = datetime.fromisoformat(dropped["lower"])
        assert dropped["rows"] == {table: before[partition_name(table, lower)] for table in TABLES}
    removed = {model: totals[model] - model.objects.count() for model in models}
    assert (record.steps_removed, record.metrics_removed, record.messages_removed, record.provider_traces_removed) == (
        removed[Step],
        removed[StepMetrics],
        removed[Message],
        removed[ProviderTrace],
    )
    assert removed[Step] == 3 and removed[Message] == 4  # the steps' messages and the run's step-less one
    assert list(Step.objects.values_list("pk", flat=True)) == [recent.pk]
    assert set(Run.objects.values_list("pk", flat=True)) == {mixed.pk}
    assert record.runs_removed == 1 and not Message.objects.filter(run_id=gone.pk).exists()
    assert RetentionRun.objects.get(pk=record.pk).messages_removed == record.messages_removed


def test_a_step_less_message_of_a_project_that_keeps_longer_holds_its_partition(postgres, db, organization):
    """Whose step-less messages sit in a partition is read through their runs only where it matters (an
    organization with a project of its own retention): such a message keeps its partition, another does not."""
    now = timezone.now()
    partitions_ensure(now - timedelta(days=90), now)
    organization.retention_days = 30
    organization.save()
    longer = ProjectFactory(organization=organization, retention_days=365)
    held_run = Run.objects.create(organization=organization, project=longer, request_id="req-held")
    held = MessageFactory(step=None, run=held_run, organization=organization, step_created_at=now - timedelta(days=60))
    _step(organization, when=now - timedelta(days=60))
    other_run = Run.objects.create(organization=organization, request_id="req-other")
    other = MessageFactory(
        step=None, run=other_run, organization=organization, step_created_at=now - timedelta(days=75)
    )
    _step(organization, when=now - timedelta(days=75))

    record = retention_apply(now=now)

    dropped = {datetime.fromisoformat(d["lower"]) for d in record.partitions_dropped}
    assert partition_floor(now - timedelta(days=75)) in dropped
    assert partition_floor(now - timedelta(days=60)) not in dropped
    assert Message.objects.filter(pk=held.pk).exists() and not Message.objects.filter(pk=other.pk).exists()
    assert not Step.objects.filter(organization=organization, created_at__lt=now - timedelta(days=30)).exists()


@pytest.mark.django_db(transaction=True)
def test_a_partition_drop_waiting_on_a_write_lock_gives_up_and_drops_nothing(postgres):
    """While another transaction writes into one of the partitions, the drop waits at most lock_timeout_ms, then
    leaves all four for a later run; once the write is done, the drop goes through and counts the late row too."""
    organization = OrganizationFactory()
    when = timezone.now() - timedelta(days=70)
    lower = partition_floor(when)
    upper = lower + partition_interval()
    partitions_ensure(lower, upper)
    _step(organization, when=when)
    other = load_backend(connection.settings_dict["ENGINE"]).DatabaseWrapper(
        {**connection.settings_dict}, alias="partition_writer"
    )
    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                "INSERT INTO steps_message (id, organization_id, role, content, sequence_id, is_err, created_at, "
                "step_created_at) VALUES ('msg-late', %s, 'user', '[]', 1, false, now(), %s)",
                [organization.pk, when],
            )
            assert partitions_drop(lower, upper, lock_timeout_ms=200) is None
            assert {partition_name(t, lower) for t in TABLES} <= {p.name for p in partitions_list()}
            cursor.execute("COMMIT")
    finally:
        other.close()

    dropped = partitions_drop(lower, upper, lock_timeout_ms=2000)

    assert dropped is not None
    assert dropped.rows == {"steps_step": 1, "steps_stepmetrics": 1, "steps_message": 2, "traces_providertrace": 0}
    assert not {partition_name(t, lower) for t in TABLES} & {p.name for p in partitions_list()}


def test_partitions_detached_by_a_run_that_died_before_dropping_them_are_counted_and_dropped_by_the_next(
    postgres, db, organization
):
    """partitions_drop detaches (a short lock on the parents), then counts and drops. A retention run that dies in
    between leaves detached tables, out of every query: the next run counts them, drops them and records them."""
    now = timezone.now()
    when = now - timedelta(days=70)
    lower = partition_floor(when)
    upper = lower + partition_interval()
    partitions_ensure(lower, upper + partition_interval())
    old = [_step(organization, when=when + timedelta(minutes=i)) for i in range(3)]
    kept = _step(organization, when=upper + timedelta(hours=1))
    names = {p.table: p.name for p in partitions_list() if p.lower == lower}

    assert partitions_detach(names, lock_timeout_ms=2000) == names  # ... and the process dies here

    assert not {p.name for p in partitions_list()} & set(names.values())
    assert not Step.objects.filter(pk__in=[s.pk for s in old]).exists()  # out of every query already
    assert Step.objects.filter(pk=kept.pk).exists()
    record = retention_apply(now=now)  # keep forever: nothing else is past a retention

    assert record.partitions_dropped == [
        {"lower": lower.isoformat(), "upper": upper.isoformat(),
         "rows": {"steps_step": 3, "steps_stepmetrics": 3, "steps_message": 3, "traces_providertrace": 0}},
    ]  # fmt: skip
    assert (record.steps_removed, record.metrics_removed, record.messages_removed) == (3, 3, 3)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", [list(names.values())])
        assert cursor.fetchone()[0] == 0
    assert partitions_drop_detached() == []  # nothing left over
    assert Step.objects.filter(pk=kept.pk).exists()


# -- migrate an existing database with rows ----------------------------------------------------------------------


@pytest.fixture
def fresh_database(postgres, transactional_db):
    """A connection to an empty PostgreSQL database of its own (the test database is already migrated)."""
    name = f"partition_mig_{uuid.uuid4().hex[:8]}"
    with connection._nodb_cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    # A connection made here: reachable as connections[alias] (what the migration code uses) but not in the
    # settings, so the test framework treats it as a dynamically created connection, which it allows.
    alias = "partition_migration"
    target = load_backend(connection.settings_dict["ENGINE"]).DatabaseWrapper(
        {**connection.settings_dict, "NAME": name}, alias=alias
    )
    connections[alias] = target
    try:
        yield target
    finally:
        target.close()
        del connections[alias]
        with connection._nodb_cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_partitions_an_existing_database_and_keeps_its_rows(fresh_database):
    target = fresh_database
    executor = MigrationExecutor(target)
    executor.migrate([("steps", "0010_deletion_job")])
    when = datetime(2026, 6, 3, 12, 30, tzinfo=UTC)
    with target.cursor() as cursor:
        cursor.execute(
            "INSERT INTO accounts_organization (id, name, created_at) VALUES ('org-1', 'o', %s)",
            [when],
        )
        for i in range(3):
            created = when - timedelta(days=9 * i)
            cursor.execute(
                "INSERT INTO steps_step (id, organization_id, origin, attempt, cost_detail, tags, metadata, status, "
                "progression, created_at, trace_id, span_id) VALUES (%s, 'org-1', 'otlp', 1, '', '[]', '{}', "
                "'success', 5, %s, %s, %s)",
                [f"step-{i}", created, f"{i:032x}", f"{i:016x}"],
            )
            cursor.execute("INSERT INTO steps_stepmetrics (step_id, step_ns) VALUES (%s, 1000)", [f"step-{i}"])
            cursor.execute(
                "INSERT INTO steps_message (id, organization_id, step_id, role, content, sequence_id, is_err, "
                "created_at) VALUES (%s, 'org-1', %s, 'user', '[]', 1, false, %s)",
                [f"message-{i}", f"step-{i}", when],
            )
            cursor.execute(
                "INSERT INTO traces_providertrace (organization_id, step_id, attempt, provider, api, model, "
                "created_at) VALUES ('org-1', %s, 1, 'openai', '', '', %s)",
                [f"step-{i}", when],
            )
        cursor.execute("SELECT max(id) FROM traces_providertrace")
        (last_trace_id,) = cursor.fetchone()

    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    with target.cursor() as cursor:
        cursor.execute("SELECT relname, relkind FROM pg_class WHERE relname = ANY(%s)", [TABLES])
        assert dict(cursor.fetchall()) == dict.fromkeys(TABLES, "p")
        cursor.execute(
            "SELECT s.id, s.created_at, m.step_created_at, g.step_created_at, t.step_created_at, "
            "s.tableoid::regclass::text FROM steps_step s JOIN steps_stepmetrics m ON m.step_id = s.id "
            "JOIN steps_message g ON g.step_id = s.id JOIN traces_providertrace t ON t.step_id = s.id ORDER BY s.id"
        )
        rows = cursor.fetchall()
        assert [r[0] for r in rows] == ["step-0", "step-1", "step-2"]
        for _, created, *children, partition in rows:
            assert children == [created, created, created]  # 0011 filled the partition key from the step
            assert partition == partition_name("steps_step", partition_floor(created))
        # The provider trace identity goes on after the copied ids; the idempotency key still refuses a resend.
        cursor.execute(
            "INSERT INTO traces_providertrace (organization_id, step_id, attempt, provider, api, model, created_at, "
            "step_created_at) VALUES ('org-1', 'step-9', 1, 'openai', '', '', now(), now()) RETURNING id"
        )
        assert cursor.fetchone()[0] > last_trace_id
        with pytest.raises(IntegrityError):
            cursor.execute(
                "INSERT INTO steps_step (id, organization_id, origin, attempt, cost_detail, tags, metadata, status, "
                "progression, created_at, trace_id, span_id) VALUES ('step-x', 'org-1', 'otlp', 1, '', '[]', '{}', "
                "'success', 5, %s, %s, %s)",
                [when, f"{0:032x}", f"{0:016x}"],
            )
