"""Input PostgreSQL cannot store (the NUL character) is a 400 naming where it is, never a 500, and
nothing is written."""

import pytest

from agents.models import Run
from steps.models import Step
from tests.factories import AgentFactory, RunFactory, StepFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def step(organization):
    agent = AgentFactory(organization=organization, model_handle="scripted/echo")
    return StepFactory(agent=agent, run=RunFactory(agent=agent, request_id="req-1"))


@pytest.mark.parametrize(
    "path",
    [
        "/v1/steps?agent_id=a%00b", "/v1/steps?metadata.tenant=a%00b", "/v1/steps?cursor=%00",
        "/v1/steps/step%00x", "/v1/steps/step%00x/messages", "/v1/steps/step%00x/metrics", "/v1/steps/step%00x/trace",
        "/v1/requests/req%00x", "/v1/runs/run%00x/usage", "/v1/runs/run%00x", "/v1/usage?model=gpt%00",
        "/v1/usage?group_by=model&user_id=%00", "/v1/errors?error_type=%00", "/v1/agents/agent%00x",
        "/v1/agents?name=%00",
    ],
)  # fmt: skip
def test_nul_in_a_path_or_query_is_a_400(api_client, step, path):
    response = api_client.get(path)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "bad_request"
    assert "NUL" in response.json()["detail"]


def test_nul_in_a_json_body_is_a_400_naming_where_and_writes_nothing(api_client, step):
    runs = Run.objects.count()
    response = api_client.post(
        f"/v1/agents/{step.agent_id}/messages",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi\x00"}]}]},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert response.json() == {
        "error": "bad_request",
        "detail": "Invalid input: messages.0.content.0.text: NUL characters (\\u0000) are not allowed.",
        "fields": {"messages.0.content.0.text": ["NUL characters (\\u0000) are not allowed."]},
    }
    assert Run.objects.count() == runs

    response = api_client.post(
        "/v1/chat/completions",
        {"model": step.agent_id, "messages": [{"role": "user", "content": "a\x00"}]},
        format="json",
    )
    assert response.status_code == 400 and "messages.0.content" in response.json()["detail"]
    assert Run.objects.count() == runs

    response = api_client.patch(f"/v1/steps/{step.id}/feedback", {"add_tags": ["ok", "b\x00d"]}, format="json")
    assert response.status_code == 400
    assert Step.objects.get(pk=step.pk).tags == []
