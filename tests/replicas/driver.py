"""Run by test_streaming_replica.py in a process of its own, configured like production by the environment alone:
`DATABASE_URL` is the test's primary, `DATABASE_REPLICA_URL` its streaming standby. Steplens's views are called
through Django's test client (the whole middleware stack, in process), while a wrapper on each connection records
every query with its alias and the tables it names. Prints one JSON document: the phases, in order, each with its
answers and its queries.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import django

django.setup()

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from accounts.services import api_key_create  # noqa: E402
from agents.services import agent_create  # noqa: E402
from tests.factories import OrganizationFactory  # noqa: E402
from tests.faults.otlp_support import llm_spans_request  # noqa: E402
from tests.replicas.support import caught_up  # noqa: E402

_PLAIN_STATIC = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
_TABLES = re.compile(r'\b(?:FROM|JOIN|INTO|UPDATE)\s+"?([a-z][a-z0-9_]*)"?', re.IGNORECASE)


class Recorder:
    """Every query of the current phase: its alias (which server ran it) and its tables."""

    def __init__(self) -> None:
        self.phases: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None

    def wrapper(self, alias: str):
        def record(execute, sql, params, many, context):
            if self.current is not None:
                self.current["queries"].append(
                    {"alias": alias, "tables": sorted(set(_TABLES.findall(sql))), "sql": sql[:200]}
                )
            return execute(sql, params, many, context)

        return record

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        self.current = {"name": name, "answers": [], "queries": []}
        try:
            yield self.current
        finally:
            self.phases.append(self.current)
            self.current = None


def call(phase: dict[str, Any] | None, client: Client, method: str, path: str, **kwargs: Any) -> Any:
    """The answer's JSON body (None for a page); its status (and error code, Retry-After) are noted in the phase."""
    response = getattr(client, method)(path, **kwargs)
    body = response.json() if response.get("Content-Type", "").startswith("application/json") else None
    if phase is not None:
        answer = {"request": f"{method.upper()} {path}", "status": response.status_code}
        if response.status_code >= 400:
            answer |= {"error": (body or {}).get("error"), "retry_after": response.get("Retry-After")}
        phase["answers"].append(answer)
    return body


