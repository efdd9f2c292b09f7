"""API key scopes and project-limited keys, tried on every /v1/ endpoint (enumerated from the URL conf, so a new
endpoint is covered): `ingest` only POSTs traces, `read` only reads, `full` does anything; a project-limited key
reads only its project (another project's object is a 404) and its new agents belong to it; GET /v1/audit needs
a `full` key; monitors and alerts narrow the same way (their own tests: tests/monitors/test_project_keys.py)."""

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.audit import Actor
from accounts.models import ApiKey, AuditEvent, Membership, Role
from accounts.services import api_key_create, audit_record
from agents.models import Agent
from monitors.services import monitor_create
from steps.models import Step
from steps.rollups import step_rollup_add
from tests.factories import AgentFactory, OrganizationFactory, ProjectFactory, RunFactory, StepFactory

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "patch", "put", "delete")


def api_routes() -> list[tuple[str, type, str]]:
    """(route, view class, url name) of every /v1/ endpoint."""
    found = []

    def walk(patterns, prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern) and hasattr(entry.callback, "view_class"):
                found.append((prefix + str(entry.pattern), entry.callback.view_class, entry.name or ""))

    walk(get_resolver().url_patterns, "/")
    return [(route, view, name) for route, view, name in found if route.startswith("/v1/") and "schema" not in route
            and "docs" not in route]  # fmt: skip


def _client(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def _fill(route: str, values: dict[str, str]) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values.get(m.group(1), "x-unknown"), route)


@pytest.fixture
def world():
    organization = OrganizationFactory(name="scoped")
    mine, theirs = (ProjectFactory(organization=organization, name=n) for n in ("mine", "theirs"))
    data = {}
    for project in (mine, theirs):
        agent = AgentFactory(organization=organization, project=project, name=f"agent-{project.name}")
        run = RunFactory(agent=agent, project=project, request_id=f"req-{project.name}")
        step = StepFactory(
            agent=agent, run=run, project=project, request_id=f"req-{project.name}", status="success",
            created_at=timezone.now() - timedelta(hours=3), prompt_tokens=10, completion_tokens=1, total_tokens=11,
        )  # fmt: skip
        step_rollup_add(step=step)
        monitor, _ = monitor_create(
            organization=organization,
            data={"name": f"monitor-{project.name}", "project_id": project.pk, "metric": "steps", "operator": ">",
                  "threshold": 1, "window_seconds": 600},
        )  # fmt: skip
        data[project.name] = {"agent_id": agent.pk, "run_id": run.pk, "step_id": step.pk, "request_id": run.request_id,
                              "monitor_id": monitor.pk}  # fmt: skip
    keys = {}
    for scope in ("ingest", "read", "full"):
        _, keys[scope] = api_key_create(organization=organization, scope=scope)
        _, keys[f"{scope}@mine"] = api_key_create(organization=organization, scope=scope, project=mine)
    return {"organization": organization, "mine": mine, "theirs": theirs, "ids": data, "keys": keys}


def test_every_endpoint_answers_what_each_scope_allows(world):
    """403 exactly where the scope does not cover the method and endpoint; never 403 where it does."""
    routes = api_routes()
    assert len(routes) >= 15
    tried = 0
    for scope in ("ingest", "read", "full", "ingest@mine", "read@mine", "full@mine"):
        client = _client(world["keys"][scope])
        base_scope = scope.split("@")[0]
        for route, view, name in routes:
            url = _fill(route, world["ids"]["mine"])
            for method in METHODS:
                if not hasattr(view, method):
                    continue
                response = getattr(client, method)(url, {}, format="json")
                tried += 1
                allowed = (
                    base_scope == "full"
                    or (base_scope == "read" and method == "get" and name != "audit-list")
                    or (base_scope == "ingest" and method == "post" and name == "otlp-traces")
                )
                if allowed:
                    assert response.status_code != 403, (scope, method, url, response.content[:200])
                else:
                    assert response.status_code == 403, (scope, method, url, response.status_code)
                    body = response.json()
                    assert body["error"] == "forbidden" and "scope" in body["detail"]
    assert tried > 100


