"""Hostile OTLP bodies against a real gunicorn (gthread workers, production settings, a PostgreSQL of the test's
own): chunked bodies are stored whole, bombs and oversized bodies are refused cheaply, deep JSON is a 400, a huge
attribute is stored cut and the answer says so; the web processes' memory stays bounded throughout.

Batches are mapped in the web process (CELERY_TASK_ALWAYS_EAGER), so what a 200 stored is countable at once and the
mapping's memory is measured too.
"""

import base64
import gzip
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.faults.otlp_support import (
    RssSampler,
    llm_spans_request,
    own_postgres,
    prepare_database,
    production_env,
    require_runnable,
    start_gunicorn,
    stop_services,
)
from tests.traces.test_ingest_limits import empty_span_bomb

pytestmark = [pytest.mark.faults, pytest.mark.postgres]  # a PostgreSQL of its own (own_postgres)

RSS_BOUND_BYTES = 400 * 1024 * 1024  # any one gunicorn process, master or worker
PROTOBUF, JSON = "application/x-protobuf", "application/json"


class Web:
    def __init__(self, port: int, api_key: str, db) -> None:
        self.port, self.api_key, self.db = port, api_key, db

    def post(self, body, *, content_type: str = PROTOBUF, gzip_: bool = False, chunked: bool = False):
        """POST /v1/traces; `chunked` sends the body in 64 KB pieces with Transfer-Encoding: chunked, no length."""
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": content_type}
        if gzip_:
            headers["Content-Encoding"] = "gzip"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            if chunked:
                pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
                conn.request("POST", "/v1/traces", body=pieces, headers=headers, encode_chunked=True)
            else:
                conn.request("POST", "/v1/traces", body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            conn.close()

    def steps(self) -> int:
        return self.db.execute("SELECT count(*) FROM steps_step").fetchone()[0]

    def batches(self) -> int:
        return self.db.execute("SELECT count(*) FROM traces_ingestbatch").fetchone()[0]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[Web, RssSampler]]:
    require_runnable()
    with own_postgres() as server:
        env = production_env(server.url("steplens"), CELERY_BROKER_URL="memory://", CELERY_TASK_ALWAYS_EAGER="true")
        api_key = prepare_database(server, env)
        gunicorn, port = start_gunicorn(env, tmp_path, workers=2, threads=4)
        try:
            with server.connect("steplens") as db, RssSampler(gunicorn.process.pid) as rss:
                yield Web(port, api_key, db), rss
        finally:
            stop_services([gunicorn])


def _partial(status: int, body: bytes):
    assert status == 200, body[:500]
    return ExportTraceServiceResponse.FromString(body).partial_success


def _error_message(content_type: str, body: bytes) -> str:
    if content_type.startswith(JSON):
        document = json.loads(body)
        return document.get("message") or document.get("detail") or ""
    return Status.FromString(body).message


def test_hostile_bodies_are_stored_whole_or_refused_cheaply_within_a_memory_bound(web):
    web, rss = web
    stored = web.steps()

    # Chunked, no Content-Length: every span stored, protobuf and JSON, plain and gzip.
    for spans, encoding in ((31, "identity"), (17, "gzip")):
        body = llm_spans_request(spans).SerializeToString()
        if encoding == "gzip":
            body = gzip.compress(body)
        status, _, answer = web.post(body, gzip_=encoding == "gzip", chunked=True)
        assert _partial(status, answer).rejected_spans == 0
        stored += spans
        assert web.steps() == stored, f"chunked {encoding}: spans answered 200 but not stored"
    document = json_format.MessageToDict(llm_spans_request(5))
    for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        span["traceId"] = base64.b64decode(span["traceId"]).hex()
        span["spanId"] = base64.b64decode(span["spanId"]).hex()
    status, _, answer = web.post(json.dumps(document).encode(), content_type=JSON, chunked=True)
    assert status == 200, answer
    stored += 5
    assert web.steps() == stored

    # An empty chunked body is not a stored success.
    status, _, _ = web.post(b"", chunked=True)
    assert status == 400

    batches = web.batches()
    # A gzip bomb: 100 MB of zeros in ~100 KB.
    status, content_type, answer = web.post(gzip.compress(b"\0" * 100_000_000), gzip_=True)
    assert status == 413, answer[:300]

    # A span bomb: 4 million empty spans in ~8 KB of gzip.
    bomb = gzip.compress(empty_span_bomb(4_000_000), compresslevel=9)
    started = time.monotonic()
    status, content_type, answer = web.post(bomb, gzip_=True)
    span_bomb_seconds = time.monotonic() - started
    assert status == 413 and "STEPLENS_OTLP_MAX_SPANS_PER_REQUEST" in _error_message(content_type, answer)

    # JSON nested 100,000 levels deep.
    deep = b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, content_type, answer = web.post(deep, content_type=JSON)
    assert status == 400 and content_type.startswith(JSON)
    assert "nested too deeply" in json.loads(answer)["message"]

    # Over STEPLENS_OTLP_MAX_BODY_BYTES (8 MiB), with and without Content-Length.
    oversized = b"\x0a" * (9 * 1024 * 1024)
    for chunked in (False, True):
        status, content_type, answer = web.post(oversized, chunked=chunked)
        assert status == 413, (chunked, answer[:300])
    assert web.batches() == batches and web.steps() == stored  # nothing of a refused request written

    # A 5 MB span attribute: stored cut (messages and provider trace), and the answer says what was cut.
    huge = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "B" * 5_000_000}]}])
    status, _, answer = web.post(llm_spans_request(1, extra={"gen_ai.input.messages": huge}).SerializeToString())
    partial = _partial(status, answer)
    assert partial.rejected_spans == 0
    assert "truncated" in partial.error_message and "gen_ai.input.messages" in partial.error_message
    assert web.steps() == stored + 1
    trace_bytes, = web.db.execute(
        "SELECT octet_length(request_json::text) FROM traces_providertrace ORDER BY id DESC LIMIT 1"
    ).fetchone()  # fmt: skip
    assert trace_bytes <= 1024 * 1024 + 4096  # jsonb's text form spaces things a little differently
    text_chars, = web.db.execute(
        "SELECT length(content->0->>'text') FROM steps_message WHERE role = 'user' ORDER BY id DESC LIMIT 1"
    ).fetchone()  # fmt: skip
    assert text_chars <= 100_030

    rss.sample()
    print(
        f"\nspan bomb refused in {span_bomb_seconds:.2f} s; largest gunicorn process RSS "
        f"{rss.max_process_bytes / 2**20:.0f} MiB, all gunicorn processes {rss.max_total_bytes / 2**20:.0f} MiB "
        f"(bound {RSS_BOUND_BYTES / 2**20:.0f} MiB per process)"
    )
    assert rss.max_process_bytes < RSS_BOUND_BYTES
