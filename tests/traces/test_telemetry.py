"""Export: GenAI spans and metrics built by the helpers arrive at real OTLP receivers (HTTP and gRPC)."""

import json

import pytest
from opentelemetry import trace
from opentelemetry.proto.trace.v1 import trace_pb2

from steps.values import Usage
from tests.factories import AgentFactory, RunFactory, StepFactory
from traces.otel import (
    FIRST_CHUNK_EVENT,
    build_telemetry,
    chat_span,
    current_trace_ids,
    run_span,
    telemetry_install,
    tool_span,
    trace_url,
)
from traces.otel.genai import DURATION_BUCKETS, TOKEN_USAGE_BUCKETS

pytestmark = pytest.mark.django_db


def _attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = (
            [v.string_value for v in value.array_value.values] if kind == "array_value" else getattr(value, kind)
        )
    return out


def _install(endpoint: str, **extra: str):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "steplens-test",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=abc",
        **extra,
    }
    telemetry = build_telemetry(env)
    assert telemetry.enabled
    return telemetry_install(telemetry, set_global=False, instrument=False)


def _agent_run() -> tuple:
    """A run of two LLM calls and one tool call, driven through the helpers the agent loop uses."""
    agent = AgentFactory(name="support-bot", model_handle="openai/gpt-4o-mini")
    run = RunFactory(agent=agent, request_id="req-telemetry-1", conversation_id="conv-9", user_id="user-7")
    step = StepFactory(agent=agent, run=run, request_id=run.request_id)
    ids: dict[str, tuple] = {}
    with run_span(run=run, agent=agent):
        ids["run"] = current_trace_ids()
        with chat_span(
            provider="openai",
            request_model="gpt-4o-mini",
            step=step,
            messages=[{"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]}],
            server_address="api.openai.com",
            server_port=443,
            request={"temperature": 0.2, "max_tokens": 256, "stream": True},
        ) as chat:
            ids["chat"] = chat.trace_ids
            chat.first_chunk(ttft_ns=250_000_000)
            chat.finish(
                usage=Usage(
                    prompt_tokens=1200,
                    completion_tokens=80,
                    cached_input_tokens=1000,
                    cache_write_tokens=0,
                    reasoning_tokens=30,
                ),
                finish_reason="tool_calls",
                response_id="chatcmpl-1",
                response_model="gpt-4o-mini-2024-07-18",
                output_messages=[
                    {
                        "role": "assistant",
                        "content": [],
                        "tool_calls": [
                            {"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
                        ],
                    }
                ],
            )
        with tool_span(name="get_weather", call_id="call_1", step=step, arguments={"city": "Paris"}) as tool:
            tool.result({"temp_c": 14})
        with pytest.raises(TimeoutError), chat_span(provider="openai", request_model="gpt-4o-mini") as failing:
            failing.first_chunk(ttft_ns=100_000_000)
            raise TimeoutError("read timed out")
    return agent, run, step, ids


def _check_spans(received, *, agent, run, step, ids, content: bool) -> None:
    spans = {span.name: span for span in received.spans()}
    assert set(spans) == {"invoke_agent support-bot", "chat gpt-4o-mini", "execute_tool get_weather"}
    # Two chat spans share a name; look at both.
    chats = [s for s in received.spans() if s.name == "chat gpt-4o-mini"]
    assert len(chats) == 2
    ok, failed = sorted(chats, key=lambda s: s.start_time_unix_nano)
    root, tool = spans["invoke_agent support-bot"], spans["execute_tool get_weather"]

    # Parentage: one trace, chat and tool spans are children of invoke_agent.
    assert {s.trace_id for s in received.spans()} == {root.trace_id}
    assert root.parent_span_id == b""
    assert ok.parent_span_id == root.span_id == tool.parent_span_id == failed.parent_span_id
    assert ok.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert root.kind == tool.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
    assert ids["chat"] == (ok.trace_id.hex(), ok.span_id.hex())
    assert ids["run"] == (root.trace_id.hex(), root.span_id.hex())

    root_attrs = _attrs(root)
    assert root_attrs["gen_ai.operation.name"] == "invoke_agent"
    assert root_attrs["gen_ai.agent.id"] == agent.pk
    assert root_attrs["gen_ai.agent.name"] == "support-bot"
    assert root_attrs["steplens.run_id"] == run.pk
    assert root_attrs["steplens.request_id"] == "req-telemetry-1"
    assert root_attrs["gen_ai.conversation.id"] == "conv-9"

    attrs = _attrs(ok)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert attrs["gen_ai.response.id"] == "chatcmpl-1"
    assert attrs["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert attrs["gen_ai.usage.input_tokens"] == 1200
    assert attrs["gen_ai.usage.output_tokens"] == 80
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 1000
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 0
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 30
    assert attrs["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.25)
    assert attrs["gen_ai.request.temperature"] == pytest.approx(0.2)
    assert attrs["gen_ai.request.max_tokens"] == 256
    assert attrs["server.address"] == "api.openai.com"
    assert attrs["steplens.step_id"] == step.pk
    assert attrs["steplens.run_id"] == run.pk
    assert attrs["steplens.request_id"] == "req-telemetry-1"
    assert ok.status.code != trace_pb2.Status.STATUS_CODE_ERROR
    (event,) = [e for e in ok.events if e.name == FIRST_CHUNK_EVENT]
    assert event.time_unix_nano >= ok.start_time_unix_nano

    tool_attrs = _attrs(tool)
    assert tool_attrs["gen_ai.operation.name"] == "execute_tool"
    assert tool_attrs["gen_ai.tool.name"] == "get_weather"
    assert tool_attrs["gen_ai.tool.call.id"] == "call_1"
    assert tool_attrs["steplens.step_id"] == step.pk

    failed_attrs = _attrs(failed)
    assert failed_attrs["error.type"] == "TimeoutError"
    assert failed.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert any(e.name == "exception" for e in failed.events)

    if content:
        (message,) = json.loads(attrs["gen_ai.input.messages"])
        assert message == {"role": "user", "parts": [{"type": "text", "content": "weather in Paris?"}]}
        (output,) = json.loads(attrs["gen_ai.output.messages"])
        assert output["parts"][0]["type"] == "tool_call" and output["parts"][0]["name"] == "get_weather"
        assert output["finish_reason"] == "tool_calls"
        assert json.loads(tool_attrs["gen_ai.tool.call.result"]) == {"temp_c": 14}
    else:
        for key in ("gen_ai.input.messages", "gen_ai.output.messages"):
            assert key not in attrs
        assert "gen_ai.tool.call.arguments" not in tool_attrs
        assert "gen_ai.tool.call.result" not in tool_attrs
    assert {"service.name": "steplens-test", "deployment.environment": "test"}.items() <= received.resources()[
        0
    ].items()


def _check_metrics(received) -> None:
    (usage,) = received.metric("gen_ai.client.token.usage")
    assert usage.unit == "{token}"
    points = {
        next(kv.value.string_value for kv in p.attributes if kv.key == "gen_ai.token.type"): p
        for p in usage.histogram.data_points
    }
    assert set(points) == {"input", "output"}
    assert points["input"].sum == 1200 and points["output"].sum == 80
    assert list(points["input"].explicit_bounds) == list(TOKEN_USAGE_BUCKETS)
    input_attrs = {kv.key: kv.value.string_value for kv in points["input"].attributes}
    assert input_attrs["gen_ai.operation.name"] == "chat"
    assert input_attrs["gen_ai.provider.name"] == "openai"
    assert input_attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert input_attrs["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"

    (duration,) = received.metric("gen_ai.client.operation.duration")
    assert duration.unit == "s"
    by_error = {
        next((kv.value.string_value for kv in p.attributes if kv.key == "error.type"), None): p
        for p in duration.histogram.data_points
    }
    assert set(by_error) == {None, "TimeoutError"}
    assert list(by_error[None].explicit_bounds) == list(DURATION_BUCKETS)

    (ttft,) = received.metric("gen_ai.client.operation.time_to_first_chunk")
    (point,) = ttft.histogram.data_points  # the failed call's chunk is not a successful first chunk
    assert point.count == 1 and point.sum == pytest.approx(0.25)
    assert list(point.explicit_bounds) == list(DURATION_BUCKETS)


def test_agent_run_spans_and_metrics_reach_an_otlp_http_receiver(otlp_http_receiver):
    telemetry = _install(otlp_http_receiver.endpoint, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    agent, run, step, ids = _agent_run()
    telemetry.force_flush()
    telemetry.shutdown()

    _check_spans(otlp_http_receiver, agent=agent, run=run, step=step, ids=ids, content=True)
    _check_metrics(otlp_http_receiver)
    assert all(h.get("x-collector-token") == "abc" for h in otlp_http_receiver.headers)


def test_agent_run_spans_and_metrics_reach_a_grpc_collector(otlp_grpc_receiver):
    telemetry = _install(otlp_grpc_receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    agent, run, step, ids = _agent_run()
    telemetry.force_flush()
    telemetry.shutdown()

    _check_spans(otlp_grpc_receiver, agent=agent, run=run, step=step, ids=ids, content=False)
    _check_metrics(otlp_grpc_receiver)
    assert otlp_grpc_receiver.headers[0].get("x-collector-token") == "abc"


def test_per_signal_endpoints_and_gzip_compression(otlp_http_receiver):
    telemetry = build_telemetry(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{otlp_http_receiver.endpoint}/v1/traces",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        }
    )
    assert telemetry.meter_provider is None  # no metrics endpoint: no metric export at all
    telemetry_install(telemetry, set_global=False, instrument=False)
    with chat_span(provider="anthropic", request_model="claude-sonnet-4-5") as chat:
        chat.finish(usage=Usage(prompt_tokens=10, completion_tokens=2), finish_reason="stop")
    telemetry.force_flush()
    telemetry.shutdown()
    (span,) = otlp_http_receiver.spans()
    assert span.name == "chat claude-sonnet-4-5"
    assert _attrs(span)["gen_ai.provider.name"] == "anthropic"
    assert otlp_http_receiver.headers[0]["content-encoding"] == "gzip"
    assert otlp_http_receiver.resources()[0]["service.name"] == "steplens"


def test_no_endpoint_or_sdk_disabled_installs_nothing_and_helpers_still_work():
    assert not build_telemetry({}).enabled
    assert not build_telemetry(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    ).enabled
    telemetry_install(build_telemetry({}), set_global=False, instrument=False)
    with chat_span(provider="openai", request_model="gpt-4o") as chat:
        chat.first_chunk()
        chat.finish(usage=Usage(prompt_tokens=1, completion_tokens=1))
        assert chat.trace_ids == (None, None)
    assert current_trace_ids() == (None, None)


def test_attribute_values_are_capped_and_content_stays_valid_json(otlp_http_receiver):
    telemetry = _install(
        otlp_http_receiver.endpoint,
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true",
        OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT="2000",
    )
    huge = "x" * 500_000
    with chat_span(
        provider="openai",
        request_model="gpt-4o",
        messages=[{"role": "user", "content": [{"type": "text", "text": huge}]}] * 3,
    ):
        pass
    telemetry.force_flush()
    telemetry.shutdown()
    (span,) = otlp_http_receiver.spans()
    value = _attrs(span)["gen_ai.input.messages"]
    assert len(value) <= 2000
    messages = json.loads(value)
    assert messages and messages[0]["parts"][0]["content"].endswith("[truncated]")


def test_credentials_never_leave_on_a_span(otlp_http_receiver):
    telemetry = _install(otlp_http_receiver.endpoint)
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("GET /v1/steps") as span:
        span.set_attribute("http.request.header.authorization", ("Bearer sk-live-123",))
        span.set_attribute("http.request.header.x-api-key", ("sl_secret",))
        span.set_attribute("http.route", "/v1/steps")
    telemetry.force_flush()
    telemetry.shutdown()
    (exported,) = otlp_http_receiver.spans()
    keys = {kv.key for kv in exported.attributes}
    assert keys == {"http.route"}


def test_trace_url_uses_the_configured_template(settings):
    settings.STEPLENS_TRACE_URL_TEMPLATE = "http://jaeger:16686/trace/{trace_id}?uiFind={span_id}"
    assert trace_url("ab" * 16, "cd" * 8) == f"http://jaeger:16686/trace/{'ab' * 16}?uiFind={'cd' * 8}"
    assert trace_url(None) is None
    settings.STEPLENS_TRACE_URL_TEMPLATE = ""
    assert trace_url("ab" * 16) is None


def test_current_trace_ids_follow_the_active_span(otlp_http_receiver):
    telemetry = _install(otlp_http_receiver.endpoint)
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        context = outer.get_span_context()
        assert current_trace_ids() == (trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id))
    telemetry.shutdown()
