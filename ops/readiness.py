"""Readiness checks: can this process serve? The primary database (and the replica when there is one), the
migrations, the broker and the Redis relay, each within STEPLENS_OPS_CHECK_TIMEOUT_SECONDS.

A check answers `ok` or the reason it failed; the probe is cheap enough to run every few seconds: one `SELECT 1`
per database, a PING per Redis (pooled clients), one AMQP connection for RabbitMQ, and the migration plan only
until it is once found complete (migrations are not undone under a running process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from ops.selectors import broker_url

REPLICA_ALIAS = "replica"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: its name, whether it passed, what it found, and how long it took."""

    name: str
    ok: bool
    detail: str
    duration_ms: float


def _timeout() -> float:
    return float(settings.STEPLENS_OPS_CHECK_TIMEOUT_SECONDS)


def _database(alias: str) -> str:
    connection = connections[alias]
    try:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # Only for this transaction: the connection is the one requests share.
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(_timeout() * 1000)}"])
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        # A broken connection is closed, so the next probe connects afresh once the database is back.
        try:
            connection.close()
        except Exception:
            connection.connection = None
        raise
    return "ok"


_migrations_applied = False
_migrations_lock = threading.Lock()


def _migrations() -> str:
    """Every migration on disk is applied to the primary; remembered once true (this is the only slow check)."""
    global _migrations_applied
    if _migrations_applied:
        return "ok"
    from django.db.migrations.executor import MigrationExecutor

    with _migrations_lock:
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if plan:
            names = ", ".join(f"{migration.app_label}.{migration.name}" for migration, _ in plan[:3])
            raise CheckFailed(f"{len(plan)} migration(s) not applied: {names}")
        _migrations_applied = True
    return "ok"


def migrations_applied_forget() -> None:
    """Tests: check the migrations again on the next probe."""
    global _migrations_applied
    _migrations_applied = False


class CheckFailed(Exception):
    """A check found the service reachable but not ready (the reason is the message)."""


_redis_clients: dict[str, object] = {}
_redis_lock = threading.Lock()


def redis_client(url: str):  # -> redis.Redis
    """A pooled client for `url` with short socket timeouts (one per URL per process)."""
    import redis

    with _redis_lock:
        client = _redis_clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url, socket_timeout=_timeout(), socket_connect_timeout=_timeout(), health_check_interval=30
            )
            _redis_clients[url] = client
        return client


def _redis(url: str) -> str:
    redis_client(url).ping()
    return "ok"


def _amqp(url: str) -> str:
    from kombu import Connection

    with Connection(url, connect_timeout=_timeout(), transport_options={"read_timeout": _timeout()}) as conn:
        conn.connect()
    return "ok"


def _broker(url: str) -> str:
    return _redis(url) if url.startswith(("redis://", "rediss://", "unix://")) else _amqp(url)


def _checks() -> list[tuple[str, Callable[[], str]]]:
    checks: list[tuple[str, Callable[[], str]]] = [("database", lambda: _database(DEFAULT_DB_ALIAS))]
    if REPLICA_ALIAS in connections.settings:
        checks.append(("replica", lambda: _database(REPLICA_ALIAS)))
    checks.append(("migrations", _migrations))
    broker = broker_url()
    if broker is not None:
        checks.append(("broker", lambda: _broker(broker)))
    relay = settings.REDIS_URL or ""
    if relay and relay != broker:
        checks.append(("redis", lambda: _redis(relay)))
    elif relay:
        checks.append(("redis", lambda: "ok (same server as the broker)"))
    return checks


def readiness_check() -> list[CheckResult]:
    """Run every check that applies here, in order; the migrations check is skipped (failed) when the database
    failed, since it needs it."""
    results: list[CheckResult] = []
    database_down = False
    for name, check in _checks():
        started = time.perf_counter()
        if name == "migrations" and database_down and not _migrations_applied:
            results.append(CheckResult(name, False, "skipped: the database is unavailable", 0.0))
            continue
        try:
            detail, ok = check(), True
        except Exception as exc:
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            detail, ok = f"{type(exc).__name__}: {message}" if message else type(exc).__name__, False
            if name == "database":
                database_down = True
        results.append(CheckResult(name, ok, detail, round((time.perf_counter() - started) * 1000, 2)))
    return results
