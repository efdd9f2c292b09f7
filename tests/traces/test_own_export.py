"""Steplens's own export: exactly one `chat {model}` span per LLM call, whatever the provider SDK does.

The spans are caught by an in-memory exporter behind a tracer provider registered GLOBALLY, as production
does: SDKs that trace themselves (anthropic 2.x) find the global provider, so a second span per call, or a
span for the once-per-process warm-up call, would show up here. The end-to-end test feeds the exported
spans back into Steplens's own /v1/traces and expects the same number of steps and the same cost.
"""

from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.db.models import Sum
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once
from rest_framework.test import APIClient

from accounts.services import api_key_create
from agents.services import agent_create
from runner.loop import run_execute
from runner.providers import replay
from runner.services import run_start
from steps.models import Step
from tests.factories import OrganizationFactory
from traces.otel import Telemetry, telemetry_install

pytestmark = pytest.mark.django_db

WEATHER = ["scripted/weather-openai", "scripted/weather-responses", "scripted/weather-anthropic",
           "scripted/weather-google"]  # fmt: skip
USER = [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}]


@pytest.fixture
def global_spans(monkeypatch) -> Iterator[InMemorySpanExporter]:
    """A global tracer provider (as telemetry_setup installs in production) that keeps spans in memory.

    The OpenTelemetry API lets a process set its global provider once; the test swaps the globals the way
    OpenTelemetry's own test helpers do and puts them back afterwards. The warm-up memo is emptied so the
    once-per-process warm-up call happens inside the test.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(replay, "_warmed", set())
    telemetry_install(Telemetry(tracer_provider=provider), set_global=True, instrument=False)
    yield exporter
    provider.shutdown()


def _run(organization, handle: str):
    agent = agent_create(organization=organization, name=handle.replace("/", "-"), model_handle=handle,
                         tools=["get_weather"])  # fmt: skip
    run = run_start(organization=organization, agent=agent, request_id=f"req-{agent.name}", messages=USER)
    return run_execute(run_id=run.pk)


def _llm_spans(spans) -> list:
    """Spans a GenAI backend counts as LLM calls: gen_ai.operation.name chat (or text/content generation)."""
    operations = {"chat", "text_completion", "generate_content"}
    return [s for s in spans if (s.attributes or {}).get("gen_ai.operation.name") in operations]


@pytest.mark.parametrize("handle", WEATHER)
def test_each_llm_call_exports_exactly_one_chat_span_and_the_warm_up_none(global_spans, organization, handle):
    run = _run(organization, handle)
    assert run.stop_reason == "end_turn"
    steps = list(Step.objects.filter(run=run).order_by("step_number"))
    assert len(steps) == 2
    spans = global_spans.get_finished_spans()
    llm = _llm_spans(spans)
    assert [s.name for s in llm] == [f"chat {steps[0].model}"] * 2, [s.name for s in spans]
    assert {format(s.context.span_id, "016x") for s in llm} == {step.span_id for step in steps}
    assert not [s for s in spans if "warm" in s.name or (s.attributes or {}).get("gen_ai.request.model") == "warm-up"]
    # Nothing else claims to be a provider call either (the SDK's own `anthropic.messages.create`).
    assert sorted(s.name for s in spans) == sorted(
        [f"invoke_agent {run.agent.name}", *[s.name for s in llm], "execute_tool get_weather"]
    )


def test_exported_spans_fed_to_steplens_ingest_give_the_same_steps_and_cost(global_spans, organization):
    runs = [_run(organization, handle) for handle in WEATHER]
    produced = Step.objects.filter(run__in=runs)
    assert produced.count() == 8
    produced_cost = produced.aggregate(total=Sum("cost_usd"))["total"]
    assert produced_cost > 0

    other = OrganizationFactory()
    _, key = api_key_create(organization=other, name="own-export")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = encode_spans(global_spans.get_finished_spans()).SerializeToString()
    response = client.post("/v1/traces", data=body, content_type="application/x-protobuf")
    assert response.status_code == 200, response.content

    ingested = Step.objects.filter(organization=other)
    assert ingested.count() == produced.count()
    assert ingested.aggregate(total=Sum("cost_usd"))["total"].quantize(Decimal("1e-9")) == produced_cost.quantize(
        Decimal("1e-9")
    )
    by_model = sorted(ingested.values_list("model", "prompt_tokens", "completion_tokens"))
    assert by_model == sorted(produced.values_list("model", "prompt_tokens", "completion_tokens"))