def test_a_project_limited_ingest_key_cannot_read_steps(world):
    response = _client(world["keys"]["ingest@mine"]).get("/v1/steps")
    assert response.status_code == 403


def test_a_project_limited_key_reads_only_its_project(world):
    client = _client(world["keys"]["read@mine"])
    mine, theirs = world["ids"]["mine"], world["ids"]["theirs"]
    listed = client.get("/v1/steps").json()
    ids = [row["id"] for row in listed["data"]] if "data" in listed else [row["id"] for row in listed["results"]]
    assert ids == [mine["step_id"]]
    # Asking for the other project by parameter still reads only its own.
    other = client.get("/v1/steps", {"project_id": world["theirs"].pk}).json()
    assert [row["id"] for row in other.get("data", other.get("results", []))] == [mine["step_id"]]
    for template in (
        "/v1/steps/{step_id}",
        "/v1/steps/{step_id}/messages",
        "/v1/steps/{step_id}/metrics",
        "/v1/steps/{step_id}/trace",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/usage",
        "/v1/agents/{agent_id}",
        "/v1/requests/{request_id}",
        "/v1/monitors/{monitor_id}",
        "/v1/monitors/{monitor_id}/alerts",
        "/v1/monitors/{monitor_id}/deliveries",
    ):
        response = client.get(template.format(**theirs))
        assert response.status_code == 404, (template, response.status_code)
        assert response.json()["error"] == "not_found"
    assert client.get(f"/v1/steps/{mine['step_id']}").status_code == 200
    assert client.get(f"/v1/runs/{mine['run_id']}").status_code == 200
    assert [a["id"] for a in client.get("/v1/agents").json()] == [mine["agent_id"]]
    assert [r["id"] for r in client.get("/v1/runs").json()] == [mine["run_id"]]
    assert [m["id"] for m in client.get("/v1/monitors").json()["data"]] == [mine["monitor_id"]]
    assert client.get(f"/v1/monitors/{mine['monitor_id']}").status_code == 200


