"""The OpenAPI description of POST /v1/traces: the OTLP/JSON ExportTraceServiceRequest as the decoder reads it
(protobuf's JSON mapping, ids in hex, unknown keys ignored, null meaning "not set"), the protobuf body as bytes,
and the google.rpc.Status errors.

Components are handed to the schema through the operation's `x-components` (see config.openapi)."""

from typing import Any

_UINT32 = {
    "oneOf": [{"type": "integer", "minimum": 0, "maximum": 2**32 - 1}, {"type": "string", "pattern": "^[0-9]{1,9}$"}]
}
_INT64 = {
    "oneOf": [
        {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        {"type": "string", "pattern": "^-?[0-9]{1,18}$"},
    ]
}
_UINT64 = {
    "oneOf": [{"type": "integer", "minimum": 0, "maximum": 2**64 - 1}, {"type": "string", "pattern": "^[0-9]{1,19}$"}]
}
_HEX_ID = {"type": "string", "pattern": "^(?:[0-9a-fA-F]{2})*$", "description": "Hex, as OTLP/JSON writes ids."}
# Bytes are base64 (OpenAPI's "byte" format); protobuf's parser also reads many malformed strings, leniently.
_BASE64 = {"type": "string", "format": "byte"}


def _enum(names: list[str]) -> dict[str, Any]:
    """A protobuf enum as the decoder reads it: any string (a name; unknown names are skipped), any number in the
    int32 range (truncated; proto3 enums are open), or a boolean (0 or 1)."""
    return {
        "oneOf": [
            {"type": "string", "description": "One of: " + ", ".join(names)},
            {
                "type": "number",
                "minimum": -(2**31) - 1,
                "exclusiveMinimum": True,
                "maximum": 2**31,
                "exclusiveMaximum": True,
            },
            {"type": "boolean"},
        ]
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _message(properties: dict[str, Any], description: str) -> dict[str, Any]:
    """A protobuf message in JSON: every field optional and nullable (null is "not set"), other keys ignored.

    protobuf's JSON parser also reads a string or a list of strings as a message (it iterates them as field
    names, and skips the unknown ones): the schema says what the decoder accepts, quirks included."""
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {name: {**schema, "nullable": True} for name, schema in properties.items()},
            },
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
        ],
        "description": description,
    }


def _object(properties: dict[str, Any], description: str) -> dict[str, Any]:
    """The request itself: a JSON object (the decoder refuses anything else)."""
    return _message(properties, description)["oneOf"][0] | {"description": description}


