"""Real processes for the OTLP ingest fault tests: a PostgreSQL instance of the test's own (initdb into a temporary
folder, a free port, loopback only), gunicorn with gthread workers, a Celery ingest worker, and OTLP bodies.

Never the machine's shared PostgreSQL: the instance here is started, restarted, stopped and deleted by the test.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tests.conftest import require_service

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("STEPLENS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OwnPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, run as the `postgres` OS user when we are root
    (initdb refuses root)."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
            require_service("PostgreSQL server binaries", f"initdb and pg_ctl under {PG_BIN} (STEPLENS_TEST_PG_BIN)")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                require_service("a `postgres` OS user", "initdb refuses to run as root")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="steplens-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        try:
            if self.as_user:
                shutil.chown(self.root, user="postgres", group="postgres")
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", timeout=120)
        except subprocess.CalledProcessError as exc:
            log = self.root / "initdb.out"
            output = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            shutil.rmtree(self.root, ignore_errors=True)
            raise AssertionError(f"initdb failed: {output}") from exc
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        # Output to a file, never a pipe: the server pg_ctl starts inherits it and would hold a pipe open.
        with (self.root / f"{tool}.out").open("ab") as out:
            subprocess.run(
                [*self.as_user, str(PG_BIN / tool), *args],
                check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd="/tmp",
            )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database, autocommit=True)

    def destroy(self) -> None:
        with suppress(subprocess.SubprocessError, OSError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def production_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a production web or worker process against `database_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_", "STEPLENS_", "OTEL_"))}
    env.pop("DATABASE_URL", None)
    env.pop("DATABASE_REPLICA_URL", None)  # a replica of the suite's database is not one of this server's
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_SECRET_KEY=secrets.token_hex(24),
        DJANGO_HTTPS="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=database_url,
        DATABASE_CONN_MAX_AGE="60",
        PYTHONUNBUFFERED="1",
        OTEL_SDK_DISABLED="true",
        **extra,
    )
    return env


_PREPARE = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from accounts.services import api_key_create
from tests.factories import OrganizationFactory
_, key = api_key_create(organization=OrganizationFactory(), name="faults")
print(key)
"""


def prepare_database(server: OwnPostgres, env: dict[str, str], name: str = "steplens") -> str:
    """Create and migrate database `name` on `server`, with one organization; returns its API key."""
    with server.connect("postgres") as db:
        db.execute(f'CREATE DATABASE "{name}"')
    result = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-c", _PREPARE], env=env, cwd=REPO, capture_output=True, timeout=180
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result.stdout.decode().strip().splitlines()[-1]


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def start_service(name: str, command: list[str], env: dict[str, str], logs: Path) -> Service:
    log = logs / f"{name}.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle.close()
    return Service(name, process, log)


def stop_services(services: list[Service]) -> None:
    """SIGTERM each service's process group, SIGKILL what is left after 20 s."""
    for service in services:
        if service.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGTERM)
    for service in services:
        try:
            service.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait(timeout=10)


def start_gunicorn(env: dict[str, str], logs: Path, *, workers: int = 2, threads: int = 8) -> tuple[Service, int]:
    port = free_port()
    command = [
        # The production settings file (request-line limit, metrics hooks); the flags below override its sizes.
        str(REPO / ".venv/bin/gunicorn"), "config.wsgi", "-c", str(REPO / "config/gunicorn.py"), "-k", "gthread",
        "-w", str(workers), "--threads", str(threads), "-b", f"127.0.0.1:{port}", "--timeout", "60",
        "--graceful-timeout", "5",
    ]  # fmt: skip
    service = start_service("gunicorn", command, env, logs)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert service.process.poll() is None, service.tail()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return service, port
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"gunicorn did not listen on {port}: {service.tail()}")


def start_ingest_worker(env: dict[str, str], logs: Path) -> Service:
    command = [
        str(REPO / ".venv/bin/celery"), "-A", "config", "worker", "-Q", "ingest", "-c", "2", "-l", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"faults-ingest-{secrets.token_hex(3)}@%h",
    ]  # fmt: skip
    return start_service("worker", command, env, logs)


# --- OTLP bodies ----------------------------------------------------------------------------------------------------


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def llm_spans_request(spans: int, *, extra: dict[str, str] | None = None) -> ExportTraceServiceRequest:
    """`spans` chat spans (unique ids, usage, one short message each) in one export request."""
    now = time.time_ns()
    out = []
    for i in range(spans):
        attributes = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 100 + i, "gen_ai.usage.output_tokens": 7,
            "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"type": "text", "content": "ok"}]}]',
            **(extra or {}),
        }  # fmt: skip
        out.append(
            Span(
                trace_id=secrets.token_bytes(16),
                span_id=secrets.token_bytes(8),
                name="chat gpt-4o-mini",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=now - 2_000_000_000 + i,
                end_time_unix_nano=now - 1_000_000_000 + i,
                attributes=[_kv(k, v) for k, v in attributes.items()],
            )
        )
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=out)])])


# --- memory ---------------------------------------------------------------------------------------------------------


@dataclass
class RssSampler:
    """The largest RSS seen, per process and summed, of a process tree (a gunicorn master and its workers)."""

    root_pid: int
    interval: float = 0.05
    max_process_bytes: int = 0
    max_total_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for process in processes:
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += rss
            self.max_process_bytes = max(self.max_process_bytes, rss)
        self.max_total_bytes = max(self.max_total_bytes, total)

    def __enter__(self) -> RssSampler:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()


def require_runnable() -> None:
    if not shutil.which("runuser") and os.geteuid() == 0:
        require_service("runuser", "to run initdb as the postgres user")
    if not (REPO / ".venv/bin/gunicorn").exists():
        pytest.fail("gunicorn is not installed in .venv")
