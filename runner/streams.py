"""Per-run event streams: the worker publishes chunks, the web process relays them over SSE.

Every event gets a `seq_id` that increases within the run, so a client that dropped can resume with
`starting_after`. Production uses a Redis stream per run (the worker and the web process may be on
different machines); embedded mode keeps the streams in process memory.

A stream survives silence and Redis outages: reads block for at most the ping interval on a socket whose
timeout is longer than that, and a dropped connection is retried until Redis is back, the reader resuming
after its last seq_id. `follow` also ends a stream whose run is final in the database (a finished run
resumed, a run whose worker died before publishing its `done` event).
"""

import json
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from django.conf import settings

logger = logging.getLogger(__name__)

DONE = "done"  # the event type that closes a run's stream (a resumed run opens it again)
_TTL_SECONDS = 24 * 3600
# Largest seq_id a client may resume after: Redis stream ids are two unsigned 64-bit numbers, and the API keeps to
# the signed range so every language's integer holds it.
MAX_SEQ_ID = 2**63 - 1
# How often a reader retries a Redis that went away (it keeps pinging its client meanwhile).
_RECONNECT_SECONDS = 1.0


class RunStream(Protocol):
    def publish(self, run_id: str, event: dict[str, Any]) -> int: ...

    def read(self, run_id: str, *, after: int, block_ms: int) -> list[dict[str, Any]]: ...

    def last(self, run_id: str) -> dict[str, Any] | None: ...


class MemoryRunStream:
    """In-process streams for embedded mode; bounded by run count, oldest dropped first."""

    def __init__(self, *, max_runs: int = 2000) -> None:
        self._events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._condition = threading.Condition()
        self._max_runs = max_runs

    def publish(self, run_id: str, event: dict[str, Any]) -> int:
        with self._condition:
            events = self._events[run_id]
            seq_id = len(events) + 1
            events.append({**event, "seq_id": seq_id})
            if len(self._events) > self._max_runs:
                del self._events[next(iter(self._events))]
            self._condition.notify_all()
            return seq_id

    def read(self, run_id: str, *, after: int, block_ms: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + block_ms / 1000
        with self._condition:
            while True:
                events = self._events.get(run_id, [])
                if len(events) > after:
                    return events[after:]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._condition.wait(remaining)

    def last(self, run_id: str) -> dict[str, Any] | None:
        with self._condition:
            events = self._events.get(run_id)
            return events[-1] if events else None


class RedisRunStream:
    """A Redis stream per run; entry ids are `0-<seq_id>`, so XREAD resumes after any seq_id.

    The socket timeout is longer than the longest blocking read (redis-py's default of 5 s cut every stream
    idle for 5 s), keep-alive finds dead peers, and commands retry a dropped connection a few times.
    """

    def __init__(self, url: str, *, max_block_ms: int | None = None) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self._errors = (redis.ConnectionError, redis.TimeoutError)
        block_seconds = (max_block_ms / 1000) if max_block_ms is not None else settings.STEPLENS_SSE_PING_SECONDS
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=block_seconds + 10,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        # The last seq_id this process published per run: Redis as run here keeps nothing on disk, so after a restart
        # its counter starts again at 1 and readers waiting after seq N would miss everything; this keeps it rising.
        self._published: OrderedDict[str, int] = OrderedDict()
        self._published_lock = threading.Lock()

    @staticmethod
    def _key(run_id: str) -> str:
        return f"steplens:run:{run_id}:events"

    def _next_seq(self, key: str, run_id: str) -> int:
        seq_id = int(self._redis.incr(f"{key}:seq"))
        with self._published_lock:
            floor = self._published.get(run_id, 0)
            if seq_id <= floor:
                seq_id = floor + 1
                self._redis.set(f"{key}:seq", seq_id, ex=_TTL_SECONDS)
            self._published[run_id] = seq_id
            self._published.move_to_end(run_id)
            while len(self._published) > 10000:
                self._published.popitem(last=False)
        return seq_id

    def publish(self, run_id: str, event: dict[str, Any]) -> int:
        key = self._key(run_id)
        seq_id = self._next_seq(key, run_id)
        payload = json.dumps({**event, "seq_id": seq_id}, default=str)
        pipe = self._redis.pipeline()
        pipe.xadd(key, {"e": payload}, id=f"0-{seq_id}")
        pipe.expire(key, _TTL_SECONDS)
        pipe.expire(f"{key}:seq", _TTL_SECONDS)
        pipe.execute()
        return seq_id

    def read(self, run_id: str, *, after: int, block_ms: int) -> list[dict[str, Any]]:
        """Events after `after`, waiting up to `block_ms` (0: do not wait); [] when none came or Redis is down."""
        deadline = time.monotonic() + block_ms / 1000
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            try:
                answer = self._redis.xread(
                    {self._key(run_id): f"0-{after}"}, block=remaining_ms if remaining_ms > 0 else None, count=500
                )
            except self._errors:
                # Redis restarting: keep the caller's rhythm (it pings its client on []) and try again.
                logger.warning("run stream %s: Redis unavailable, retrying", run_id, exc_info=True)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                time.sleep(min(_RECONNECT_SECONDS, remaining))
                continue
            if not answer:
                return []
            return [json.loads(fields[b"e"]) for _, entries in answer for _, fields in entries]

    def last(self, run_id: str) -> dict[str, Any] | None:
        try:
            entries = self._redis.xrevrange(self._key(run_id), count=1)
        except self._errors:
            return None
        return json.loads(entries[0][1][b"e"]) if entries else None


_lock = threading.Lock()
_stream: RunStream | None = None


def get_run_stream() -> RunStream:
    """The process's stream backend: Redis when REDIS_URL is set, memory otherwise."""
    global _stream
    with _lock:
        if _stream is None:
            _stream = RedisRunStream(settings.REDIS_URL) if settings.REDIS_URL else MemoryRunStream()
        return _stream


def set_run_stream(stream: RunStream | None) -> None:
    """Swap the backend (tests, and workers configured after import)."""
    global _stream
    with _lock:
        _stream = stream


def follow(
    run_id: str,
    *,
    after: int = 0,
    idle_ms: int = 15000,
    stop: threading.Event | None = None,
    run_ended: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any] | None]:
    """Yield the run's events after `after` until a `done` event; yields None when idle (time for a ping).

    With `run_ended` (is the run final in the database?), a run that is already final yields what is left without
    waiting, and an idle stream whose run became final meanwhile ends too: the generator then returns without a
    `done` event and the caller closes the stream from the run's row (as `runner.api.sse.relay` does).
    """
    stream = get_run_stream()
    ended = run_ended is not None and run_ended()
    while stop is None or not stop.is_set():
        events = stream.read(run_id, after=after, block_ms=0 if ended else idle_ms)
        if not events:
            if ended:
                return
            if run_ended is not None and run_ended():
                ended = True  # read once more without waiting: the worker publishes right after it commits
                continue
            yield None
            continue
        for event in events:
            after = event["seq_id"]
            yield event
            if event.get("type") == DONE:
                return


def stream_closed(run_id: str) -> bool:
    """Did the run's last published event close its stream? (A finished run resumed past its end.)"""
    last = get_run_stream().last(run_id)
    return last is not None and last.get("type") == DONE
