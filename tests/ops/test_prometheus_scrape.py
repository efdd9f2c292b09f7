"""A real Prometheus (Debian's `prometheus`, scrape interval 1 s) scraping a running Steplens: gunicorn started with
config/gunicorn.py (two workers sharing a PROMETHEUS_MULTIPROC_DIR) against a PostgreSQL of the test's own.

With no ingest worker the backlog and the lag rise in Prometheus and on the console's system page, matching the
database and the broker; once a worker starts they fall to zero. With the PostgreSQL stopped /readyz answers 503
naming the database (and the scrape says steplens_state_up 0); once it is back /readyz is 200 again by itself.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import redis

from tests.conftest import require_service
from tests.faults.otlp_support import (
    REPO,
    Service,
    free_port,
    llm_spans_request,
    own_postgres,
    prepare_database,
    production_env,
    require_runnable,
    start_ingest_worker,
    start_service,
    stop_services,
)
from tests.faults.runs_support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.postgres]  # a PostgreSQL of its own (own_postgres)

TOKEN = secrets.token_hex(16)
BATCHES, SPANS = 6, 3


def _start_gunicorn(env: dict[str, str], logs: Path) -> tuple[Service, int]:
    """gunicorn with the production configuration file (its hooks included), two workers, on a free port."""
    port = free_port()
    env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "4"}
    service = start_service(
        "gunicorn", [str(REPO / ".venv/bin/gunicorn"), "config.wsgi", "-c", "config/gunicorn.py"], env, logs
    )
    wait_until(lambda: _listening(port) or service.process.poll() is not None, timeout=60, what="gunicorn")
    assert service.process.poll() is None, service.tail()
    return service, port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _start_prometheus(target_port: int, root: Path) -> tuple[Service, int]:
    port = free_port()
    (root / "token").write_text(TOKEN)
    config = root / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: steplens\n"
        "    metrics_path: /metrics\n"
        f"    authorization:\n      type: Bearer\n      credentials_file: {root / 'token'}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
    command = [
        shutil.which("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ]  # fmt: skip
    service = start_service("prometheus", command, {}, root)
    wait_until(lambda: _get(port, "/-/ready")[0] == 200, timeout=60, what="prometheus ready")
    return service, port


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""


def _query(port: int, expression: str) -> dict[tuple, float]:
    """Prometheus instant query -> {label values: value}."""
    status, body = _get(port, "/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
    assert status == 200, body
    return {
        tuple(sorted((k, v) for k, v in row["metric"].items() if k not in {"job", "instance"})): float(row["value"][1])
        for row in json.loads(body)["data"]["result"]
    }


def _scalar(port: int, expression: str) -> float | None:
    values = _query(port, expression)
    return next(iter(values.values())) if values else None


def _post_batch(port: int, api_key: str) -> None:
    body = llm_spans_request(SPANS).SerializeToString()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST", "/v1/traces", body=body,
        headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {api_key}"},
    )  # fmt: skip
    response = conn.getresponse()
    assert response.status == 200, response.read()


class _Console:
    """A logged-in console session over HTTP (the login form, its CSRF token and the session cookie)."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        status, page = self.get("/admin/login/")
        found = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert status == 200 and found, (status, page[:2000])
        token = found.group(1).decode()
        form = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
        status, _ = self._request("POST", "/admin/login/?next=/admin/", form.encode())
        assert status == 302 and "sessionid" in self.cookies, status

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers.update(
                {"Content-Type": "application/x-www-form-urlencoded", "Referer": f"http://127.0.0.1:{self.port}/"}
            )
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name] = rest.split(";")[0]
        return response.status, response.read()

    def get(self, path: str) -> tuple[int, bytes]:
        return self._request("GET", path)


def _lag_on_page(page: bytes) -> float:
    match = re.search(rb'data-kpi="mapping_lag"><span class="l">Mapping lag</span><span class="v">(\d+) s', page)
    assert match, page[:3000]
    return float(match.group(1))


def _prepare_console(env: dict[str, str], password: str) -> None:
    script = (
        "import django; django.setup(); from django.contrib.auth.models import User; "
        "from django.core.management import call_command; "
        "call_command('collectstatic', interactive=False, verbosity=0); "
        f"User.objects.create_superuser('ops', 'ops@example.com', {password!r})"
    )
    result = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-c", script], env=env, cwd=REPO, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]


