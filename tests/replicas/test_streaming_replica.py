"""Against a real PostgreSQL streaming replica: which queries go to the standby and which to the primary.

The test makes its own primary (initdb, wal_level=replica, a replication role with a pg_hba entry) and a hot standby
from it (`pg_basebackup -R`, another free port), waits until the standby streams, then runs Steplens in a process
configured only by DATABASE_URL and DATABASE_REPLICA_URL (tests/replicas/driver.py). Every query is recorded with
the alias that ran it. Lists, reports, the request join and the console read the standby; writes, the agent loop,
ingest, a run's page and a browser that just sent a form read the primary. With the standby's replay paused, a new
request is missing from the replica's request join while the primary serves its step: the reads really came from
the standby. Then the standby is stopped: the step list answers the database-unavailable 503 (JSON, Retry-After)
while ingest and a step's own URL, on the primary, still answer 200. The figures per phase are printed.
"""

import json
import subprocess
from collections import Counter

import pytest

from tests.faults.otlp_support import REPO, production_env, require_runnable
from tests.replicas.support import streaming_replica

pytestmark = [pytest.mark.faults, pytest.mark.postgres]  # PostgreSQL servers of its own

# Tables whose reads stay on the primary whatever the request (config.db_router.PRIMARY_ONLY_APPS).
_PRIMARY_ONLY_PREFIXES = ("accounts_", "auth_", "django_session", "django_content_type", "django_admin_log")


def _run_driver(primary_url: str, standby_url: str, logs, *args: str) -> list[dict]:
    env = production_env(
        primary_url,
        DATABASE_REPLICA_URL=standby_url,
        CELERY_TASK_ALWAYS_EAGER="true",
        STEPLENS_REPLICA_PIN_SECONDS="30",
    )
    env["DJANGO_ALLOWED_HOSTS"] = "testserver"  # Django's test client
    result = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-m", "tests.replicas.driver", *args],
        env=env, cwd=REPO, capture_output=True, timeout=300,
    )  # fmt: skip
    (logs / "driver.err").write_bytes(result.stderr)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    (logs / "phases.json").write_bytes(result.stdout)
    return json.loads(result.stdout)["phases"]


def _replicated(query: dict) -> bool:
    """A query on data the replica serves (not tenancy, login or sessions)."""
    return not all(table.startswith(_PRIMARY_ONLY_PREFIXES) for table in query["tables"])


def _statements(log: str, database: str) -> int:
    return sum(1 for line in log.splitlines() if f"db={database} LOG:  statement:" in line)


def test_reads_that_may_lag_go_to_the_streaming_replica_and_writes_and_read_your_writes_to_the_primary(tmp_path):
    require_runnable()
    with streaming_replica() as servers:
        with servers.primary.connect("postgres") as db:
            db.execute('CREATE DATABASE "steplens"')
        phases = _run_driver(servers.primary_url("steplens"), servers.standby_url("steplens"), tmp_path)
        standby_log = servers.standby_log.read_text(errors="replace")
        primary_log = servers.primary.log.read_text(errors="replace")
        servers.stop_standby()
        down = _run_driver(servers.primary_url("steplens"), servers.standby_url("steplens"), tmp_path, "--replica-down")

    by_name = {phase["name"].split(":")[0]: phase for phase in phases}
    print("\nqueries per alias (replica / primary; primary-only tables: accounts, auth, sessions):")
    for phase in [*phases, *down]:
        aliases = Counter(q["alias"] for q in phase["queries"])
        statuses = ", ".join(str(a["status"]) for a in phase["answers"])
        print(f"  {aliases['replica']:3d} / {aliases['default']:3d}  [{statuses}]  {phase['name']}")

    def on(name: str, alias: str, *, replicated_only: bool = False) -> int:
        queries = by_name[name]["queries"]
        return sum(1 for q in queries if q["alias"] == alias and (_replicated(q) or not replicated_only))

    for phase in phases:
        assert all(a["status"] < 400 or "lagging" in phase["name"] for a in phase["answers"]), phase

    # Writes, the agent loop's own reads, and ingest's claim and mapping: the primary only.
    assert by_name["run an agent"]["stop_reason"] == "end_turn"
    for name in ("run an agent", "ingest OTLP", "feedback", "ingest while the standby's replay is paused"):
        assert on(name, "replica") == 0, by_name[name]["queries"]
        assert on(name, "default", replicated_only=True) > 0

    # Lists, reports, the request join, the dashboard and the console lists: every read of replicated data on the
    # replica (the primary sees only the API key or session lookups).
    for name in (
        "step list",
        "request join",
        "usage report",
        "errors report",
        "console dashboard",
        "console steps list",
        "console errors page",
    ):
        assert on(name, "replica") > 0, by_name[name]
        assert on(name, "default", replicated_only=True) == 0, [
            q for q in by_name[name]["queries"] if q["alias"] == "default" and _replicated(q)
        ]
    assert by_name["step list"]["count"] == 5  # two steps of the run, three ingested spans
    assert by_name["request join"]["steps"] == 2
    # A run's page and a run read the primary: the run may be streaming.
    for name in ("console run page", "a run"):
        assert on(name, "replica") == 0
        assert on(name, "default", replicated_only=True) > 0

    # A console form pins its browser to the primary for the next pages.
    assert by_name["console form"]["pinned"]
    assert on("console right after the form", "replica") == 0
    assert on("console right after the form", "default", replicated_only=True) > 0

    # Lag: while replay is paused the replica does not know the new request; the primary serves its step.
    assert [a["status"] for a in by_name["lagging replica"]["answers"]] == [404]
    assert on("lagging replica", "replica") > 0
    assert [a["status"] for a in by_name["same moment, one step from the primary"]["answers"]] == [200]
    assert on("same moment, one step from the primary", "replica") == 0
    assert [a["status"] for a in by_name["replica caught up"]["answers"]] == [200]
    assert on("replica caught up", "replica") > 0

    # The servers' own logs agree: the standby ran the step list's SELECTs, and never a write.
    standby_statements = [line for line in standby_log.splitlines() if "db=steplens LOG:  statement:" in line]
    assert any('FROM "steps_step"' in line for line in standby_statements)
    assert not any(word in line for line in standby_statements for word in ("INSERT ", "UPDATE ", "DELETE "))
    assert any('INSERT INTO "steps_step"' in line for line in primary_log.splitlines())
    replica_queries = sum(q["alias"] == "replica" for p in phases for q in p["queries"])
    print(
        f"  standby log: {_statements(standby_log, 'steplens')} statements on the steplens database; "
        f"the driver counted {replica_queries} replica queries"
    )
    assert _statements(standby_log, "steplens") >= replica_queries

    # The standby stopped: what reads it answers the database-unavailable 503 (JSON, Retry-After), nothing else fails.
    list_down, ingest_down, step_down = (phase["answers"] for phase in down)
    assert list_down == [
        {"request": "GET /v1/steps", "status": 503, "error": "service_unavailable", "retry_after": "5"}
    ]
    assert [a["status"] for a in ingest_down + step_down] == [200, 200]
