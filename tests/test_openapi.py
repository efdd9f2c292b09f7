"""The OpenAPI schema says what the server does: error answers, limits, discriminators, streams, OTLP bodies."""

import re

import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from config.errors import ERROR_CODES
from steps.filters import MultiValueField, multi_value_pattern
from steps.reports import ERROR_GROUPS, USAGE_GROUPS, group_by_pattern, parse_group_by


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = APIClient().get("/v1/schema", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def _operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_operation_declares_the_errors_it_can_answer(schema):
    for path, method, operation in _operations(schema):
        statuses = set(operation["responses"])
        assert {"400", "401", "406", "429", "503"} <= statuses, (method, path, statuses)
        if "{" in path:
            assert "404" in statuses, (method, path)
        if operation.get("requestBody", {}).get("content", {}).get("application/json"):
            assert "415" in statuses, (method, path)
        assert operation["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "detail"] and error["additionalProperties"] is False
    assert set(error["properties"]["error"]["enum"]) == set(ERROR_CODES.values())


def test_conflicts_are_declared_where_they_happen(schema):
    assert "409" in schema["paths"]["/v1/agents"]["post"]["responses"]
    assert "409" in schema["paths"]["/v1/runs/{run_id}/approvals"]["post"]["responses"]


def test_limits_are_in_the_schema(schema):
    steps = {p["name"]: p for p in schema["paths"]["/v1/steps"]["get"]["parameters"]}
    assert (steps["limit"]["schema"]["minimum"], steps["limit"]["schema"]["maximum"]) == (1, 1000)
    assert {"type": "string", "format": "cursor", "maxLength": 2000} in steps["cursor"]["schema"]["oneOf"]
    assert all(p["allowEmptyValue"] for p in steps.values() if not p.get("required"))
    runs = {p["name"]: p for p in schema["paths"]["/v1/runs"]["get"]["parameters"]}
    assert set(runs["status"]["schema"]["enum"]) == {"created", "running", "paused", "completed", "failed", "cancelled"}
    stream = {p["name"]: p for p in schema["paths"]["/v1/runs/{run_id}/stream"]["get"]["parameters"]}
    assert stream["starting_after"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    assert "allowEmptyValue" not in stream["starting_after"]
    components = schema["components"]["schemas"]
    assert components["SendMessagesRequest"]["properties"]["messages"]["minItems"] == 1
    agent = components["AgentRequest"]["properties"]
    assert agent["name"]["minLength"] == 1 and agent["name"]["pattern"]
    assert agent["tags"]["items"]["minLength"] == 1


def test_typed_messages_are_a_discriminated_union_whose_members_name_their_type(schema):
    components = schema["components"]["schemas"]
    union = components["TypedMessage"]
    assert union["discriminator"]["propertyName"] == "message_type"
    for value, ref in union["discriminator"]["mapping"].items():
        member = components[ref.rsplit("/", 1)[-1]]
        assert member["properties"]["message_type"]["enum"] == [value]


def test_streams_are_declared_as_server_sent_events(schema):
    for path in ("/v1/runs/{run_id}/stream", "/v1/agents/{agent_id}/messages/stream"):
        (operation,) = schema["paths"][path].values()
        event = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert event["required"] == ["data"]


def test_otlp_ingest_declares_both_encodings_and_its_status_errors(schema):
    operation = schema["paths"]["/v1/traces"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/x-protobuf", "application/json"}
    assert operation["requestBody"]["required"] is True
    assert set(operation["responses"]["200"]["content"]) == {"application/x-protobuf", "application/json"}
    assert "OtlpStatus" in str(operation["responses"]["413"])
    assert {"OtlpExportTraceServiceRequest", "OtlpSpan", "OtlpAnyValue"} <= set(schema["components"]["schemas"])


@pytest.mark.parametrize(
    "value",
    ["model", "model,day", "day,model,agent", "model,model", "hour,day", "day,day", "model,,day", " model", "x"],
)
@pytest.mark.parametrize("allowed", [USAGE_GROUPS, ERROR_GROUPS])
def test_the_group_by_pattern_accepts_exactly_what_the_server_accepts(value, allowed):
    try:
        parse_group_by(value, allowed=allowed)
        accepted = True
    except Exception:
        accepted = False
    assert bool(re.search(group_by_pattern(allowed), value)) == accepted


@pytest.mark.parametrize("value", ["a", "a,b", "a,,b", ",", " a", "x" * 200, "x" * 201, ",".join(["a"] * 100),
                                   ",".join(["a"] * 101), "success,failed", "success, failed", "succes"])  # fmt: skip
@pytest.mark.parametrize("choices", [None, ["success", "failed", "pending"]])
def test_filter_patterns_accept_exactly_what_the_filter_accepts(value, choices):
    field = MultiValueField(choices=choices, max_length=200, required=False)
    try:
        field.clean(value.split(","))
        accepted = True
    except ValidationError:
        accepted = False
    assert bool(re.search(multi_value_pattern(choices=choices, max_length=200), value)) == accepted
