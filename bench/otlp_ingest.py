"""OTLP ingest benchmark: realistic GenAI traces sent to POST /v1/traces by concurrent senders.

Each trace is an `invoke_agent` span with 1 to 10 `chat` spans (2 KB input and output messages, usage, TTFT),
5% of the chat spans failed. Spans go in batches of 100 (a trace may straddle two batches, as with the SDK's
batch processor) from 4 concurrent senders. Prints two rates:

- spans/s accepted: 2xx answers per second. A 2xx means the request is committed to PostgreSQL as an
  IngestBatch row (durable), not yet mapped onto steps.
- spans/s until queryable: from the first request until every sent LLM span is visible as a Step (the
  workers on the `ingest` queue have mapped every batch).

Web and workers on this machine, PostgreSQL and a real Redis broker:

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/steplens_bench CELERY_BROKER_URL=redis://127.0.0.1:6379/14
    export DJANGO_SETTINGS_MODULE=config.settings.local DJANGO_DEBUG=false DATABASE_CONN_MAX_AGE=600
    .venv/bin/python manage.py migrate
    .venv/bin/gunicorn config.wsgi -w 4 -b 127.0.0.1:8077 &
    # On one machine, mapping yields the CPU to accepting (the 2xx path) with a lower priority.
    nice -n 10 .venv/bin/celery -A config worker -Q ingest -c 2 -l WARNING &
    .venv/bin/python bench/otlp_ingest.py --url http://127.0.0.1:8077 --traces 3000

Without --api-key it creates an organization and key in DATABASE_URL's database (the server's); the
"until queryable" figures need that (the benchmark counts the organization's steps).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-5"),
    ("gcp.gemini", "gemini-2.5-flash"),
]
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "agents",
    "call",
    "tools",
    "and",
    "models",
    "stream",
    "tokens",
]


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def make_traces(count: int, seed: int = 7) -> list[Span]:
    """Spans of `count` agent traces, children before their parent (the order an SDK exports them)."""
    rng = random.Random(seed)
    spans: list[Span] = []
    now = time.time_ns()
    for _ in range(count):
        trace_id = rng.randbytes(16)
        root_id = rng.randbytes(8)
        provider, model = rng.choice(MODELS)
        start = now - rng.randint(0, 3600) * 1_000_000_000
        cursor = start
        history = [{"role": "system", "parts": [{"type": "text", "content": "You are a helpful shop assistant."}]}]
        history.append({"role": "user", "parts": [{"type": "text", "content": _text(rng, 2048)}]})
        for _ in range(rng.randint(1, 10)):
            duration = rng.randint(300, 4000) * 1_000_000
            output = [{"role": "assistant", "parts": [{"type": "text", "content": _text(rng, 2048)}],
                       "finish_reason": "stop"}]  # fmt: skip
            failed = rng.random() < 0.05
            attributes = [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.provider.name", provider),
                _kv("gen_ai.request.model", model),
                _kv("gen_ai.response.model", model),
                _kv("gen_ai.response.id", f"resp-{rng.randbytes(6).hex()}"),
                _kv("gen_ai.usage.input_tokens", rng.randint(500, 8000)),
                _kv("gen_ai.usage.output_tokens", rng.randint(20, 800)),
                _kv("gen_ai.usage.cache_read.input_tokens", rng.randint(0, 400)),
                _kv("gen_ai.response.time_to_first_chunk", rng.uniform(0.1, 1.5)),
                # The newest turn only: 2 KB in, 2 KB out (a whole history per span would grow without bound).
                _kv("gen_ai.input.messages", json.dumps(history[-1:])),
                _kv("gen_ai.output.messages", json.dumps(output)),
            ]
            span = Span(
                trace_id=trace_id,
                span_id=rng.randbytes(8),
                parent_span_id=root_id,
                name=f"chat {model}",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=cursor,
                end_time_unix_nano=cursor + duration,
                attributes=attributes,
            )
            if failed:
                span.attributes.append(_kv("error.type", "rate_limit"))
                span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="429 Too Many Requests"))
            spans.append(span)
            history.append(output[0])
            history.append({"role": "user", "parts": [{"type": "text", "content": _text(rng, 2048)}]})
            cursor += duration + rng.randint(5, 50) * 1_000_000
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=root_id,
                name="invoke_agent shop-assistant",
                kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=start,
                end_time_unix_nano=cursor,
                attributes=[
                    _kv("gen_ai.operation.name", "invoke_agent"),
                    _kv("gen_ai.agent.name", "shop-assistant"),
                    _kv("gen_ai.provider.name", provider),
                    _kv("gen_ai.request.model", model),
                ],
            )
        )
    return spans


def make_bodies(spans: list[Span], batch: int) -> list[tuple[bytes, int]]:
    bodies = []
    for i in range(0, len(spans), batch):
        chunk = spans[i : i + batch]
        request = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource={"attributes": [_kv("service.name", "bench-shop")]},
                    scope_spans=[ScopeSpans(scope={"name": "bench"}, spans=chunk)],
                )
            ]
        )
        bodies.append((request.SerializeToString(), len(chunk)))
    return bodies


def _bootstrap_key() -> tuple[str, object]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    os.environ.setdefault("DJANGO_DEBUG", "false")
    import django

    django.setup()
    from accounts.models import Organization
    from accounts.services import api_key_create

    organization = Organization.objects.create(name=f"bench-{int(time.time())}")
    _, raw = api_key_create(organization=organization, name="bench")
    return raw, organization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--traces", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for every step to be queryable")
    args = parser.parse_args()

    raw_key, organization = (args.api_key, None) if args.api_key else _bootstrap_key()
    spans = make_traces(args.traces)
    bodies = make_bodies(spans, args.batch)
    llm_spans = sum(1 for s in spans if s.name.startswith("chat "))
    target = urlparse(args.url)

    lock = threading.Lock()
    queue = list(enumerate(bodies))
    stats = {"accepted": 0, "rejected": 0, "retries": 0, "errors": 0, "latencies": []}

    def sender() -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)
        headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {raw_key}"}
        while True:
            with lock:
                if not queue:
                    break
                _, (body, count) = queue.pop()
            while True:
                started = time.perf_counter()
                try:
                    conn.request("POST", "/v1/traces", body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                except (ConnectionError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)
                    with lock:
                        stats["errors"] += 1
                    continue
                if response.status in (429, 503):  # the server said retry: do as an exporter would
                    with lock:
                        stats["retries"] += 1
                    time.sleep(float(response.getheader("Retry-After") or 1))
                    continue
                if response.status != 200:
                    raise SystemExit(f"HTTP {response.status}: {payload[:300]!r}")
                rejected = ExportTraceServiceResponse.FromString(payload).partial_success.rejected_spans
                with lock:
                    stats["accepted"] += count - rejected
                    stats["rejected"] += rejected
                    stats["latencies"].append(time.perf_counter() - started)
                break
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=sender) for _ in range(args.senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted_at = time.perf_counter() - started

    queryable_at = None
    stored = None
    batches: dict[str, int] = {}
    if organization is not None:
        from django.db.models import Count

        from steps.models import Step
        from traces.models import IngestBatch

        deadline = time.perf_counter() + args.wait
        while time.perf_counter() < deadline:
            stored = Step.objects.filter(organization=organization).count()
            if stored >= llm_spans:
                break
            time.sleep(0.1)
        queryable_at = time.perf_counter() - started
        batches = dict(
            IngestBatch.objects.filter(organization=organization)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by()
        )

    latencies = sorted(stats["latencies"])
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0
    rows = [
        ("traces", f"{args.traces}"),
        ("spans sent (LLM + agent)", f"{len(spans)} ({llm_spans} + {len(spans) - llm_spans})"),
        ("batches x senders", f"{len(bodies)} x {args.senders} (batch {args.batch})"),
        ("body size (avg)", f"{sum(len(b) for b, _ in bodies) / len(bodies) / 1024:.0f} KiB"),
        ("spans accepted / rejected", f"{stats['accepted']} / {stats['rejected']}"),
        ("503/429 retries, connection errors", f"{stats['retries']}, {stats['errors']}"),
        ("request latency p50 / p99", f"{p50:.0f} ms / {p99:.0f} ms"),
        ("wall time until all accepted (2xx)", f"{accepted_at:.2f} s"),
        ("spans/s accepted", f"{stats['accepted'] / accepted_at:,.0f}"),
    ]
    if queryable_at is not None:
        rows += [
            ("steps queryable", f"{stored} of {llm_spans}"),
            ("wall time until queryable", f"{queryable_at:.2f} s"),
            ("spans/s until queryable", f"{stats['accepted'] / queryable_at:,.0f}"),
            ("LLM spans/s until queryable (steps)", f"{(stored or 0) / queryable_at:,.0f}"),
            ("ingest batches by status", ", ".join(f"{k} {v}" for k, v in sorted(batches.items())) or "-"),
        ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
