"""What one OTLP request may cost: its framing read whole, spans counted before anything is built, deep JSON
refused, attribute values and provider traces cut visibly (and said so in partial_success)."""

import gzip
import io
import json

import pytest
from django.db import InterfaceError, OperationalError
from django.test import RequestFactory
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.trace import SpanKind

from steps.models import Message, ProviderTrace, Step
from steps.provider_traces import ProviderTraceIn, provider_trace_build, provider_trace_copy_rows, provider_trace_record
from steps.truncation import TRUNCATED_KEY, json_depth_capped, json_truncate
from tests.factories import StepFactory
from tests.traces.test_ingest import URL, _agent_trace, _json_body, _spans
from traces.api.views import BodyError, read_body
from traces.ingest.decode import protobuf_span_count
from traces.models import IngestBatch

PROTOBUF = "application/x-protobuf"


def _post(client, body: bytes, content_type: str = PROTOBUF, **headers):
    return client.generic("POST", URL, body, content_type=content_type, **headers)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def empty_span_bomb(spans: int) -> bytes:
    """An ExportTraceServiceRequest of `spans` empty spans in one scope: two bytes per span on the wire."""
    scope_spans = b"\x12\x00" * spans
    resource_spans = b"\x12" + _varint(len(scope_spans)) + scope_spans
    return b"\x0a" + _varint(len(resource_spans)) + resource_spans


def _chat_with_input(content: str):
    input_messages = [{"role": "user", "parts": [{"type": "text", "content": content}]}]
    output_messages = [{"role": "assistant", "parts": [{"type": "text", "content": "ok"}]}]

    def build(tracer) -> None:
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as chat:
            chat.set_attributes(
                {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                 "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 10,
                 "gen_ai.usage.output_tokens": 2, "gen_ai.input.messages": json.dumps(input_messages),
                 "gen_ai.output.messages": json.dumps(output_messages)}
            )  # fmt: skip

    return build


def test_the_wire_count_of_spans_matches_the_parsed_request():
    body = encode_spans(_spans(_agent_trace) * 3).SerializeToString()
    parsed = ExportTraceServiceRequest.FromString(body)
    expected = sum(len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans)
    assert protobuf_span_count(body, limit=10_000) == expected == 12
    assert protobuf_span_count(body, limit=5) == 6  # stops once past the limit
    assert protobuf_span_count(empty_span_bomb(4_000_000), limit=10) == 11


