"""Real processes for the run fault tests and bench/broker_recovery.py: a Redis or RabbitMQ broker of our own (free
ports, loopback only, started, restarted and stopped here; never the machine's shared ones), Celery workers on the
`runs` queue, and counting helpers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.faults.otlp_support import REPO, Service, free_port, production_env, start_service, stop_services

__all__ = ["REPO", "Service", "free_port", "production_env", "start_service", "stop_services"]


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.2, what: str = "") -> float:
    """Poll `predicate` until it is truthy; returns the seconds it took. Fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)
    return time.monotonic() - start


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class OwnRedis:
    """redis-server on 127.0.0.1:<free port>, nothing on disk (like the shared one): a restart loses every key."""

    def __init__(self) -> None:
        if not shutil.which("redis-server"):
            from tests.conftest import require_service

            require_service("redis-server", "the fault tests start their own Redis")
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_until(lambda: _listening(self.port), timeout=30, what="redis-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


class OwnRabbit:
    """A RabbitMQ node of our own: its own node name, ports, mnesia and log folders, no config file and no plugins."""

    def __init__(self) -> None:
        if not shutil.which("rabbitmq-server"):
            from tests.conftest import require_service

            require_service("rabbitmq-server", "the broker fault tests start their own RabbitMQ node")
        self.port, self.dist_port = free_port(), free_port()
        self.root = Path(tempfile.mkdtemp(prefix="steplens-rabbit-", dir="/tmp"))
        self.name = f"steplens-{secrets.token_hex(3)}@localhost"
        for folder in ("mnesia", "log"):
            (self.root / folder).mkdir()
        (self.root / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:  # rabbitmq-server drops to the rabbitmq user, which must own its folders
            with suppress(KeyError, LookupError, PermissionError):
                for path in (self.root, *self.root.iterdir()):
                    shutil.chown(path, user="rabbitmq", group="rabbitmq")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "none"),  # not /etc/rabbitmq: its listener is the shared port
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
        }
        with (self.root / "server.out").open("ab") as out:
            self.process = subprocess.Popen(
                ["rabbitmq-server"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd="/tmp"
            )
        wait_until(lambda: _listening(self.port), timeout=90, interval=0.5, what="rabbitmq-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
        # rabbitmq-server starts the Erlang VM in a session of its own (as the rabbitmq user): find it by node name.
        import psutil

        for process in psutil.process_iter(["pid"]):
            with suppress(psutil.Error):
                if process.environ().get("RABBITMQ_NODENAME") == self.name:
                    process.kill()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def worker_env(database_url: str, *, broker_url: str, redis_url: str, **settings: str) -> dict[str, str]:
    """A production worker against `database_url` and `broker_url`, with settings (small bounds) as strings."""
    return production_env(
        database_url,
        CELERY_BROKER_URL=broker_url,
        REDIS_URL=redis_url,
        CACHE_URL="locmemcache://",
        **settings,
    )


def start_runs_worker(env: dict[str, str], logs: Path, *, name: str, concurrency: int = 2) -> Service:
    """A prefork Celery worker on the `runs` and `default` queues (a new process group: killable as a tree)."""
    command = [
        str(REPO / ".venv/bin/celery"), "-A", "config", "worker", "-Q", "runs,default", "-P", "prefork",
        "-c", str(concurrency), "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-n", f"{name}-{secrets.token_hex(3)}@%h",
    ]  # fmt: skip
    return start_service(name, command, env, logs)


@contextmanager
def use_broker(url: str, monkeypatch) -> Iterator[None]:
    """Send this process's tasks to `url` (Celery reads CELERY_BROKER_URL from the environment before its conf)."""
    from config.celery import app

    def reset_pool() -> None:
        app._pool = None  # the pools keep the URL they were built with (closing them would close kombu's shared ones)
        app.amqp._producer_pool = None

    keys = ("broker_url", "task_always_eager", "result_backend")
    # Only values set on the app itself are restored; the others are dropped again, so they go back to reading
    # the Django settings. (Reading app.conf[key] here would copy whatever a test has just put in the settings,
    # e.g. CELERY_TASK_ALWAYS_EAGER=False, and restoring that copy would pin it for the rest of the session.)
    overridden = {k: app.conf.changes[k] for k in keys if k in app.conf.changes}
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    app.conf.update(broker_url=url, task_always_eager=False, result_backend=None)
    reset_pool()
    try:
        yield
    finally:
        monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
        monkeypatch.undo()
        for key in keys:
            app.conf.changes.pop(key, None)
        app.conf.update(overridden)
        reset_pool()


def kill_tree(service: Service) -> None:
    """SIGKILL the worker and its pool children at once (a machine or container dying)."""
    with suppress(ProcessLookupError):
        os.killpg(service.process.pid, signal.SIGKILL)
    service.process.wait(timeout=30)


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@dataclass
class Counts:
    """How the runs and their steps ended: every assertion of the fault suite is on these numbers."""

    runs_unfinished: int
    steps_pending: int
    duplicate_attempts: int
    run_states: dict[str, int]
    step_states: dict[str, int]


def count(run_ids: Iterable[str]) -> Counts:
    from django.db.models import Count

    from agents.models import Run, RunStatus
    from steps.models import Step

    run_ids = list(run_ids)
    runs = Run.objects.filter(pk__in=run_ids)
    steps = Step.objects.filter(run_id__in=run_ids)
    duplicates = steps.values("run_id", "step_number", "attempt").annotate(n=Count("id")).filter(n__gt=1).count()
    finished = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
    return Counts(
        runs_unfinished=runs.exclude(status__in=finished).count(),
        steps_pending=steps.filter(status="pending").count(),
        duplicate_attempts=duplicates,
        run_states={row["status"]: row["n"] for row in runs.values("status").annotate(n=Count("id"))},
        step_states={row["status"]: row["n"] for row in steps.values("status").annotate(n=Count("id"))},
    )


def database_url() -> str:
    """The URL of the test database this process uses, for the worker processes."""
    from django.db import connection

    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
