"""OTLP ingest with a project-limited API key: every step, run and new agent of its spans goes into the key's
project (whatever project the spans' agent or run would give them), is read back by a key limited to that project
and counted under it in the usage report; an unlimited key's spans keep the project their agent gives them."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from rest_framework.test import APIClient

from accounts.services import api_key_create
from agents.models import Agent, Run
from steps.models import Step
from tests.factories import AgentFactory, ProjectFactory
from tests.traces.test_ingest import URL, _agent_trace, _json_body, _legacy_and_openinference, _spans
from traces.models import IngestBatch, IngestBatchStatus
from traces.services import trace_batches_process

pytestmark = pytest.mark.django_db


def _client(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def _send(raw_key: str, spans: list) -> None:
    response = _client(raw_key).generic(
        "POST", URL, encode_spans(spans).SerializeToString(), content_type="application/x-protobuf"
    )
    assert response.status_code == 200, response.content


@pytest.fixture
def projects(organization):
    return ProjectFactory(organization=organization, name="web"), ProjectFactory(organization=organization, name="ops")


def _key(organization, *, scope: str, project=None) -> str:
    return api_key_create(organization=organization, scope=scope, project=project)[1]


def test_a_project_limited_ingest_keys_spans_are_stored_read_and_counted_under_its_project(organization, projects):
    web, ops = projects
    _send(_key(organization, scope="ingest", project=web), _spans(_agent_trace))

    steps = list(Step.objects.filter(organization=organization))
    assert len(steps) == 2 and {s.project_id for s in steps} == {web.pk}
    run = Run.objects.get(organization=organization)
    assert run.project_id == web.pk
    assert Agent.objects.get(organization=organization, name="shoe-bot").project_id == web.pk
    batch = IngestBatch.objects.get()
    assert batch.project_id == web.pk and batch.status == IngestBatchStatus.DONE

    reader = _client(_key(organization, scope="read", project=web))
    listed = reader.get("/v1/steps").json()["data"]
    assert sorted(row["id"] for row in listed) == sorted(s.pk for s in steps)
    assert all(row["project_id"] == web.pk for row in listed)
    assert reader.get(f"/v1/runs/{run.pk}").status_code == 200
    other = _client(_key(organization, scope="read", project=ops))
    assert other.get("/v1/steps").json()["data"] == []
    assert other.get(f"/v1/steps/{steps[0].pk}").status_code == 404

    start = (timezone.now() - timedelta(days=1)).isoformat()
    for exact in ("false", "true"):
        usage = _client(_key(organization, scope="read")).get(
            "/v1/usage", {"group_by": "project", "start": start, "exact": exact}
        )
        assert usage.status_code == 200, usage.content
        rows = {row["project_id"]: row for row in usage.json()["data"]}
        assert set(rows) == {web.pk} and rows[web.pk]["steps"] == 2
        assert rows[web.pk]["total_tokens"] == sum(s.total_tokens for s in steps)
        limited = reader.get("/v1/usage", {"group_by": "project", "start": start, "exact": exact}).json()["data"]
        assert [(row["project_id"], row["steps"]) for row in limited] == [(web.pk, 2)]


def test_an_unlimited_keys_spans_keep_the_project_of_their_agent(organization, projects):
    web, _ = projects
    _send(_key(organization, scope="ingest"), _spans(_agent_trace))
    assert set(Step.objects.values_list("project_id", flat=True)) == {None}
    assert Run.objects.get().project_id is None and Agent.objects.get(name="shoe-bot").project_id is None

    # A known agent of a project still gives an unlimited key's runs and steps its project (as before).
    Step.objects.all().delete()
    Run.objects.all().delete()
    Agent.objects.filter(name="shoe-bot").update(project=web)
    _send(_key(organization, scope="full"), _spans(_agent_trace))
    assert set(Step.objects.values_list("project_id", flat=True)) == {web.pk}
    assert Run.objects.get().project_id == web.pk


def test_a_key_limited_to_one_project_stores_there_spans_whose_agent_belongs_to_another(organization, projects):
    """The spans name agent "shoe-bot", which belongs to project ops: the key's project (web) wins for the run and
    every step; the existing agent is used as it is (not moved)."""
    web, ops = projects
    agent = AgentFactory(organization=organization, project=ops, name="shoe-bot")
    _send(_key(organization, scope="ingest", project=web), _spans(_agent_trace))
    run = Run.objects.get()
    assert run.agent_id == agent.pk and run.project_id == web.pk
    assert set(Step.objects.values_list("project_id", flat=True)) == {web.pk}
    agent.refresh_from_db()
    assert agent.project_id == ops.pk
    assert _client(_key(organization, scope="read", project=ops)).get("/v1/steps").json()["data"] == []


def test_a_project_limited_key_does_not_attach_steps_to_another_projects_run(organization, projects):
    """The agent span arrives with an ops key, its LLM spans later with a web key: they are stored under web,
    without joining the ops run."""
    web, ops = projects
    spans = _spans(_agent_trace)
    root = next(s for s in spans if s.name.startswith("invoke_agent"))
    _send(_key(organization, scope="ingest", project=ops), [root])
    _send(_key(organization, scope="ingest", project=web), [s for s in spans if s is not root])
    run = Run.objects.get()
    assert run.project_id == ops.pk and run.step_count == 0
    steps = Step.objects.all()
    assert steps.count() == 2 and {(s.project_id, s.run_id) for s in steps} == {(web.pk, None)}


def test_json_export_with_a_project_limited_key(organization, projects):
    web, _ = projects
    body = json.dumps(_json_body(_spans(_legacy_and_openinference))).encode()
    response = _client(_key(organization, scope="ingest", project=web)).generic(
        "POST", URL, body, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert Step.objects.count() == 2 and set(Step.objects.values_list("project_id", flat=True)) == {web.pk}


@pytest.mark.django_db(transaction=True)
def test_a_worker_maps_batches_of_different_projects_each_into_its_own(organization, projects, queued_mode):
    web, ops = projects
    _send(_key(organization, scope="ingest", project=web), _spans(_legacy_and_openinference))
    _send(_key(organization, scope="ingest", project=ops), _spans(_agent_trace))
    _send(_key(organization, scope="ingest"), _spans(_legacy_and_openinference))
    assert Step.objects.count() == 0
    assert sorted(IngestBatch.objects.values_list("project_id", flat=True), key=str) == sorted(
        [web.pk, ops.pk, None], key=str
    )
    assert trace_batches_process(limit=10) == 3
    assert set(IngestBatch.objects.values_list("status", flat=True)) == {IngestBatchStatus.DONE}
    by_project = {}
    for project_id in Step.objects.values_list("project_id", flat=True):
        by_project[project_id] = by_project.get(project_id, 0) + 1
    assert by_project == {web.pk: 2, ops.pk: 2, None: 2}
    assert Run.objects.get().project_id == ops.pk
