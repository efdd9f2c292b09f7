"""Ingest: POST /v1/traces turns GenAI spans (current, deprecated and OpenInference names) into runs and steps."""

import base64
import gzip
import json
import time

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from rest_framework.test import APIClient

from agents.models import Run, RunStatus
from steps.models import Message, ProviderTrace, Step, StepOrigin, StepStatus

URL = "/v1/traces"


def _spans(build) -> list:
    """Spans made by the real SDK: `build(tracer)` opens them."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop-assistant"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("third.party.instrumentation"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def _agent_trace(tracer, *, fail_second: bool = False) -> None:
    """invoke_agent -> chat (tool call) -> execute_tool -> chat, with current GenAI attribute names."""
    input_1 = [
        {"role": "system", "parts": [{"type": "text", "content": "You sell shoes."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Do you have size 44? key sk-abcdefghijklmnopqrstuv"}]},
    ]
    output_1 = [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_42", "name": "stock", "arguments": {"size": 44}}],
            "finish_reason": "tool_call",
        }
    ]
    with tracer.start_as_current_span("invoke_agent shoe-bot", kind=SpanKind.INTERNAL) as root:
        root.set_attributes(
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "shoe-bot", "gen_ai.agent.id": "asst_1",
             "gen_ai.conversation.id": "conv-1", "user.id": "u-1"}
        )  # fmt: skip
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as chat:
            chat.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                    "gen_ai.response.id": "chatcmpl-1",
                    "gen_ai.response.finish_reasons": ("tool_calls",),
                    "gen_ai.usage.input_tokens": 1500,
                    "gen_ai.usage.output_tokens": 40,
                    "gen_ai.usage.cache_read.input_tokens": 1024,
                    "gen_ai.usage.reasoning.output_tokens": 12,
                    "gen_ai.response.time_to_first_chunk": 0.35,
                    "gen_ai.request.temperature": 0.1,
                    "gen_ai.input.messages": json.dumps(input_1),
                    "gen_ai.output.messages": json.dumps(output_1),
                }
            )
        with tracer.start_as_current_span("execute_tool stock") as tool:
            tool.set_attributes(
                {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "stock", "gen_ai.tool.call.id": "call_42",
                 "gen_ai.tool.call.result": '{"in_stock": 3}'}
            )  # fmt: skip
            time.sleep(0.002)
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as chat:
            chat.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 1600,
                    "gen_ai.usage.output_tokens": 20,
                    "gen_ai.input.messages": json.dumps(
                        [
                            *input_1,
                            *output_1,
                            {
                                "role": "tool",
                                "parts": [{"type": "tool_call_response", "id": "call_42", "response": {"in_stock": 3}}],
                            },
                        ]
                    ),
                    "gen_ai.output.messages": json.dumps(
                        [{"role": "assistant", "parts": [{"type": "text", "content": "Yes, 3 pairs."}]}]
                    ),
                }
            )
            if fail_second:
                chat.add_event(
                    "exception",
                    {"exception.type": "RateLimitError", "exception.message": "429 Too Many Requests",
                     "exception.stacktrace": "Traceback (most recent call last): ..."},
                )  # fmt: skip
                chat.set_attribute("error.type", "rate_limit")
                chat.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))


def _export(live_server, api_key: str, spans: list, **kwargs) -> SpanExportResult:
    exporter = OTLPSpanExporter(
        endpoint=f"{live_server.url}{URL}", headers={"Authorization": f"Bearer {api_key}"}, timeout=10, **kwargs
    )
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def _json_body(spans: list) -> dict:
    """The OTLP JSON encoding: camelCase, ids as hex."""
    document = json_format.MessageToDict(encode_spans(spans))
    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return document


def _post(client: APIClient, body: bytes, content_type: str, **headers):
    return client.generic("POST", URL, body, content_type=content_type, **headers)


@pytest.mark.django_db(transaction=True)
def test_sdk_exporter_delivers_an_agent_trace_that_comes_back_as_a_run_with_steps(live_server, api_key, api_client):
    spans = _spans(_agent_trace)
    assert _export(live_server, api_key, spans) == SpanExportResult.SUCCESS

    run = Run.objects.get(origin="otlp")
    assert run.agent.name == "shoe-bot"
    assert run.status == RunStatus.COMPLETED and run.step_count == 2
    assert run.conversation_id == "conv-1" and run.user_id == "u-1"
    assert run.ttft_ns is not None and run.ttft_ns >= 350_000_000

    first, second = Step.objects.filter(run=run).order_by("created_at")
    assert first.origin == StepOrigin.OTLP and first.status == StepStatus.SUCCESS
    assert (first.provider_name, first.model, first.model_handle) == (
        "openai",
        "gpt-4o-mini-2024-07-18",
        "openai/gpt-4o-mini",
    )
    assert (first.prompt_tokens, first.completion_tokens, first.total_tokens) == (1500, 40, 1540)
    assert (first.cached_input_tokens, first.reasoning_tokens) == (1024, 12)
    assert first.finish_reason == "tool_calls" and first.response_id == "chatcmpl-1"
    assert first.cost_usd is not None and first.cost_usd > 0
    assert first.metrics.ttft_ns == 350_000_000
    assert first.metrics.tool_execution_ns and first.metrics.tool_execution_ns >= 2_000_000
    assert len(first.trace_id) == 32 and len(first.span_id) == 16 and first.trace_id == run.trace_id

    # Messages: the first step's turn (system, user), its tool call and the tool's result; the second step
    # stores only what is new (its answer), not the whole history again.
    roles = list(Message.objects.filter(run=run).order_by("sequence_id").values_list("role", "step_id"))
    assert roles == [
        ("system", first.pk),
        ("user", first.pk),
        ("assistant", first.pk),
        ("tool", first.pk),
        ("assistant", second.pk),
    ]
    call = Message.objects.get(step=first, role="assistant")
    assert call.tool_calls[0]["id"] == "call_42" and call.tool_calls[0]["function"]["name"] == "stock"
    tool = Message.objects.get(step=first, role="tool")
    assert tool.tool_call_id == "call_42" and tool.tool_returns[0]["func_response"] == '{"in_stock": 3}'

    trace = ProviderTrace.objects.get(step=first)
    assert trace.provider == "openai" and trace.response_json["usage"]["prompt_tokens"] == 1500
    assert "sk-abcdefghijklmnopqrstuv" not in json.dumps(trace.request_json)  # redacted like every provider trace

    response = api_client.get(f"/v1/steps/{first.pk}")
    assert response.status_code == 200
    assert response.json()["prompt_tokens"] == 1500 and response.json()["origin"] == "otlp"


@pytest.mark.django_db(transaction=True)
def test_resending_the_same_spans_creates_nothing_new(live_server, api_key):
    spans = _spans(_agent_trace)
    assert _export(live_server, api_key, spans) == SpanExportResult.SUCCESS
    counts = (Run.objects.count(), Step.objects.count(), Message.objects.count(), ProviderTrace.objects.count())
    assert _export(live_server, api_key, spans) == SpanExportResult.SUCCESS
    assert _export(live_server, api_key, spans[2:]) == SpanExportResult.SUCCESS
    assert (Run.objects.count(), Step.objects.count(), Message.objects.count(), ProviderTrace.objects.count()) == counts
    assert Run.objects.get().step_count == 2


@pytest.mark.django_db(transaction=True)
def test_gzip_protobuf_through_the_sdk_exporter(live_server, api_key):
    from opentelemetry.exporter.otlp.proto.http import Compression

    spans = _spans(_agent_trace)
    assert _export(live_server, api_key, spans, compression=Compression.Gzip) == SpanExportResult.SUCCESS
    assert Step.objects.count() == 2


@pytest.mark.django_db
def test_json_encoding_with_hex_ids_and_gzip(api_client):
    spans = _spans(_agent_trace)
    body = json.dumps(_json_body(spans)).encode()
    response = _post(api_client, gzip.compress(body), "application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json() == {}
    step = Step.objects.order_by("created_at").first()
    assert step.trace_id == format(spans[0].context.trace_id, "032x")
    assert Step.objects.count() == 2 and Run.objects.count() == 1


@pytest.mark.django_db
def test_failed_llm_span_becomes_a_failed_step_with_error_data(api_client):
    spans = _spans(lambda tracer: _agent_trace(tracer, fail_second=True))
    response = _post(api_client, encode_spans(spans).SerializeToString(), "application/x-protobuf")
    assert response.status_code == 200
    failed = Step.objects.get(status=StepStatus.FAILED)
    assert failed.error_type == "rate_limit"
    assert failed.error_data["message"] == "429 Too Many Requests"
    assert failed.error_data["traceback"].startswith("Traceback")
    assert failed.stop_reason == "llm_api_error"
    assert failed.prompt_tokens == 1600  # usage the provider reported still counts
    assert ProviderTrace.objects.get(step=failed).error_type == "rate_limit"


def _legacy_and_openinference(tracer) -> None:
    with tracer.start_as_current_span("anthropic.chat", kind=SpanKind.CLIENT) as span:
        span.set_attributes(
            {
                "gen_ai.system": "anthropic",
                "llm.request.type": "chat",
                "gen_ai.request.model": "claude-3-5-sonnet-20241022",
                "gen_ai.usage.prompt_tokens": 100,
                "gen_ai.usage.completion_tokens": 50,
                "gen_ai.usage.cache_read_input_tokens": 400,
                "gen_ai.usage.cache_creation_input_tokens": 200,
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "hello",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "hi there",
                "gen_ai.completion.0.finish_reason": "end_turn",
            }
        )
    with tracer.start_as_current_span("ChatCompletion") as span:
        span.set_attributes(
            {
                "openinference.span.kind": "LLM",
                "llm.provider": "openai",
                "llm.model_name": "gpt-4o",
                "llm.token_count.prompt": 300,
                "llm.token_count.completion": 25,
                "llm.token_count.prompt_details.cache_read": 256,
                "llm.token_count.completion_details.reasoning": 5,
                "llm.input_messages.0.message.role": "system",
                "llm.input_messages.0.message.content": "Be brief.",
                "llm.input_messages.1.message.role": "user",
                "llm.input_messages.1.message.contents.0.message_content.type": "text",
                "llm.input_messages.1.message.contents.0.message_content.text": "2+2?",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": "4",
                "session.id": "sess-5",
            }
        )
    with tracer.start_as_current_span("GET /health") as span:  # not GenAI: accepted and ignored
        span.set_attribute("http.route", "/health")


@pytest.mark.django_db
def test_deprecated_gen_ai_names_and_openinference_spans_become_steps(api_client):
    spans = _spans(_legacy_and_openinference)
    response = _post(api_client, encode_spans(spans).SerializeToString(), "application/x-protobuf")
    assert response.status_code == 200
    assert ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans == 0
    assert Step.objects.count() == 2

    anthropic = Step.objects.get(provider_name="anthropic")
    # Raw Anthropic fields: input excludes the cache, so the step's prompt adds it back (DESIGN usage rule).
    assert (anthropic.prompt_tokens, anthropic.cached_input_tokens, anthropic.cache_write_tokens) == (700, 400, 200)
    assert anthropic.completion_tokens == 50
    assert list(anthropic.messages.order_by("sequence_id").values_list("role", flat=True)) == ["user", "assistant"]
    assert anthropic.messages.get(role="assistant").content == [{"type": "text", "text": "hi there"}]

    oi = Step.objects.get(provider_name="openai")
    assert (oi.model, oi.prompt_tokens, oi.completion_tokens) == ("gpt-4o", 300, 25)
    assert (oi.cached_input_tokens, oi.reasoning_tokens, oi.conversation_id) == (256, 5, "sess-5")
    assert [m.content[0]["text"] for m in oi.messages.order_by("sequence_id")] == ["Be brief.", "2+2?", "4"]
    assert oi.run is None


@pytest.mark.django_db
def test_partial_success_reports_rejected_spans_and_stores_the_rest(api_client):
    spans = _spans(_legacy_and_openinference)
    request = encode_spans(spans)
    bad = request.resource_spans[0].scope_spans[0].spans[0]
    bad.span_id = b"\x00\x01"  # not 8 bytes
    other = request.resource_spans[0].scope_spans[0].spans[1]
    for kv in other.attributes:
        if kv.key == "llm.token_count.prompt":
            kv.value.string_value = "lots"
    response = _post(api_client, request.SerializeToString(), "application/x-protobuf")
    assert response.status_code == 200
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 2
    assert "invalid trace_id or span_id" in partial.error_message and "not a number" in partial.error_message
    assert Step.objects.count() == 0  # both LLM spans were the rejected ones; the plain span is accepted


@pytest.mark.django_db
def test_llm_span_before_its_agent_span_joins_the_run_when_the_agent_span_arrives(api_client):
    spans = _spans(_agent_trace)
    root = next(s for s in spans if s.name.startswith("invoke_agent"))
    children = [s for s in spans if s is not root]
    assert _post(api_client, encode_spans(children).SerializeToString(), "application/x-protobuf").status_code == 200
    assert Step.objects.filter(run__isnull=True).count() == 2
    assert _post(api_client, encode_spans([root]).SerializeToString(), "application/x-protobuf").status_code == 200
    run = Run.objects.get()
    assert Step.objects.filter(run=run).count() == 2 and run.step_count == 2
    sequence = list(Message.objects.filter(run=run).order_by("sequence_id").values_list("sequence_id", flat=True))
    assert sequence == list(range(1, len(sequence) + 1))


@pytest.mark.django_db
def test_x_api_key_header_is_accepted(api_key):
    body = encode_spans(_spans(_legacy_and_openinference)).SerializeToString()
    response = _post(APIClient(), body, "application/x-protobuf", HTTP_X_API_KEY=api_key)
    assert response.status_code == 200
    assert Step.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status"),
    [
        (b"\xff\xfe not protobuf", "application/x-protobuf", {}, 400),
        (b"{not json", "application/json", {}, 400),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "application/json", {}, 400),
        (b"[]", "application/json", {}, 400),
        (b"not gzip", "application/x-protobuf", {"HTTP_CONTENT_ENCODING": "gzip"}, 400),
        (b"hello", "text/plain", {}, 415),
        (b"hello", "application/x-protobuf", {"HTTP_CONTENT_ENCODING": "br"}, 415),
    ],
)
def test_bad_requests_get_the_right_status_and_write_nothing(api_client, body, content_type, headers, status):
    response = _post(api_client, body, content_type, **headers)
    assert response.status_code == status
    if response["Content-Type"] == "application/json":
        assert response.json()["message"]
    else:  # a protobuf request gets its google.rpc.Status as protobuf
        from google.rpc.status_pb2 import Status

        assert Status.FromString(response.content).message
    assert Step.objects.count() == Run.objects.count() == 0


@pytest.mark.django_db
def test_missing_or_wrong_api_key_is_401():
    body = encode_spans(_spans(_legacy_and_openinference)).SerializeToString()
    assert _post(APIClient(), body, "application/x-protobuf").status_code == 401
    response = _post(APIClient(), body, "application/x-protobuf", HTTP_AUTHORIZATION="Bearer nope")
    assert response.status_code == 401
    assert Step.objects.count() == 0


@pytest.mark.django_db
def test_bodies_over_the_limit_are_413_compressed_or_inflated(api_client, settings):
    settings.STEPLENS_OTLP_MAX_BODY_BYTES = 2048
    body = encode_spans(_spans(_agent_trace)).SerializeToString()
    assert len(body) > 2048
    assert _post(api_client, body, "application/x-protobuf").status_code == 413
    assert len(gzip.compress(body)) < 2048  # small on the wire, too big once inflated
    assert (
        _post(api_client, gzip.compress(body), "application/x-protobuf", HTTP_CONTENT_ENCODING="gzip").status_code
        == 413
    )
    bomb = gzip.compress(b"\x00" * 1_000_000)
    assert len(bomb) < 2048
    assert _post(api_client, bomb, "application/x-protobuf", HTTP_CONTENT_ENCODING="gzip").status_code == 413
    assert Step.objects.count() == 0


@pytest.mark.django_db
def test_a_saturated_server_answers_503_with_retry_after(api_client, settings, monkeypatch):
    from traces.api import views

    monkeypatch.setattr(views, "_slots", None)
    settings.STEPLENS_OTLP_MAX_CONCURRENT = 1
    slots = views._ingest_slots()
    slots.acquire()
    try:
        body = encode_spans(_spans(_legacy_and_openinference)).SerializeToString()
        response = _post(api_client, body, "application/x-protobuf")
    finally:
        slots.release()
        monkeypatch.setattr(views, "_slots", None)
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert Step.objects.count() == 0


@pytest.mark.django_db
def test_another_organizations_identical_spans_are_stored_separately(api_client, organization):
    from accounts.services import api_key_create
    from tests.factories import OrganizationFactory

    other_org = OrganizationFactory()
    _, other_key = api_key_create(organization=other_org, name="other")
    body = encode_spans(_spans(_legacy_and_openinference)).SerializeToString()
    assert _post(api_client, body, "application/x-protobuf").status_code == 200
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {other_key}")
    assert _post(other, body, "application/x-protobuf").status_code == 200
    assert Step.objects.filter(organization=organization).count() == 2
    assert Step.objects.filter(organization=other_org).count() == 2


@pytest.mark.django_db
def test_nul_characters_in_spans_are_stored_as_replacement_characters(api_client):
    """OTLP strings may hold NUL, which PostgreSQL refuses: the span is stored with U+FFFD instead of failing
    its whole batch (a raw NUL in an attribute, and one spelled \\u0000 inside the messages' JSON)."""
    messages = [{"role": "user", "parts": [{"type": "text", "content": "size\u000044?"}]}]

    def build(tracer) -> None:
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as chat:
            chat.set_attributes(
                {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                 "gen_ai.request.model": "gpt-4o\x00-mini", "gen_ai.usage.input_tokens": 10,
                 "gen_ai.usage.output_tokens": 2, "user.id": "u\x001", "gen_ai.input.messages": json.dumps(messages)}
            )  # fmt: skip

    assert "\\u0000" in json.dumps(messages)
    response = _post(api_client, encode_spans(_spans(build)).SerializeToString(), "application/x-protobuf")
    assert response.status_code == 200
    step = Step.objects.get()
    assert (step.model, step.user_id, step.prompt_tokens) == ("gpt-4o\ufffd-mini", "u\ufffd1", 10)
    user = Message.objects.get(step=step, role="user")
    assert user.content[0]["text"] == "size\ufffd44?"