def test_prometheus_sees_the_backlog_rise_and_fall_and_readyz_follows_the_database(tmp_path, redis_url):
    require_runnable()
    if shutil.which("prometheus") is None:
        require_service("prometheus", "install Debian's prometheus (`make ops-deps`)")
    broker = redis.Redis.from_url(redis_url)
    broker.delete("ingest")  # stale tasks of another run
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    with own_postgres() as server:
        env = production_env(
            server.url("steplens"),
            CELERY_BROKER_URL=redis_url,
            REDIS_URL=redis_url,
            CACHE_URL="locmemcache://",
            STEPLENS_METRICS_TOKEN=TOKEN,
            PROMETHEUS_MULTIPROC_DIR=str(multiproc),
            STEPLENS_OPS_WARN_MAPPING_LAG_SECONDS="2",
            STEPLENS_OPS_BANNER_CACHE_SECONDS="1",
            STEPLENS_OTLP_REQUEUE_AFTER_SECONDS="3600",
            DATABASE_CONNECT_TIMEOUT="2",
            STATIC_ROOT=str(tmp_path / "static"),  # the console's pages need the collected static files
            LOG_FORMAT="json",
        )
        api_key = prepare_database(server, env)
        password = secrets.token_hex(8)
        _prepare_console(env, password)
        services: list[Service] = []
        try:
            gunicorn, port = _start_gunicorn(env, tmp_path)
            services.append(gunicorn)
            prometheus, prom_port = _start_prometheus(port, tmp_path)
            services.append(prometheus)
            wait_until(lambda: _scalar(prom_port, "steplens_state_up") == 1, timeout=30, what="first scrape")
            assert _scalar(prom_port, "steplens_ingest_backlog_batches") == 0

            # (1) No ingest worker: every accepted batch waits. The backlog rises in Prometheus, matching the
            # database (batches, bytes) and the broker (one task per batch on the `ingest` queue).
            for _ in range(BATCHES):
                _post_batch(port, api_key)
            with server.connect("steplens") as db:
                batches, size = db.execute(
                    "SELECT count(*), sum(body_bytes) FROM traces_ingestbatch WHERE status IN ('queued', 'processing')"
                ).fetchone()
            assert batches == BATCHES
            wait_until(
                lambda: _scalar(prom_port, "steplens_ingest_backlog_batches") == BATCHES,
                timeout=20,
                what="backlog in Prometheus",
            )
            assert _scalar(prom_port, "steplens_ingest_backlog_bytes") == size
            assert _scalar(prom_port, 'steplens_celery_queue_depth{queue="ingest"}') == broker.llen("ingest") == BATCHES
            # Requests served by both gunicorn workers, summed through the multiprocess directory.
            accepted = "sum(steplens_ingest_spans_accepted_total)"
            wait_until(lambda: _scalar(prom_port, accepted) == BATCHES * SPANS, timeout=20, what="accepted spans")
            route = (
                "sum(http_server_request_duration_seconds_count"
                '{http_route="/v1/traces",http_response_status_code="200"})'
            )
            assert _scalar(prom_port, route) == BATCHES
            lag_before = _scalar(prom_port, "steplens_ingest_mapping_lag_seconds")
            console = _Console(port, "ops", password)
            status, page = console.get("/admin/system/")
            assert status == 200
            page_lag_before = _lag_on_page(page)
            time.sleep(3)
            wait_until(
                lambda: _scalar(prom_port, "steplens_ingest_mapping_lag_seconds") >= lag_before + 2,
                timeout=20,
                what="lag growing",
            )
            status, page = console.get("/admin/system/")
            assert _lag_on_page(page) >= page_lag_before + 2
            assert b'id="system-banner"' in page and b"minutes behind" in page

            # (2) A worker starts: the backlog drains, in the database and in Prometheus.
            worker = start_ingest_worker(env, tmp_path)
            services.append(worker)
            try:
                wait_until(
                    lambda: _scalar(prom_port, "steplens_ingest_backlog_batches") == 0,
                    timeout=90,
                    what="backlog drained",
                )
            except AssertionError:
                with server.connect("steplens") as db:
                    states = db.execute("SELECT status, count(*) FROM traces_ingestbatch GROUP BY status").fetchall()
                scraped = _get(port, "/metrics", {"Authorization": f"Bearer {TOKEN}"})[1][-3000:]
                raise AssertionError(
                    f"batches {states}, Prometheus {_query(prom_port, 'steplens_ingest_backlog_batches')}, "
                    f"{_query(prom_port, 'steplens_state_up')}\n{scraped}"
                ) from None
            assert _scalar(prom_port, "steplens_ingest_mapping_lag_seconds") == 0
            assert _scalar(prom_port, "max_over_time(steplens_ingest_backlog_batches[5m])") == BATCHES
            with server.connect("steplens") as db:
                assert db.execute("SELECT count(*) FROM steps_step").fetchone()[0] == BATCHES * SPANS
            stop_services([worker])
            # LOG_FORMAT=json in the worker too (Celery keeps Steplens's logging): one object per line.
            lines = [json.loads(line) for line in worker.log.read_text().splitlines() if line.startswith("{")]
            done = [r for r in lines if "process_ingest_batches" in r["message"] and "succeeded" in r["message"]]
            assert done and all(r["logger"] == "celery.app.trace" for r in done), worker.tail()

            # (3) Readiness follows the database: 503 naming it while it is stopped, 200 by itself once it is back.
            assert _get(port, "/readyz")[0] == 200
            server.stop()
            status, body = _get(port, "/readyz")
            assert status == 503, body
            answer = json.loads(body)
            assert answer["error"] == "service_unavailable" and "database" in answer["failed"]
            assert answer["checks"]["database"]["ok"] is False
            wait_until(lambda: _scalar(prom_port, "steplens_state_up") == 0, timeout=20, what="state down in scrape")
            assert _get(port, "/healthz")[0] == 200  # liveness does not follow the database
            server.start()
            wait_until(lambda: all(_get(port, "/readyz")[0] == 200 for _ in range(4)), timeout=30, what="ready again")
            wait_until(lambda: _scalar(prom_port, "steplens_state_up") == 1, timeout=20, what="state back in scrape")
        finally:
            stop_services(services)
    requests = [json.loads(line) for line in gunicorn.log.read_text().splitlines() if line.startswith("{")]
    assert any(r.get("request_id") and r["logger"] == "ops.views" for r in requests), gunicorn.tail()
