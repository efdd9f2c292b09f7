"""The issue's check, end to end through real agent runs: a monitor on error_rate > 0.2 over 10 minutes for one
agent (at least 5 steps) fires within two cycles after the agent's steps start failing; the webhook receiver gets a
correctly signed POST whose value equals GET /v1/usage for the same filter and window; a resolved event follows
the recovery; another organization's failing steps do not move the monitor."""

import pytest
from rest_framework.test import APIClient

from accounts.services import api_key_create
from monitors.notifications import SIGNATURE_HEADER, signature_valid
from monitors.services import monitors_evaluate
from tests.factories import OrganizationFactory

USER = {"messages": [{"role": "user", "content": "How is the weather?"}]}


def _run(client: APIClient, agent, times: int) -> None:
    for _ in range(times):
        response = client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json")
        assert response.status_code == 200, response.content


def _cycle(capture) -> None:
    with capture(execute=True):
        monitors_evaluate()


@pytest.mark.django_db
def test_error_rate_monitor_fires_signed_with_the_usage_value_and_resolves(
    api_client, organization, receiver, switchable, make_agent, django_capture_on_commit_callbacks
):
    handle, switch = switchable
    agent = make_agent(organization, handle)
    created = api_client.post(
        "/v1/monitors",
        {"name": "support agent errors", "filters": {"agent_id": agent.pk}, "metric": "error_rate", "operator": ">",
         "threshold": 0.2, "window_seconds": 600, "min_steps": 5,
         "targets": [{"kind": "webhook", "url": receiver.url}]},
        format="json",
    )  # fmt: skip
    assert created.status_code == 201, created.content
    monitor, secret = created.json(), created.json()["secret"]
    assert secret.startswith("whsec_")
    assert "secret" not in api_client.get(f"/v1/monitors/{monitor['id']}").json()

    # Another organization's agent, failing on the same scripted model, all along.
    other = OrganizationFactory()
    other_client = APIClient()
    other_client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(organization=other, name='x')[1]}")
    other_agent = make_agent(other, handle)

    _run(api_client, agent, 5)
    _cycle(django_capture_on_commit_callbacks)
    state = api_client.get(f"/v1/monitors/{monitor['id']}").json()
    assert (state["state"], state["value"], state["steps"]) == ("ok", 0.0, 5)

    switch.failing = True
    _run(other_client, other_agent, 6)
    _cycle(django_capture_on_commit_callbacks)
    assert api_client.get(f"/v1/monitors/{monitor['id']}").json()["state"] == "ok"  # the other org's errors
    assert receiver.requests == []

    _run(api_client, agent, 3)  # our agent starts failing: 3 of 8 steps
    for _ in range(2):
        _cycle(django_capture_on_commit_callbacks)
        if api_client.get(f"/v1/monitors/{monitor['id']}").json()["state"] == "alerting":
            break
    assert api_client.get(f"/v1/monitors/{monitor['id']}").json()["state"] == "alerting"

    assert len(receiver.requests) == 1
    fired = receiver.requests[0]
    assert signature_valid(secret=secret, body=fired.body, header=fired.headers[SIGNATURE_HEADER])
    assert not signature_valid(secret=secret, body=fired.body + b" ", header=fired.headers[SIGNATURE_HEADER])
    payload = fired.json()
    assert (payload["state"], payload["previous_state"], payload["steps"]) == ("alerting", "ok", 8)
    assert payload["threshold"] == 0.2 and payload["window"]["seconds"] == 600
    assert "error_rate" in payload["text"] and "support agent errors" in payload["text"]
    usage = api_client.get(
        "/v1/usage",
        {"agent_id": agent.pk, "start": payload["window"]["start"], "end": payload["window"]["end"]},
    ).json()["data"][0]
    assert payload["value"] == usage["error_rate"] == pytest.approx(3 / 8)
    assert payload["links"]["api_usage"].split("?")[0].endswith("/v1/usage")
    assert f"agent_id={agent.pk}" in payload["links"]["api_steps"]
    assert "/admin/steps/step/" in payload["links"]["console"]

    switch.failing = False  # the agent recovers: 3 failures in 17 steps is 0.176, under the 0.18 recovery line
    _run(api_client, agent, 9)
    _cycle(django_capture_on_commit_callbacks)
    assert api_client.get(f"/v1/monitors/{monitor['id']}").json()["state"] == "ok"
    assert len(receiver.requests) == 2
    resolved = receiver.requests[1]
    assert signature_valid(secret=secret, body=resolved.body, header=resolved.headers[SIGNATURE_HEADER])
    assert (resolved.json()["state"], resolved.json()["resolved"]) == ("ok", True)
    assert resolved.json()["value"] == pytest.approx(3 / 17, abs=1e-6)

    alerts = api_client.get(f"/v1/monitors/{monitor['id']}/alerts").json()["data"]
    assert [(a["previous_state"], a["state"]) for a in alerts] == [("alerting", "ok"), ("ok", "alerting"),
                                                                   ("no_data", "ok")]  # fmt: skip
    deliveries = api_client.get(f"/v1/monitors/{monitor['id']}/deliveries").json()["data"]
    assert [(d["status"], [a["status_code"] for a in d["attempts"]]) for d in deliveries] == [
        ("delivered", [200]), ("delivered", [200])
    ]  # fmt: skip
