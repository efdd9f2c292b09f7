"""PostgreSQL restarted, then stopped for 10 s, while OTLP arrives at ~10 requests/s through gunicorn (gthread)
and a Celery ingest worker maps the batches. The PostgreSQL instance is the test's own (initdb, a free port).

Counted: every answer is 200 or 503 with Retry-After (and a body in the request's encoding); every span answered
200 is stored as a step once the backlog drains; no batch is left queued or processing; and how long after the
database came back the batches claimed before it went away were mapped (printed).
"""

import base64
import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import redis
from google.protobuf import json_format
from google.rpc.status_pb2 import Status

from tests.faults.otlp_support import (
    llm_spans_request,
    own_postgres,
    prepare_database,
    production_env,
    require_runnable,
    start_gunicorn,
    start_ingest_worker,
    stop_services,
)

pytestmark = [pytest.mark.faults, pytest.mark.postgres]  # a PostgreSQL of its own (own_postgres)

SPANS_PER_REQUEST = 5
PROTOBUF, JSON = "application/x-protobuf", "application/json"


@dataclass
class Answers:
    statuses: Counter = field(default_factory=Counter)
    spans_acknowledged: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _json_request(spans: int) -> bytes:
    document = json_format.MessageToDict(llm_spans_request(spans))
    for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId"):
            span[key] = base64.b64decode(span[key]).hex()  # the OTLP JSON encoding: hex ids
    return json.dumps(document).encode()


def _check_error_body(content_type: str, body: bytes) -> str | None:
    """None when the body of an error answer is a readable error in JSON or a protobuf google.rpc.Status."""
    try:
        if content_type.startswith(JSON):
            json.loads(body)
        else:
            Status.FromString(body)
    except Exception as exc:
        return f"unreadable {content_type} body ({exc}): {body[:200]!r}"
    return None


def _sender(port: int, api_key: str, answers: Answers, stop: threading.Event) -> None:
    """~10 requests/s, alternating protobuf and JSON, each on a fresh connection (an exporter after a failure)."""
    n = 0
    while not stop.is_set():
        started = time.monotonic()
        content_type = PROTOBUF if n % 2 == 0 else JSON
        body = (
            llm_spans_request(SPANS_PER_REQUEST).SerializeToString()
            if content_type == PROTOBUF
            else _json_request(SPANS_PER_REQUEST)
        )
        n += 1
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(
                "POST",
                "/v1/traces",
                body=body,
                headers={"Authorization": f"Bearer {api_key}", "Content-Type": content_type},
            )
            response = conn.getresponse()
            payload = response.read()
            status, retry_after = response.status, response.getheader("Retry-After")
            answer_type = response.getheader("Content-Type", "")
        except OSError as exc:
            with answers.lock:
                answers.statuses["connection error"] += 1
                answers.problems.append(f"connection error: {exc}")
            continue
        finally:
            conn.close()
        with answers.lock:
            answers.statuses[status] += 1
            if status == 200:
                answers.spans_acknowledged += SPANS_PER_REQUEST
            elif status == 503:
                if not (retry_after and retry_after.isdigit()):
                    answers.problems.append(f"503 without Retry-After: {payload[:200]!r}")
                if problem := _check_error_body(answer_type, payload):
                    answers.problems.append(f"503 with {problem}")
            else:
                answers.problems.append(f"{status}: {payload[:300]!r}")
        stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))


BIG_BATCH_SPANS = 2000  # a batch whose mapping takes long enough to be cut by the database going away


