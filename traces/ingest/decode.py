"""OTLP/HTTP trace bodies -> plain span records: protobuf or the OTLP JSON encoding, optionally gzip.

The OTLP JSON encoding differs from protobuf's canonical JSON in its ids (hex, not base64); they are rewritten
before the protobuf JSON parser sees them, so both encodings go through the same message type.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from config.errors import ApplicationError

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class OtlpDecodeError(ApplicationError):
    """The body is not a valid OTLP ExportTraceServiceRequest (400)."""


class OtlpTooLarge(ApplicationError):
    """The body, or what it inflates to, is over the size limit (413)."""

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra=extra, status_code=413)


@dataclass(slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class OtlpSpan:
    """One span as the mapping needs it; ids are lowercase hex ('' when absent or malformed)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[SpanEvent] = field(default_factory=list)
    status_code: int = 0  # 0 unset, 1 ok, 2 error
    status_message: str = ""
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""

    @property
    def ids_valid(self) -> bool:
        return (
            len(self.trace_id) == 32
            and len(self.span_id) == 16
            and self.trace_id != "0" * 32
            and self.span_id != "0" * 16
        )


def gunzip(body: bytes, *, limit: int) -> bytes:
    """Inflate a gzip body, refusing to produce more than `limit` bytes (a small bomb cannot fill memory)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise OtlpDecodeError("Body is not valid gzip.", extra={"reason": str(exc)}) from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise OtlpTooLarge("Decompressed body is over the size limit.", extra={"limit_bytes": limit})
    if not inflater.eof:
        raise OtlpDecodeError("Body is truncated gzip.")
    return out


def _hex_to_b64(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError as exc:
        raise OtlpDecodeError("Ids must be hex strings in the OTLP JSON encoding.", extra={"id": value[:64]}) from exc


_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _rewrite_ids(document: Any) -> None:
    if not isinstance(document, dict):
        raise OtlpDecodeError("Body must be a JSON object.")
    for resource_spans in document.get("resourceSpans") or document.get("resource_spans") or []:
        for scope_spans in resource_spans.get("scopeSpans") or resource_spans.get("scope_spans") or []:
            for span in scope_spans.get("spans") or []:
                for key in _ID_KEYS:
                    if key in span:
                        span[key] = _hex_to_b64(span[key])
                for link in span.get("links") or []:
                    for key in _ID_KEYS:
                        if key in link:
                            link[key] = _hex_to_b64(link[key])


def parse_request(body: bytes, *, content_type: str) -> ExportTraceServiceRequest:
    """Parse an ExportTraceServiceRequest from protobuf or OTLP JSON bytes; 400 when it is not one."""
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            raise OtlpDecodeError("Body is not a valid protobuf ExportTraceServiceRequest.") from exc
        return request
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OtlpDecodeError("Body is not valid JSON.", extra={"reason": str(exc)[:200]}) from exc
    _rewrite_ids(document)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, binascii.Error) as exc:
        raise OtlpDecodeError(
            "Body is not a valid OTLP JSON ExportTraceServiceRequest.", extra={"reason": str(exc)[:300]}
        ) from exc
    return request


def clean(text: str) -> str:
    """The text PostgreSQL can store: a NUL character (legal in OTLP strings, refused by text and jsonb
    columns) becomes U+FFFD, so one odd attribute does not fail its whole batch."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def clean_value(value: Any) -> Any:
    """`clean` applied to every string (and key) of a decoded JSON value."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [clean_value(item) for item in value]
    if isinstance(value, dict):
        return {clean(str(key)): clean_value(item) for key, item in value.items()}
    return value


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as a plain Python value (lists and dicts for arrays and kvlists)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return clean(value.string_value)
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {clean(kv.key): any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def attributes_dict(attributes: Any) -> dict[str, Any]:
    return {clean(kv.key): any_value(kv.value) for kv in attributes}


def spans_from_request(request: ExportTraceServiceRequest) -> list[OtlpSpan]:
    """Flatten resource -> scope -> span into OtlpSpan records, in request order."""
    out: list[OtlpSpan] = []
    for resource_spans in request.resource_spans:
        resource = attributes_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = clean(scope_spans.scope.name)
            for span in scope_spans.spans:
                out.append(
                    OtlpSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=clean(span.name),
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=attributes_dict(span.attributes),
                        events=[
                            SpanEvent(
                                name=clean(e.name), time_ns=e.time_unix_nano, attributes=attributes_dict(e.attributes)
                            )
                            for e in span.events
                        ],
                        status_code=span.status.code,
                        status_message=clean(span.status.message),
                        resource=resource,
                        scope=scope,
                    )
                )
    return out


def spans_for_precheck(request: ExportTraceServiceRequest, *, keys: frozenset[str]) -> list[OtlpSpan]:
    """Like spans_from_request, but each span carries only the attributes named in `keys` and no events.

    Enough for the accept-time checks (ids, times, kind, token counts) at a fraction of the cost: the large
    attribute values (messages) are never converted.
    """
    out: list[OtlpSpan] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    OtlpSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id="",
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={kv.key: any_value(kv.value) for kv in span.attributes if kv.key in keys},
                    )
                )
    return out


def encode_response(*, rejected: int, message: str, content_type: str) -> bytes:
    """An ExportTraceServiceResponse (partial_success only when something was rejected or there is a message)."""
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if content_type == PROTOBUF:
        return response.SerializeToString()
    return json.dumps(json_format.MessageToDict(response)).encode()