@pytest.mark.django_db
def test_a_span_bomb_is_413_naming_the_limit_and_stores_nothing(api_client, settings):
    bomb = gzip.compress(empty_span_bomb(4_000_000), compresslevel=9)
    assert len(bomb) < 16_000  # ~8 KB on the wire, 8 MB and 4 million spans inflated
    response = _post(api_client, bomb, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413
    from google.rpc.status_pb2 import Status

    assert "10000 spans" in Status.FromString(response.content).message
    assert IngestBatch.objects.count() == Step.objects.count() == 0


@pytest.mark.django_db
def test_span_limit_applies_to_protobuf_and_json_alike(api_client, settings):
    spans = _spans(_agent_trace)  # 4 spans
    settings.STEPLENS_OTLP_MAX_SPANS_PER_REQUEST = 3
    assert _post(api_client, encode_spans(spans).SerializeToString()).status_code == 413
    response = _post(api_client, json.dumps(_json_body(spans)).encode(), "application/json")
    assert response.status_code == 413 and "more than 3 spans" in response.json()["message"]
    assert IngestBatch.objects.count() == 0
    settings.STEPLENS_OTLP_MAX_SPANS_PER_REQUEST = 4
    assert _post(api_client, encode_spans(spans).SerializeToString()).status_code == 200
    assert Step.objects.count() == 2


@pytest.mark.django_db
def test_a_json_body_of_millions_of_empty_objects_is_refused_before_it_is_built(api_client):
    body = b'{"resourceSpans": [{"scopeSpans": [{"spans": [' + b",".join([b"{}"] * 2_000_000) + b"]}]}]}"
    response = _post(api_client, body, "application/json")
    assert response.status_code == 413 and "objects" in response.json()["message"]
    assert IngestBatch.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_json_nested_100000_levels_deep_is_a_400_with_a_json_body(api_client, opening):
    closing = b"]" if opening == b"[" else b"}"
    body = b'{"resourceSpans": ' + opening * 100_000 + b"1" + closing * 100_000 + b"}"
    response = _post(api_client, body, "application/json")
    assert response.status_code == 400
    assert response.json()["message"] == "JSON body is nested too deeply."
    assert IngestBatch.objects.count() == 0


@pytest.mark.django_db
def test_an_empty_body_is_a_400_and_a_request_without_spans_stores_nothing(api_client):
    response = _post(api_client, b"")
    assert response.status_code == 400
    response = _post(api_client, b"{}", "application/json")  # a valid export of no spans
    assert response.status_code == 200 and response.json() == {}
    assert IngestBatch.objects.count() == 0


def _environ_request(body: bytes, **meta):
    request = RequestFactory().generic("POST", URL, b"", content_type=PROTOBUF)
    request.META.pop("CONTENT_LENGTH", None)
    request.META.update({"wsgi.input": io.BytesIO(body), **meta})
    return request


def test_a_body_without_content_length_is_read_to_the_end_of_a_terminated_stream():
    body = b"x" * 300_000  # several read pieces
    assert read_body(_environ_request(body, **{"wsgi.input_terminated": True}), limit=len(body)) == body
    with pytest.raises(BodyError) as too_large:
        read_body(_environ_request(body + b"y", **{"wsgi.input_terminated": True}), limit=len(body))
    assert too_large.value.status_code == 413


def test_an_asgi_request_without_content_length_is_read_whole():
    from django.core.handlers.asgi import ASGIRequest

    body = b"y" * 200_000
    scope = {"type": "http", "method": "POST", "path": URL, "query_string": b"",
             "headers": [(b"content-type", PROTOBUF.encode()), (b"transfer-encoding", b"chunked")]}  # fmt: skip
    assert read_body(ASGIRequest(scope, io.BytesIO(body)), limit=len(body)) == body


def test_a_chunked_body_the_server_cannot_terminate_is_411_and_a_short_one_400():
    chunked = _environ_request(b"5\r\nhello\r\n0\r\n\r\n", HTTP_TRANSFER_ENCODING="chunked")
    with pytest.raises(BodyError) as unknown:
        read_body(chunked, limit=1000)
    assert unknown.value.status_code == 411
    short = RequestFactory().generic("POST", URL, b"abc", content_type=PROTOBUF)
    short.META["CONTENT_LENGTH"] = "10"
    with pytest.raises(BodyError) as cut:
        read_body(short, limit=1000)
    assert cut.value.status_code == 400


@pytest.mark.django_db
def test_a_5_mb_attribute_is_stored_cut_and_the_answer_says_so(api_client, settings):
    settings.STEPLENS_OTLP_MAX_BODY_BYTES = 16 * 1024 * 1024
    content = "Q" * 5_000_000
    body = encode_spans(_spans(_chat_with_input(content))).SerializeToString()
    response = _post(api_client, body)
    assert response.status_code == 200
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 0
    assert "1 attribute value(s) truncated" in partial.error_message
    assert "gen_ai.input.messages" in partial.error_message

    step = Step.objects.get()
    user = Message.objects.get(step=step, role="user")
    assert user.content[0]["text"].startswith("QQQ") and len(user.content[0]["text"]) <= 100_030
    trace = ProviderTrace.objects.get(step=step)
    stored = json.dumps(trace.request_json, ensure_ascii=False).encode()
    assert len(stored) <= settings.STEPLENS_PROVIDER_TRACE_MAX_BYTES
    assert "…[truncated:" in stored.decode()
    assert trace.request_json["model"] == "gpt-4o-mini"  # the structure is kept, the long text cut


@pytest.mark.django_db
def test_a_provider_trace_over_its_limit_is_cut_and_the_batch_result_says_so(api_client, settings):
    settings.STEPLENS_PROVIDER_TRACE_MAX_BYTES = 20_000
    body = encode_spans(_spans(_chat_with_input("w" * 50_000))).SerializeToString()
    response = _post(api_client, body)
    assert response.status_code == 200
    message = ExportTraceServiceResponse.FromString(response.content).partial_success.error_message
    assert "1 provider trace(s) truncated to STEPLENS_PROVIDER_TRACE_MAX_BYTES (20000 bytes)" in message
    assert IngestBatch.objects.get().result["message"] == message
    trace = ProviderTrace.objects.get()
    assert len(json.dumps(trace.request_json, ensure_ascii=False).encode()) <= 20_000


@pytest.mark.django_db
def test_the_agent_loop_write_and_the_copy_rows_cut_provider_traces_alike(settings):
    settings.STEPLENS_PROVIDER_TRACE_MAX_BYTES = 10_000
    step = StepFactory()
    trace = ProviderTraceIn(
        provider="openai",
        request_json={"model": "gpt-4o", "messages": [{"role": "user", "content": "z" * 100_000}]},
        response_json={"choices": [{"text": str(i)} for i in range(5_000)]},
    )
    stored = provider_trace_record(step=step, trace=trace)
    stored.refresh_from_db()
    built = provider_trace_build(step=step, trace=trace)
    (row,) = provider_trace_copy_rows(items=[(step, trace)], created_at=stored.created_at)
    for field, column in (("request_json", 6), ("response_json", 7)):
        value = getattr(stored, field)
        assert len(json.dumps(value, ensure_ascii=False).encode()) <= 10_000
        assert value == getattr(built, field) == json.loads(row[column])
    assert stored.request_json["messages"][0]["content"].startswith("zzz")
    assert "…[truncated: " in stored.request_json["messages"][0]["content"]
    assert TRUNCATED_KEY in stored.response_json  # too many small items: a marked preview of the JSON


def test_json_truncate_keeps_small_values_and_always_gives_valid_json_within_the_budget():
    small = {"a": [1, 2, {"b": "c"}]}
    assert json_truncate(small, max_bytes=1000).value is small and not json_truncate(small, max_bytes=1000).cut
    deep: list = []
    cursor = deep
    for _ in range(5_000):
        cursor.append([])
        cursor = cursor[0]
    for value in (deep, {"k": "é" * 10_000}, ["x" * 1000] * 1000, "y" * 100_000):
        result = json_truncate(value, max_bytes=4096)
        assert result.cut
        assert len(json.dumps(result.value, ensure_ascii=False).encode()) <= 4096


@pytest.mark.django_db
@pytest.mark.parametrize("where", ["authentication", "accept"])
@pytest.mark.parametrize("error", [OperationalError("the database system is shutting down"), InterfaceError("closed")])
def test_a_database_failure_anywhere_in_ingest_is_a_503_with_retry_after(api_client, monkeypatch, where, error):
    def fail(**kwargs):
        raise error

    if where == "authentication":
        monkeypatch.setattr("accounts.authentication.api_key_authenticate", fail)
    else:
        monkeypatch.setattr("traces.api.views.trace_batch_accept", fail)
    response = _post(api_client, encode_spans(_spans(_agent_trace)).SerializeToString())
    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert IngestBatch.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [500, 5_000])
