"""Per-run event streams: the worker publishes chunks, the web process relays them over SSE.

Every event gets a `seq_id` that increases within the run, so a client that dropped can resume with
`starting_after`. Production uses a Redis stream per run (the worker and the web process may be on
different machines); embedded mode keeps the streams in process memory.
"""

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Protocol

from django.conf import settings

DONE = "done"  # the event type that closes a run's stream (a resumed run opens it again)
_TTL_SECONDS = 24 * 3600


class RunStream(Protocol):
    def publish(self, run_id: str, event: dict[str, Any]) -> int: ...

    def read(self, run_id: str, *, after: int, block_ms: int) -> list[dict[str, Any]]: ...


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


class RedisRunStream:
    """A Redis stream per run; entry ids are `0-<seq_id>`, so XREAD resumes after any seq_id."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)

    @staticmethod
    def _key(run_id: str) -> str:
        return f"steplens:run:{run_id}:events"

    def publish(self, run_id: str, event: dict[str, Any]) -> int:
        key = self._key(run_id)
        seq_id = int(self._redis.incr(f"{key}:seq"))
        payload = json.dumps({**event, "seq_id": seq_id}, default=str)
        pipe = self._redis.pipeline()
        pipe.xadd(key, {"e": payload}, id=f"0-{seq_id}")
        pipe.expire(key, _TTL_SECONDS)
        pipe.expire(f"{key}:seq", _TTL_SECONDS)
        pipe.execute()
        return seq_id

    def read(self, run_id: str, *, after: int, block_ms: int) -> list[dict[str, Any]]:
        answer = self._redis.xread({self._key(run_id): f"0-{after}"}, block=max(block_ms, 1), count=500)
        if not answer:
            return []
        return [json.loads(fields[b"e"]) for _, entries in answer for _, fields in entries]


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
    run_id: str, *, after: int = 0, idle_ms: int = 15000, stop: threading.Event | None = None
) -> Iterator[dict[str, Any] | None]:
    """Yield the run's events after `after` until a `done` event; yields None when idle (time for a ping)."""
    stream = get_run_stream()
    while stop is None or not stop.is_set():
        events = stream.read(run_id, after=after, block_ms=idle_ms)
        if not events:
            yield None
            continue
        for event in events:
            after = event["seq_id"]
            yield event
            if event.get("type") == DONE:
                return
