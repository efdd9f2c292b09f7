"""OpenAPI extensions: how the schema describes API key authentication (so generated clients send it), and the
postprocessing hook that declares what every operation can answer besides success.

The error answers are the same for every view (config.exceptions renders them), so they are declared here once
from what each operation has (a key, path parameters, a JSON body) rather than repeated in decorators. Through
extend_schema's `extensions`, a view can add statuses (`x-error-statuses: [409]`), answers of its own
(`x-responses`), component schemas (`x-components`), mark a raw request schema required
(`x-request-body-required`), and a query parameter can refuse the empty value (`x-empty-is-error`).
"""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from config.errors import ERROR_CODES


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer <key>`."}


ERROR_COMPONENT = "Error"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The body of every error answer.",
    "properties": {
        "error": {
            "type": "string",
            "enum": sorted(set(ERROR_CODES.values())),
            "description": "A stable code: branch on this.",
        },
        "detail": {"type": "string", "description": "What is wrong, for people (naming the fields at fault)."},
        "fields": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": "Each field or parameter at fault (a dotted path into the body) and what is wrong with it.",
        },
    },
    "required": ["error", "detail"],
    "additionalProperties": False,
}

_DESCRIPTIONS = {
    400: "Invalid input: a parameter, the body, or the fields named in `fields`.",
    401: "Missing, invalid or revoked API key.",
    404: "Nothing with this id in the key's organization.",
    406: "The Accept header names no media type this operation answers with.",
    414: "The request line (path and query string) is over the web server's limit.",
    409: "The object is not in a state that allows this.",
    413: "The body is over the size limit.",
    415: "The body's Content-Type is not one this operation reads.",
    429: "Too many requests for this API key: retry after Retry-After seconds.",
    503: "The database is unavailable: retry after Retry-After seconds.",
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}


def _error_response(status: int) -> dict[str, Any]:
    if status == 414:  # answered by the web server (gunicorn) before Django, as text
        return {"description": _DESCRIPTIONS[status]}
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}},
    }
    if status == 503:
        response["headers"] = {"Retry-After": {**_RETRY_AFTER, "required": True}}
    elif status == 429:
        response["headers"] = {"Retry-After": _RETRY_AFTER}
    return response


# What each Server-Sent Event of a text/event-stream answer is (OpenAPI 3.0 describes a stream by one event):
# `data` is one JSON object, or `[DONE]` at the end; comments (`: ping`) carry no event.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One Server-Sent Event: `data` holds a JSON object (a typed message, a stop reason, usage or an "
    "error), or `[DONE]` after the last one.",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


def _error_statuses(operation: dict[str, Any]) -> set[int]:
    """What any operation can answer: 400 (a NUL in the path, a bad parameter or body), 406 (Accept), 429 and
    503 (Retry-After); 401 with a key; 404 with path parameters; 414 with query parameters; 413 and 415 with
    a JSON body; plus what it names."""
    statuses = {400, 406, 429, 503}
    if operation.get("security"):
        statuses.add(401)
    if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
        statuses.add(404)
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        statuses.update({413, 415})
    if any(parameter.get("in") == "query" for parameter in operation.get("parameters", [])):
        statuses.add(414)
    statuses.update(operation.pop("x-error-statuses", []))
    return statuses


def _pin_discriminators(schemas: dict[str, Any]) -> None:
    """Each member of a discriminated union names its own discriminator value (an enum of one), so a validator
    checking a body against one member cannot accept another member's shape."""
    for schema in schemas.values():
        discriminator = schema.get("discriminator") if isinstance(schema, dict) else None
        if not discriminator or "mapping" not in discriminator:
            continue
        name = discriminator["propertyName"]
        for value, ref in discriminator["mapping"].items():
            member = schemas.get(ref.rsplit("/", 1)[-1])
            if member and name in member.get("properties", {}):
                member["properties"][name] = {**member["properties"][name], "enum": [value]}


def postprocess_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the Error component, every operation's error answers, optional query
    parameters that may be sent empty (the API reads `?x=` as `x` not given), and pinned discriminators."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_COMPONENT] = ERROR_SCHEMA
    for item in result.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if operation.pop("x-request-body-required", False):  # a raw schema cannot say so itself
                operation["requestBody"]["required"] = True
            # An operation may bring component schemas and its own error answers (OTLP's google.rpc.Status).
            schemas.update(operation.pop("x-components", {}))
            operation["responses"].update(operation.pop("x-responses", {}))
            for status in sorted(_error_statuses(operation)):
                operation["responses"].setdefault(str(status), _error_response(status))
            for response in operation["responses"].values():
                stream = response.get("content", {}).get("text/event-stream")
                if stream is not None:
                    stream["schema"] = SSE_EVENT_SCHEMA
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and not parameter.get("required"):
                    if parameter.pop("x-empty-is-error", False):
                        continue
                    parameter["allowEmptyValue"] = True
    for schema in schemas.values():  # a serializer that refuses unknown fields says so
        if isinstance(schema, dict) and "x-additional-properties" in schema:
            schema["additionalProperties"] = schema.pop("x-additional-properties")
    _pin_discriminators(schemas)
    return result