def _send_big_batch_and_wait_until_claimed(server, port: int, api_key: str, answers: Answers) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = llm_spans_request(BIG_BATCH_SPANS).SerializeToString()
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": PROTOBUF}
    conn.request("POST", "/v1/traces", body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200
    with answers.lock:
        answers.statuses[200] += 1
        answers.spans_acknowledged += BIG_BATCH_SPANS
    with server.connect("steplens") as db:
        claimed = (
            f"SELECT count(*) FROM traces_ingestbatch WHERE status = 'processing' AND span_count = {BIG_BATCH_SPANS}"
        )
        assert _wait_until(lambda: db.execute(claimed).fetchone()[0] > 0, timeout=30, interval=0.02)


def _wait_until(predicate, *, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return False


def test_an_outage_answers_only_200_or_503_and_every_acknowledged_span_is_stored(tmp_path, redis_url):
    require_runnable()
    # The worker's broker: the suite's Redis (its own database index); stale ingest tasks are dropped first.
    redis.Redis.from_url(redis_url).delete("ingest")
    with own_postgres() as server:
        env = production_env(server.url("steplens"), CELERY_BROKER_URL=redis_url, STEPLENS_OTLP_MAX_CONCURRENT="16")
        api_key = prepare_database(server, env)
        gunicorn, port = start_gunicorn(env, tmp_path, workers=2, threads=8)
        worker = start_ingest_worker(env, tmp_path)
        services = [gunicorn, worker]
        answers, stop = Answers(), threading.Event()
        sender = threading.Thread(target=_sender, args=(port, api_key, answers, stop), daemon=True)
        try:
            sender.start()
            with server.connect("steplens") as db:  # the worker is up and mapping
                done = "SELECT count(*) FROM traces_ingestbatch WHERE status = 'done'"
                assert _wait_until(lambda: db.execute(done).fetchone()[0] > 0, timeout=60), worker.tail()
            time.sleep(2)  # steady state
            _send_big_batch_and_wait_until_claimed(server, port, api_key, answers)
            restarted_at = time.time()
            server.restart()  # (a) a restart, while the worker maps a claimed batch
            restarted_after = time.time() - restarted_at
            time.sleep(3)
            _send_big_batch_and_wait_until_claimed(server, port, api_key, answers)
            server.stop()  # (b) ten seconds without a database, from the middle of a mapping
            down_at = time.time()
            time.sleep(10)
            server.start()
            back_at = time.time()
            time.sleep(4)  # requests keep coming after it is back
            stop.set()
            sender.join(timeout=60)

            db = server.connect("steplens")
            pending = "SELECT count(*) FROM traces_ingestbatch WHERE status IN ('queued', 'processing')"
            drained = _wait_until(lambda: db.execute(pending).fetchone()[0] == 0, timeout=45)
            steps = db.execute("SELECT count(*) FROM steps_step").fetchone()[0]
            statuses = dict(db.execute("SELECT status, count(*) FROM traces_ingestbatch GROUP BY status").fetchall())
            # Batches claimed more than once lost a claim to a database drop: when were they mapped?
            reclaimed = [
                (claimed.timestamp(), processed.timestamp())
                for claimed, processed in db.execute(
                    "SELECT claimed_at, processed_at FROM traces_ingestbatch WHERE attempts > 1 AND status = 'done'"
                ).fetchall()
            ]
            db.close()
        finally:
            stop.set()
            stop_services(services)

    # A claim lost in the restart is taken again between the restart and the stop; one lost in the stop, after it.
    restart_back = restarted_at + restarted_after
    after_restart = [(round(c - restart_back, 1), round(p - restart_back, 1)) for c, p in reclaimed if c < down_at]
    after_back = [(round(c - back_at, 1), round(p - back_at, 1)) for c, p in reclaimed if c >= down_at]
    print(
        f"\nanswers {dict(answers.statuses)}; spans acknowledged {answers.spans_acknowledged}, stored {steps}; "
        f"batches {statuses}; restart took {restarted_after:.1f} s, outage {back_at - down_at:.1f} s; batches whose "
        f"claim was lost, (claimed again, mapped) this many seconds after the database was back: "
        f"restart {after_restart}, outage {after_back}"
    )
    assert not answers.problems, answers.problems[:10]
    assert set(answers.statuses) <= {200, 503}
    assert answers.statuses[200] > 0 and answers.statuses[503] > 0  # the outage was seen, and so was service
    assert drained, f"batches still pending: {statuses}\n{worker.tail()}"
    assert statuses.get("failed", 0) == 0, worker.tail()
    assert steps == answers.spans_acknowledged
    assert len(reclaimed) >= 1  # the claim cut by the stop was released and mapped (long before any lease)
