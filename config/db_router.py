"""Read replicas: which database alias each query goes to.

With `DATABASE_REPLICA_URL` set, `settings.DATABASES` has a second alias, `replica` (a PostgreSQL streaming
standby of the primary), and `ReplicaRouter` is installed. A read goes to the replica only when the code around it
said that data a little behind the primary is fine, with `replica_reads()`: `config.middleware.ReplicaReadsMiddleware`
says so for GET/HEAD on the step list, the request join, the usage and errors reports and the console pages. Every
other read goes to the primary, so code that does not opt in keeps read-your-writes:

- writes, and every read after a write of replicated data in the same `replica_reads()` block;
- reads inside `transaction.atomic` (and inside a test's transaction, which only the primary connection sees);
- the tenancy and login tables (`accounts`, `auth`, `sessions`, ...): a new API key or a revoked member takes
  effect at once, and a session made at login is found on the next page;
- anything under `primary()`, and every Celery task (an eager one inside a request too), so the agent loop and
  OTLP ingest's claim and mapping; SSE streams, whose bodies are produced after the middleware returned.

Without a replica alias the router is not installed and every query goes to `default`, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import signals
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, router

if TYPE_CHECKING:  # the settings import this module: it imports no more of Django than django.db itself
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Model

PRIMARY = DEFAULT_DB_ALIAS
REPLICA = "replica"
ROUTER = "config.db_router.ReplicaRouter"

# Apps whose rows decide who may do what, or who is logged in: read from the primary always, because acting on a
# lagging copy of them would be wrong (a revoked key still accepted, a fresh login session not found).
PRIMARY_ONLY_APPS = frozenset({"accounts", "auth", "sessions", "contenttypes", "admin"})


@dataclass(slots=True)
class _Scope:
    """What the current request or block said about replica reads; a write turns them off for the rest of it."""

    replica: bool


_scope: ContextVar[_Scope | None] = ContextVar("steplens_read_scope", default=None)


def replica_settings(replica: dict[str, Any], *, primary: dict[str, Any]) -> dict[str, Any]:
    """`settings.DATABASES["replica"]` from the parsed `DATABASE_REPLICA_URL` (django-environ's `env.db`).

    Connection reuse follows the primary's. The test runner uses the primary's test database for it (a TEST
    MIRROR): the suite never creates or migrates a database on the replica server.
    """
    if replica["ENGINE"] != primary["ENGINE"]:
        raise ImproperlyConfigured(
            f"DATABASE_REPLICA_URL must be a streaming replica of DATABASE_URL (same engine): got {replica['ENGINE']} "
            f"for a {primary['ENGINE']} primary."
        )
    settings = {**replica, "ATOMIC_REQUESTS": False}
    for key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "DISABLE_SERVER_SIDE_CURSORS"):
        if key in primary:
            settings.setdefault(key, primary[key])
    settings["TEST"] = {"MIRROR": PRIMARY}
    return settings


def replica_configured() -> bool:
    """True when a replica alias exists (DATABASE_REPLICA_URL was set)."""
    return REPLICA in connections.settings


@contextmanager
def replica_reads() -> Iterator[None]:
    """Reads in this block may go to the replica, unless an enclosing `primary()` said otherwise."""
    current = _scope.get()
    token = _scope.set(_Scope(replica=current is None or current.replica))
    try:
        yield
    finally:
        _scope.reset(token)


@contextmanager
def primary() -> Iterator[None]:
    """Reads in this block (or function, as a decorator) go to the primary: for code that must see what was just
    written, even when called from a request that reads from the replica."""
    token = _scope.set(_Scope(replica=False))
    try:
        yield
    finally:
        _scope.reset(token)


# Tokens of the primary() scope each running task opened, by task id.
_task_scopes: dict[str, Token[_Scope | None]] = {}


@signals.task_prerun.connect(weak=False)
def _task_reads_primary(task_id: str, **_: Any) -> None:
    """A Celery task reads the primary, also when it runs eagerly inside a request that may read the replica: tasks
    act on what was just written (the run they execute, the batch they map)."""
    _task_scopes[task_id] = _scope.set(_Scope(replica=False))


@signals.task_postrun.connect(weak=False)
def _task_done(task_id: str, **_: Any) -> None:
    token = _task_scopes.pop(task_id, None)
    if token is not None:
        _scope.reset(token)


def reads_from_replica(model: type[Model]) -> bool:
    """Whether a read of `model` here would go to the replica (the router's whole rule for reads)."""
    scope = _scope.get()
    if scope is None or not scope.replica or model._meta.app_label in PRIMARY_ONLY_APPS:
        return False
    if not replica_configured():
        return False
    # A transaction's reads must see its own writes (and a test's data lives in the test's open transaction).
    return not connections[PRIMARY].in_atomic_block


def read_connection(model: type[Model]) -> BaseDatabaseWrapper:
    """The connection a hand-written SELECT on `model`'s table should use: the alias an ORM read would get."""
    return connections[router.db_for_read(model)]


class ReplicaRouter:
    """Django database router for a primary (`default`) and its streaming replica (`replica`)."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        # Always an explicit answer: an instance loaded from the replica must not pull its related rows from there
        # later, outside `replica_reads()` (Django would follow the instance's own database for a None).
        return REPLICA if reads_from_replica(model) else PRIMARY

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        scope = _scope.get()
        if scope is not None and model._meta.app_label not in PRIMARY_ONLY_APPS:
            # Read-your-writes: after writing replicated data, this request reads it back from the primary. (A key's
            # last-used time or a session does not count: nothing read from the replica depends on them.)
            scope.replica = False
        return PRIMARY

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        # The replica holds the same rows as the primary: objects from either may be related.
        if {obj1._state.db, obj2._state.db} <= {PRIMARY, REPLICA}:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        # A standby replays the primary's WAL, schema included; it cannot be migrated (it is read-only).
        return db != REPLICA