@pytest.mark.parametrize("exact", ["false", "true"])
def test_a_project_limited_keys_reports_count_only_its_project(world, exact):
    """Both report paths: the rollups (whole hours) and the scan of the steps (exact)."""
    start = (timezone.now() - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    params = {"start": start.isoformat(), "exact": exact}
    limited = _client(world["keys"]["read@mine"]).get("/v1/usage", params)
    whole = _client(world["keys"]["read"]).get("/v1/usage", params)
    assert limited.status_code == whole.status_code == 200, limited.content
    assert whole.json()["data"][0]["steps"] == 2
    assert limited.json()["data"][0]["steps"] == 1
    errors = _client(world["keys"]["read@mine"]).get("/v1/errors", {"start": params["start"]})
    assert errors.status_code == 200, errors.content


def test_a_project_limited_full_key_writes_into_its_project(world):
    response = _client(world["keys"]["full@mine"]).post(
        "/v1/agents", {"name": "made-by-key", "model_handle": "openai/gpt-4o-mini"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert Agent.objects.get(name="made-by-key").project == world["mine"]
    # Feedback and tags: its project's steps only; another project's step is not found.
    client = _client(world["keys"]["full@mine"])
    theirs = client.patch(f"/v1/steps/{world['ids']['theirs']['step_id']}/feedback", {"feedback": "negative"},
                          format="json")  # fmt: skip
    assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"
    mine = client.patch(
        f"/v1/steps/{world['ids']['mine']['step_id']}/feedback", {"feedback": "positive"}, format="json"
    )
    assert mine.status_code == 200 and mine.json()["feedback"] == "positive"
    assert Step.objects.get(pk=world["ids"]["theirs"]["step_id"]).feedback is None


def test_audit_log_is_read_with_a_full_key_newest_first_and_paged(world):
    organization = world["organization"]
    for n in range(3):
        audit_record(actor=Actor(label="ci"), action=f"test.{n}", organization=organization, after={"n": n})
    audit_record(actor=Actor(label="ci"), action="test.other-org", organization=OrganizationFactory())
    client = _client(world["keys"]["full"])
    page = client.get("/v1/audit", {"limit": 2}).json()
    assert [e["action"] for e in page["events"]] == ["test.2", "test.1"]
    rest = client.get("/v1/audit", {"limit": 2, "before_id": page["next_before_id"]}).json()
    assert "test.0" in [e["action"] for e in rest["events"]]
    assert "test.other-org" not in str(page) + str(rest)
    assert client.get("/v1/audit", {"limit": 10**6}).status_code == 400
    assert _client(world["keys"]["read"]).get("/v1/audit").status_code == 403
    creation = client.get("/v1/audit", {"action": "api_key.create", "limit": 100}).json()["events"]
    assert len(creation) == 6 and all(e["after"]["scope"] in ("ingest", "read", "full") for e in creation)


def test_the_scope_and_project_of_a_key_never_reach_its_audit_row_as_the_key_itself(world):
    for event in AuditEvent.objects.filter(action="api_key.create"):
        for raw_key in world["keys"].values():
            assert raw_key not in str(event.after) and raw_key[:20] not in str(event.after)


def test_create_api_key_command_takes_a_project_and_a_scope(world):
    out = io.StringIO()
    call_command(
        "create_api_key", "--organization", "scoped", "--project", "mine", "--scope", "ingest",
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    raw_key = out.getvalue().strip().splitlines()[-1]
    stored = ApiKey.objects.get(prefix=raw_key[:10])
    assert stored.scope == "ingest" and stored.project == world["mine"]
    assert _client(raw_key).get("/v1/steps").status_code == 403


def test_add_member_command_creates_the_user_and_sets_the_role(world):
    call_command(
        "add_member", "--organization", "scoped", "--username", "ana", "--role", "admin", "--password", "pw-Long-1234",
        stdout=io.StringIO(),
    )  # fmt: skip
    membership = Membership.objects.get(user__username="ana")
    assert membership.role == Role.ADMIN and membership.organization == world["organization"]
    assert membership.user.check_password("pw-Long-1234") and not membership.user.is_staff
    call_command(
        "add_member", "--organization", "scoped", "--username", "ana", "--role", "viewer", stdout=io.StringIO()
    )
    membership.refresh_from_db()
    assert membership.role == Role.VIEWER
    assert AuditEvent.objects.filter(action="member.role", target_id=str(membership.pk)).exists()


def test_deleting_an_agent_through_the_api_is_audited_with_the_key(world):
    client = _client(world["keys"]["full"])
    agent_id = world["ids"]["mine"]["agent_id"]
    assert client.delete(f"/v1/agents/{agent_id}").status_code == 204
    event = AuditEvent.objects.get(action="agent.delete", target_id=agent_id)
    assert event.organization == world["organization"] and event.actor.startswith("key sl-")
    assert event.actor_api_key is not None and event.before == {"name": "agent-mine"}


def test_starting_a_deletion_is_audited_with_its_filters(world, django_capture_on_commit_callbacks):
    client = _client(world["keys"]["full"])
    with django_capture_on_commit_callbacks(execute=False):
        response = client.delete(f"/v1/steps?request_id={world['ids']['mine']['request_id']}")
    assert response.status_code == 202, response.content
    event = AuditEvent.objects.get(action="deletion.start")
    assert event.organization == world["organization"] and event.actor.startswith("key sl-")
    assert event.after == {"filters": {"request_id": [world["ids"]["mine"]["request_id"]]}}
