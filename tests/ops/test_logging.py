"""LOG_FORMAT=json lines with the request's ids, and no secret in any log line of a full agent run and an ingest."""

import io
import json
import logging

import pytest

from config.logging_setup import (
    ContextFilter,
    JsonFormatter,
    RedactingFilter,
    log_context,
    logging_config,
    recent_errors,
)
from tests.faults.otlp_support import llm_spans_request

pytestmark = pytest.mark.django_db

PROVIDER_KEY = "sk-proj-" + "Zq9" * 16


@pytest.fixture
def json_log():
    """Every record of every logger, at DEBUG, through the handler chain LOG_FORMAT=json sets up; yields the
    buffer's lines as dicts (each line must be one JSON object)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    noisy = [logging.getLogger(name) for name in ("httpx", "httpx2", "httpcore", "openai", "anthropic", "celery")]
    levels = [(logger, logger.level) for logger in [root, *noisy]]
    for logger, _ in levels:
        logger.setLevel(logging.DEBUG)
    root.addHandler(handler)

    def lines() -> list[dict]:
        text = buffer.getvalue()
        return [json.loads(line) for line in text.splitlines() if line.strip()], text

    try:
        yield lines
    finally:
        root.removeHandler(handler)
        for logger, level in levels:
            logger.setLevel(level)


def test_logging_config_builds_plain_by_default_and_refuses_an_unknown_format():
    assert logging_config(log_format="plain", level="INFO")["handlers"]["console"]["formatter"] == "plain"
    assert logging_config(log_format="json", level="INFO")["handlers"]["console"]["formatter"] == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_config(log_format="xml", level="INFO")


def test_json_lines_carry_the_request_id_and_the_organization_of_the_key(api_client, organization, json_log):
    response = api_client.get("/v1/steps/step-missing", HTTP_X_REQUEST_ID="req-log-test-1")
    assert response.status_code == 404
    records, _ = json_log()
    not_found = [r for r in records if r["logger"] == "django.request" and "step-missing" in r["message"]]
    assert not_found, records
    assert not_found[0]["request_id"] == "req-log-test-1"
    assert not_found[0]["organization_id"] == organization.pk
    assert not_found[0]["level"] == "WARNING" and "time" in not_found[0]


def test_log_context_adds_run_and_step_ids(json_log):
    with log_context(run_id="run-1", step_id="step-2"):
        logging.getLogger("steplens.test").info("inside")
    logging.getLogger("steplens.test").info("outside")
    records, _ = json_log()
    inside = next(r for r in records if r["message"] == "inside")
    outside = next(r for r in records if r["message"] == "outside")
    assert (inside["run_id"], inside["step_id"]) == ("run-1", "step-2")
    assert "run_id" not in outside


def test_no_secret_reaches_the_logs_of_a_full_agent_run_and_an_ingest(api_client, api_key, json_log, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_KEY)
    agent = api_client.post("/v1/agents", {"name": "logs", "model_handle": "scripted/echo"}, format="json")
    assert agent.status_code == 201, agent.content
    run = api_client.post(
        f"/v1/agents/{agent.json()['id']}/messages",
        {"messages": [{"role": "user", "content": f"my key is {PROVIDER_KEY}, Authorization: Bearer {api_key}"}]},
        format="json",
    )
    assert run.status_code == 200, run.content
    body = llm_spans_request(2, extra={"http.request.header.authorization": f"Bearer {api_key}"})
    ingested = api_client.generic("POST", "/v1/traces", body.SerializeToString(), content_type="application/x-protobuf")
    assert ingested.status_code == 200
    # Code that logs what it should not: the filters still catch it, in the message and in the traceback.
    log = logging.getLogger("steplens.careless")
    log.warning("calling with headers %s", {"Authorization": f"Bearer {api_key}", "x-api-key": PROVIDER_KEY})
    try:
        raise RuntimeError(f"provider refused key {PROVIDER_KEY}")
    except RuntimeError:
        log.exception("provider call failed")

    records, text = json_log()
    assert len(records) > 5  # the run and the ingest did log
    assert any(r.get("run_id") or r.get("request_id") for r in records)
    assert api_key not in text
    assert PROVIDER_KEY not in text
    careless = [r for r in records if r["logger"] == "steplens.careless"]
    assert len(careless) == 2 and all("[REDACTED]" in r["message"] + r.get("exception", "") for r in careless)


def test_warnings_land_in_the_recent_errors_ring_bounded_by_the_setting(settings):
    """Through the handler LOGGING puts on the root logger (every process's errors, in the cache)."""
    settings.STEPLENS_RECENT_ERRORS = 3
    log = logging.getLogger("steplens.ring")
    for i in range(5):
        log.error("failure %s with Bearer %s", i, "abcdefghijklmnop")
    log.info("not kept")
    entries = recent_errors()
    assert [e["message"].split(" with")[0] for e in entries] == ["failure 4", "failure 3", "failure 2"]
    assert all("abcdefghijklmnop" not in e["message"] for e in entries)
    assert entries[0]["logger"] == "steplens.ring" and entries[0]["level"] == "ERROR"


def test_a_task_s_ids_go_on_the_lines_it_logs(json_log):
    """Celery's task_prerun binds the ids a task was given (ops.signals); task_postrun unbinds them."""
    from celery import signals

    class RunAgent:
        name = "agents.run_agent"

    task = RunAgent()
    signals.task_prerun.send(sender=task, task_id="task-1", task=task, args=(), kwargs={"run_id": "run-9"})
    logging.getLogger("steplens.task").info("in the task")
    signals.task_postrun.send(
        sender=task, task_id="task-1", task=task, args=(), kwargs={"run_id": "run-9"}, retval="ok", state="SUCCESS"
    )
    logging.getLogger("steplens.task").info("after the task")
    records, _ = json_log()
    inside = next(r for r in records if r["message"] == "in the task")
    after = next(r for r in records if r["message"] == "after the task")
    assert (inside["run_id"], inside["task_id"], inside["task"]) == ("run-9", "task-1", "agents.run_agent")
    assert "run_id" not in after and "task_id" not in after
