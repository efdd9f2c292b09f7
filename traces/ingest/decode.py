"""OTLP/HTTP trace bodies -> plain span records: protobuf or the OTLP JSON encoding, optionally gzip.

The OTLP JSON encoding differs from protobuf's canonical JSON in its ids (hex, not base64); they are rewritten
before the protobuf JSON parser sees them, so both encodings go through the same message type.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from config.errors import ApplicationError
from steps.truncation import json_truncate, text_truncate

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class OtlpDecodeError(ApplicationError):
    """The body is not a valid OTLP ExportTraceServiceRequest (400)."""


class OtlpTooLarge(ApplicationError):
    """The body, or what it inflates to, is over the size limit (413)."""

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra=extra, status_code=413)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one request may cost to decode: inflated bytes, spans, and bytes per attribute value (cut above it)."""

    max_body_bytes: int
    max_spans: int
    max_attribute_bytes: int


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
    cut_attributes: list[str] = field(default_factory=list)  # keys of attribute values cut to the limit

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
# A JSON body may hold this many objects per span it is allowed (attributes are two objects each); the bound
# stops a body of millions of empty objects before they are all built.
_JSON_OBJECTS_PER_SPAN = 64


def _too_many_spans(limit: int) -> OtlpTooLarge:
    return OtlpTooLarge(
        f"Request holds more than {limit} spans (STEPLENS_OTLP_MAX_SPANS_PER_REQUEST): send smaller batches.",
        extra={"max_spans": limit},
    )


def _rewrite_ids(document: Any, *, max_spans: int) -> None:
    """Hex ids to base64 (what the protobuf JSON parser reads), counting spans: 413 past `max_spans`."""
    if not isinstance(document, dict):
        raise OtlpDecodeError("Body must be a JSON object.")
    count = 0
    for resource_spans in _json_list(document, "resourceSpans", "resource_spans"):
        for scope_spans in _json_list(resource_spans, "scopeSpans", "scope_spans"):
            spans = _json_list(scope_spans, "spans")
            count += len(spans)
            if count > max_spans:
                raise _too_many_spans(max_spans)
            for span in spans:
                if not isinstance(span, dict):
                    continue  # the protobuf parser says what is wrong with it
                for key in _ID_KEYS:
                    if key in span:
                        span[key] = _hex_to_b64(span[key])
                for link in _json_list(span, "links"):
                    for key in _ID_KEYS:
                        if isinstance(link, dict) and key in link:
                            link[key] = _hex_to_b64(link[key])