def _list(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


_VALUE_KEYS = ("stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue", "bytesValue")
_VALUE_SCHEMAS: dict[str, Any] = {
    "stringValue": {"type": "string"},
    "boolValue": {"type": "boolean"},
    "intValue": _INT64,
    "doubleValue": {"oneOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]},
    "arrayValue": _message({"values": _list(_ref("OtlpAnyValue"))}, "A list of values."),
    "kvlistValue": _message({"values": _list(_ref("OtlpKeyValue"))}, "A list of key-values."),
    "bytesValue": _BASE64,
}

OTLP_COMPONENTS: dict[str, Any] = {
    # One of the value kinds at most (a protobuf oneof), or none.
    "OtlpAnyValue": {
        "description": "An attribute value: one of stringValue, boolValue, intValue, doubleValue, arrayValue, "
        "kvlistValue, bytesValue (or none).",
        "oneOf": [
            *(
                {"type": "object", "properties": {key: _VALUE_SCHEMAS[key]}, "required": [key]}
                | {"not": {"anyOf": [{"required": [other]} for other in _VALUE_KEYS if other != key]}}
                for key in _VALUE_KEYS
            ),
            {"type": "object", "not": {"anyOf": [{"required": [key]} for key in _VALUE_KEYS]}},
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
        ],
    },
    "OtlpKeyValue": _message({"key": {"type": "string"}, "value": _ref("OtlpAnyValue")}, "One attribute."),
    "OtlpSpan": _message(
        {
            "traceId": _HEX_ID,
            "spanId": _HEX_ID,
            "traceState": {"type": "string"},
            "parentSpanId": _HEX_ID,
            "flags": _UINT32,
            "name": {"type": "string"},
            "kind": _enum(
                [
                    "SPAN_KIND_UNSPECIFIED",
                    "SPAN_KIND_INTERNAL",
                    "SPAN_KIND_SERVER",
                    "SPAN_KIND_CLIENT",
                    "SPAN_KIND_PRODUCER",
                    "SPAN_KIND_CONSUMER",
                ]
            ),
            "startTimeUnixNano": _UINT64,
            "endTimeUnixNano": _UINT64,
            "attributes": _list(_ref("OtlpKeyValue")),
            "droppedAttributesCount": _UINT32,
            "events": _list(
                _message(
                    {
                        "timeUnixNano": _UINT64,
                        "name": {"type": "string"},
                        "attributes": _list(_ref("OtlpKeyValue")),
                        "droppedAttributesCount": _UINT32,
                    },
                    "A span event.",
                )
            ),
            "droppedEventsCount": _UINT32,
            "links": _list(
                _message(
                    {
                        "traceId": _HEX_ID,
                        "spanId": _HEX_ID,
                        "traceState": {"type": "string"},
                        "attributes": _list(_ref("OtlpKeyValue")),
                        "droppedAttributesCount": _UINT32,
                        "flags": _UINT32,
                    },
                    "A link to another span.",
                )
            ),
            "droppedLinksCount": _UINT32,
            "status": _message(
                {
                    "message": {"type": "string"},
                    "code": _enum(["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]),
                },
                "The span's status.",
            ),
        },
        "A span; GenAI spans (gen_ai.* or OpenInference llm.* attributes) become steps.",
    ),
    "OtlpExportTraceServiceRequest": _object(
        {
            "resourceSpans": _list(
                _message(
                    {
                        "resource": _message(
                            {"attributes": _list(_ref("OtlpKeyValue")), "droppedAttributesCount": _UINT32},
                            "The resource (service) that produced the spans.",
                        ),
                        "scopeSpans": _list(
                            _message(
                                {
                                    "scope": _message(
                                        {
                                            "name": {"type": "string"},
                                            "version": {"type": "string"},
                                            "attributes": _list(_ref("OtlpKeyValue")),
                                            "droppedAttributesCount": _UINT32,
                                        },
                                        "The instrumentation scope.",
                                    ),
                                    "spans": _list(_ref("OtlpSpan")),
                                    "schemaUrl": {"type": "string"},
                                },
                                "Spans of one instrumentation scope.",
                            )
                        ),
                        "schemaUrl": {"type": "string"},
                    },
                    "Spans of one resource.",
                )
            )
        },
        "OTLP/JSON ExportTraceServiceRequest.",
    ),
    "OtlpExportTraceServiceResponse": {
        "type": "object",
        "properties": {
            "partialSuccess": {
                "type": "object",
                "properties": {"rejectedSpans": {"type": "string"}, "errorMessage": {"type": "string"}},
            }
        },
    },
    "OtlpStatus": {
        "type": "object",
        "description": "google.rpc.Status: why the export was refused.",
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
        "required": ["code", "message"],
    },
}

_PROTOBUF = {"type": "string", "format": "binary"}
_STATUS_BODIES = {"application/json": _ref("OtlpStatus"), "application/x-protobuf": _PROTOBUF}
# 400 and 503 may also come before the view (a NUL in the path, the database down during authentication): then
# the body is the API's own error.
_STATUS_OR_ERROR = {
    "application/json": {"oneOf": [_ref("OtlpStatus"), _ref("Error")]},
    "application/x-protobuf": _PROTOBUF,
}


def _response(description: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": s} for media, s in content.items()}, **extra}


_RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "integer"}, "required": True, "description": "Seconds to wait before retrying."}
}

# extend_schema(**OTLP_TRACES_SCHEMA) on the view's post.
OTLP_TRACES_SCHEMA: dict[str, Any] = {
    # The JSON body is declared as what the decoder demands, a JSON object: protobuf's JSON parser skips unknown
    # keys and reads known ones leniently (numbers as strings, booleans as numbers, strings as messages...), so
    # the components describe the format for people rather than bound what is accepted.
    "request": {
        "application/x-protobuf": _PROTOBUF,
        "application/json": {
            "type": "object",
            "description": "An OTLP/JSON ExportTraceServiceRequest: see the OtlpExportTraceServiceRequest schema.",
        },
    },
    "responses": {
        (200, "application/x-protobuf"): _PROTOBUF,
        (200, "application/json"): _ref("OtlpExportTraceServiceResponse"),
    },
    "extensions": {
        "x-components": OTLP_COMPONENTS,
        "x-request-body-required": True,
        "x-responses": {
            "400": _response("The body is not an OTLP export request.", _STATUS_OR_ERROR),
            "411": _response("A chunked body the server in front cannot decode: send Content-Length.", _STATUS_BODIES),
            "413": _response("The body, inflated body or span count is over its limit.", _STATUS_BODIES),
            "415": _response("Content-Type or Content-Encoding not supported.", _STATUS_BODIES),
            "503": _response(
                "Ingest saturated, backlog full or database unavailable: retry later.",
                _STATUS_OR_ERROR,
                headers=_RETRY_AFTER,
            ),
        },
    },
    "description": "OTLP/HTTP trace export (protobuf or JSON, optionally gzip). 200 means the request is stored.",
}