def main() -> None:
    assert "replica" in settings.DATABASES and settings.DATABASE_ROUTERS, "DATABASE_REPLICA_URL was not applied"
    call_command("migrate", verbosity=0)  # on the primary only (the router's allow_migrate)
    primary = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    standby = psycopg.connect(os.environ["DATABASE_REPLICA_URL"], autocommit=True)

    organization = OrganizationFactory()
    _, key = api_key_create(organization=organization, name="replicas")
    agent = agent_create(
        organization=organization, name="replicated", model_handle="scripted/weather-openai", tools=["get_weather"]
    )
    admin = get_user_model().objects.create_superuser("replica-admin", "admin@example.com", "x" * 12)
    api = Client(headers={"Authorization": f"Bearer {key}"})
    console = Client()
    console.force_login(admin)

    recorder = Recorder()
    with ExitStack() as stack:
        # Console pages name static files; production's manifest storage needs a collectstatic this test does not run.
        stack.enter_context(override_settings(STORAGES={**settings.STORAGES, "staticfiles": _PLAIN_STATIC}))
        for alias in ("default", "replica"):
            stack.enter_context(connections[alias].execute_wrapper(recorder.wrapper(alias)))

        # --- writes, and the agent loop reading back its own run and steps -----------------------------------
        with recorder.phase("run an agent: POST /v1/agents/{id}/messages (the loop runs in process)") as p:
            body = call(
                p, api, "post", f"/v1/agents/{agent.pk}/messages", content_type="application/json",
                data={"messages": [{"role": "user", "content": "Weather in Paris?"}]},
                headers={"X-Request-ID": "req-r1"},
            )  # fmt: skip
            p["stop_reason"] = body["stop_reason"]
        ingest = llm_spans_request(3, extra={"steplens.request_id": "req-ingested"}).SerializeToString()
        with recorder.phase("ingest OTLP: POST /v1/traces (claimed and mapped in process)") as p:
            call(p, api, "post", "/v1/traces", data=ingest, content_type="application/x-protobuf")
        caught_up(primary, standby)

        # --- reads that may lag: the replica -------------------------------------------------------------------
        with recorder.phase("step list: GET /v1/steps") as p:
            p["count"] = len(call(p, api, "get", "/v1/steps?limit=50")["data"])
        step_id = call(None, api, "get", "/v1/steps?limit=1")["data"][0]["id"]
        with recorder.phase("request join: GET /v1/requests/req-r1") as p:
            p["steps"] = len(call(p, api, "get", "/v1/requests/req-r1")["steps"])
        with recorder.phase("usage report: GET /v1/usage?group_by=model") as p:
            call(p, api, "get", "/v1/usage?group_by=model")
        with recorder.phase("errors report: GET /v1/errors") as p:
            call(p, api, "get", "/v1/errors")
        with recorder.phase("console dashboard: GET /admin/dashboard/") as p:
            call(p, console, "get", "/admin/dashboard/")
        with recorder.phase("console steps list: GET /admin/steps/step/") as p:
            call(p, console, "get", "/admin/steps/step/")
        with recorder.phase("console errors page: GET /admin/errors/") as p:
            call(p, console, "get", "/admin/errors/")

        # --- reads that must see writes: the primary -----------------------------------------------------------
        run_id = call(None, api, "get", "/v1/steps?limit=50&request_id=req-r1")["data"][0]["run_id"]
        with recorder.phase("console run page: GET /admin/agents/run/{id}/change/ (the run may be streaming)") as p:
            call(p, console, "get", f"/admin/agents/run/{run_id}/change/")
        with recorder.phase("a run: GET /v1/runs/{id}") as p:
            call(p, api, "get", f"/v1/runs/{run_id}")
        with recorder.phase("feedback: PATCH /v1/steps/{id}/feedback (writes, then reads the step back)") as p:
            call(p, api, "patch", f"/v1/steps/{step_id}/feedback", content_type="application/json",
                 data={"feedback": "positive"})  # fmt: skip
        with recorder.phase("console form: POST /admin/steps/step/{id}/feedback/ (pins this browser)") as p:
            call(p, console, "post", f"/admin/steps/step/{step_id}/feedback/", data={"feedback": "negative"})
            p["pinned"] = "steplens_primary" in console.cookies
        with recorder.phase("console right after the form: GET /admin/steps/step/ (pinned: the primary)") as p:
            call(p, console, "get", "/admin/steps/step/")
        console.cookies.pop("steplens_primary", None)

        # --- replication lag made visible: replay paused, a new request exists on the primary only ----------------
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            late = llm_spans_request(1, extra={"steplens.request_id": "req-late"}).SerializeToString()
            with recorder.phase("ingest while the standby's replay is paused") as p:
                call(p, api, "post", "/v1/traces", data=late, content_type="application/x-protobuf")
            with recorder.phase("lagging replica: GET /v1/requests/req-late") as p:
                call(p, api, "get", "/v1/requests/req-late")
            (late_step,) = primary.execute("SELECT id FROM steps_step WHERE request_id = 'req-late'").fetchone()
            with recorder.phase("same moment, one step from the primary: GET /v1/steps/{id}") as p:
                call(p, api, "get", f"/v1/steps/{late_step}")
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        caught_up(primary, standby)
        with recorder.phase("replica caught up: GET /v1/requests/req-late") as p:
            call(p, api, "get", "/v1/requests/req-late")

    json.dump({"phases": recorder.phases}, sys.stdout)


def replica_down() -> None:
    """The standby is stopped: what reads it answers the database-unavailable 503, the rest goes on."""
    organization = OrganizationFactory(name="replica-down")  # the factory's sequence restarts in this process
    _, key = api_key_create(organization=organization, name="replica-down")
    api = Client(headers={"Authorization": f"Bearer {key}"})
    primary = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    recorder = Recorder()
    with ExitStack() as stack:
        for alias in ("default", "replica"):
            stack.enter_context(connections[alias].execute_wrapper(recorder.wrapper(alias)))
        with recorder.phase("replica down: GET /v1/steps") as p:
            call(p, api, "get", "/v1/steps")
        spans = llm_spans_request(2, extra={"steplens.request_id": "req-down"}).SerializeToString()
        with recorder.phase("replica down: POST /v1/traces") as p:
            call(p, api, "post", "/v1/traces", data=spans, content_type="application/x-protobuf")
        (step_id,) = primary.execute("SELECT id FROM steps_step WHERE request_id = 'req-down' LIMIT 1").fetchone()
        with recorder.phase("replica down: GET /v1/steps/{id}") as p:
            call(p, api, "get", f"/v1/steps/{step_id}")
    json.dump({"phases": recorder.phases}, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1:] == ["--replica-down"]:
        replica_down()
    else:
        main()