def _json_list(document: Any, *keys: str) -> list:
    if not isinstance(document, dict):
        return []
    for key in keys:
        value = document.get(key)
        if value:
            return value if isinstance(value, list) else []
    return []


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _submessages(data: bytes, start: int, end: int, number: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each length-delimited field `number` of the message in data[start:end], skipping the rest."""
    pos, groups = start, 0
    while pos < end:
        tag, pos = _varint(data, pos, end)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if groups == 0 and tag >> 3 == number and pos + length <= end:
                yield pos, pos + length
            pos += length
        elif wire == 3:  # a (deprecated) group: skipped with whatever it holds
            groups += 1
        elif wire == 4 and groups:
            groups -= 1
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed
        if pos > end:
            raise _Malformed
    if groups:
        raise _Malformed


def protobuf_span_count(body: bytes, *, limit: int) -> int:
    """The spans of a protobuf ExportTraceServiceRequest, counted on the wire without building any message
    (resource_spans = 1 -> scope_spans = 2 -> spans = 2); stops once past `limit`, so a body of millions of
    empty spans costs microseconds, not gigabytes."""
    count = 0
    try:
        for rs_start, rs_end in _submessages(body, 0, len(body), 1):
            for ss_start, ss_end in _submessages(body, rs_start, rs_end, 2):
                for _ in _submessages(body, ss_start, ss_end, 2):
                    count += 1
                    if count > limit:
                        return count
    except _Malformed as exc:
        raise OtlpDecodeError("Body is not a valid protobuf ExportTraceServiceRequest.") from exc
    return count


def _json_document(body: bytes, *, max_objects: int) -> Any:
    objects = 0

    def counted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal objects
        objects += 1
        if objects > max_objects:
            raise OtlpTooLarge(
                f"JSON body holds more than {max_objects} objects: send fewer spans per request.",
                extra={"max_objects": max_objects},
            )
        return dict(pairs)

    try:
        return json.loads(body, object_pairs_hook=counted)
    except RecursionError as exc:
        raise OtlpDecodeError("JSON body is nested too deeply.") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise OtlpDecodeError("Body is not valid JSON.", extra={"reason": str(exc)[:200]}) from exc


def parse_request(body: bytes, *, content_type: str, max_spans: int) -> ExportTraceServiceRequest:
    """Parse an ExportTraceServiceRequest from protobuf or OTLP JSON bytes; 400 when it is not one, 413 when it
    holds more than `max_spans` spans (counted before the request is built)."""
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        if protobuf_span_count(body, limit=max_spans) > max_spans:
            raise _too_many_spans(max_spans)
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            raise OtlpDecodeError("Body is not a valid protobuf ExportTraceServiceRequest.") from exc
        return request
    document = _json_document(body, max_objects=max(1000, max_spans * _JSON_OBJECTS_PER_SPAN))
    _rewrite_ids(document, max_spans=max_spans)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except RecursionError as exc:
        raise OtlpDecodeError("JSON body is nested too deeply.") from exc
    except (json_format.ParseError, TypeError, ValueError, binascii.Error) as exc:
        raise OtlpDecodeError(
            "Body is not a valid OTLP JSON ExportTraceServiceRequest.", extra={"reason": str(exc)[:300]}
        ) from exc
    return request


def decode_request(
    body: bytes, *, content_type: str, content_encoding: str, limits: DecodeLimits
) -> ExportTraceServiceRequest:
    """gunzip (when `content_encoding` is gzip) and parse_request, within `limits`."""
    raw = gunzip(body, limit=limits.max_body_bytes) if content_encoding == "gzip" else body
    return parse_request(raw, content_type=content_type, max_spans=limits.max_spans)


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


def capped_value(value: Any, *, max_bytes: int) -> tuple[Any, bool]:
    """An attribute value cut to `max_bytes` (visibly), and whether it was cut. A string holding a JSON document
    (messages, as gen_ai.input.messages carries them) is cut inside, so it stays valid JSON and its beginning
    usable; other strings keep their first `max_bytes` bytes."""
    if isinstance(value, str):
        if value[:1] in ("[", "{") and len(value) > max_bytes // 4:
            try:
                document = json.loads(value)
            except (RecursionError, ValueError):
                document = None
            if isinstance(document, list | dict):
                fitted = json_truncate(document, max_bytes=max_bytes)
                return (json.dumps(fitted.value, ensure_ascii=False), True) if fitted.cut else (value, False)
        cut = text_truncate(value, max_bytes=max_bytes)
        return cut.value, cut.cut
    if isinstance(value, list | dict):
        fitted = json_truncate(value, max_bytes=max_bytes)
        return fitted.value, fitted.cut
    return value, False


def attributes_dict(attributes: Any, *, max_bytes: int | None = None, cut: list[str] | None = None) -> dict[str, Any]:
    """OTLP KeyValues as a dict; with `max_bytes`, values over it are cut (capped_value) and their keys added to
    `cut`."""
    out = {clean(kv.key): any_value(kv.value) for kv in attributes}
    if max_bytes is not None:
        for kv in attributes:
            if kv.value.ByteSize() > max_bytes:
                key = clean(kv.key)
                out[key], was_cut = capped_value(out[key], max_bytes=max_bytes)
                if was_cut and cut is not None:
                    cut.append(key)
    return out


def spans_from_request(request: ExportTraceServiceRequest, *, max_attribute_bytes: int) -> list[OtlpSpan]:
    """Flatten resource -> scope -> span into OtlpSpan records, in request order; attribute values over
    `max_attribute_bytes` are cut and named in the span's cut_attributes."""
    out: list[OtlpSpan] = []
    limit = max_attribute_bytes
    small = request.ByteSize() <= limit  # then no value can be over the limit: nothing to measure
    for resource_spans in request.resource_spans:
        resource = attributes_dict(resource_spans.resource.attributes, max_bytes=None if small else limit)
        for scope_spans in resource_spans.scope_spans:
            scope = clean(scope_spans.scope.name)
            for span in scope_spans.spans:
                cut: list[str] = []
                # Only a span bigger than the limit can hold a value over it: the others skip the per-value sizes.
                big = limit if not small and span.ByteSize() > limit else None
                out.append(
                    OtlpSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=clean(span.name) if small else text_truncate(clean(span.name), max_bytes=limit).value,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=attributes_dict(span.attributes, max_bytes=big, cut=cut),
                        events=[
                            SpanEvent(
                                name=clean(e.name),
                                time_ns=e.time_unix_nano,
                                attributes=attributes_dict(e.attributes, max_bytes=big, cut=cut),
                            )
                            for e in span.events
                        ],
                        status_code=span.status.code,
                        status_message=clean(span.status.message)
                        if small
                        else text_truncate(clean(span.status.message), max_bytes=limit).value,
                        resource=resource,
                        scope=scope,
                        cut_attributes=cut,
                    )
                )
    return out


def spans_for_precheck(
    request: ExportTraceServiceRequest, *, keys: frozenset[str], max_attribute_bytes: int
) -> list[OtlpSpan]:
    """Like spans_from_request, but each span carries only the attributes named in `keys` and no events.

    Enough for the accept-time checks (ids, times, kind, token counts) at a fraction of the cost: the large
    attribute values (messages) are never converted, only measured: the ones over `max_attribute_bytes`, which
    spans_from_request will cut, are named in cut_attributes.
    """
    out: list[OtlpSpan] = []
    limit = max_attribute_bytes
    small = request.ByteSize() <= limit
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                cut: list[str] = []
                if not small and span.ByteSize() > limit:
                    for kv in [*span.attributes, *(kv for event in span.events for kv in event.attributes)]:
                        # The wire size only picks candidates (it counts framing bytes); what mapping will cut is
                        # decided by the same rule mapping uses, so the 200's message names exactly what is cut.
                        if kv.value.ByteSize() > limit and capped_value(any_value(kv.value), max_bytes=limit)[1]:
                            cut.append(clean(kv.key))
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
                        cut_attributes=cut,
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