def test_an_attribute_holding_deeply_nested_json_still_becomes_a_step(api_client, depth):
    """Within the JSON parser's limit (500) the value is cut at a depth recursive code can walk; past it (5,000)
    it is kept as text. Either way the batch is mapped instead of failing on a RecursionError."""
    messages = '[{"role": "user", "parts": [{"type": "text", "content": ' + "[" * depth + "]" * depth + "}]}]"

    def build(tracer) -> None:
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as chat:
            chat.set_attributes(
                {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 1,
                 "gen_ai.input.messages": messages}
            )  # fmt: skip

    assert _post(api_client, encode_spans(_spans(build)).SerializeToString()).status_code == 200
    batch = IngestBatch.objects.get()
    assert batch.status == "done", batch.error
    assert Step.objects.count() == 1 and ProviderTrace.objects.count() == 1


def test_json_depth_capped_returns_shallow_values_unchanged_and_cuts_deep_ones():
    shallow = {"a": [[{"b": 1}]]}
    assert json_depth_capped(shallow) is shallow
    deep: list = []
    cursor = deep
    for _ in range(10_000):
        cursor.append([])
        cursor = cursor[0]
    capped = json_depth_capped(deep)
    assert json.dumps(capped).startswith("[" * 64 + '"') and "nested too deeply" in json.dumps(capped)


@pytest.mark.parametrize("size", [2000, 2001])
def test_accept_time_and_mapping_name_the_same_cut_attributes(size):
    """The accept-time check measures values on the wire (framing bytes included) only to find candidates: a
    value of exactly the limit is cut by neither, one byte more by both."""
    from traces.ingest.decode import spans_for_precheck, spans_from_request

    def build(tracer) -> None:
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as chat:
            chat.set_attributes({"gen_ai.operation.name": "chat", "app.note": "x" * size})

    request = encode_spans(_spans(build))
    checked = spans_for_precheck(request, keys=frozenset(), max_attribute_bytes=2000)[0].cut_attributes
    mapped = spans_from_request(request, max_attribute_bytes=2000)[0].cut_attributes
    assert checked == mapped == ([] if size == 2000 else ["app.note"])
