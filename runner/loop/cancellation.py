"""Cancellation of a running run: the process-local events that stop a provider stream at once, and the
watcher that notices a cancel asked in another process (the run's database flag) and keeps the run's lease alive."""

import logging
import threading
import time

from django.conf import settings
from django.db import connection

from agents.selectors import run_cancel_requested
from agents.services import run_heartbeat
from runner.providers import CancelEvent

logger = logging.getLogger(__name__)

_local_cancels: dict[str, CancelEvent] = {}
_local_lock = threading.Lock()


def cancel_event_for(run_id: str) -> CancelEvent:
    """The process-local event that stops a run's in-flight provider stream."""
    with _local_lock:
        return _local_cancels.setdefault(run_id, CancelEvent())


def signal_cancel(run_id: str) -> None:
    """Stop a run running in this process at once (other processes notice the database flag)."""
    with _local_lock:
        event = _local_cancels.get(run_id)
    if event is not None:
        event.set()


def forget_cancel(run_id: str) -> None:
    """Drop a run's event once the run stopped in this process."""
    with _local_lock:
        _local_cancels.pop(run_id, None)


class CancelWatcher:
    """Polls the run's cancel flag so a run executing in another process stops within a second, and keeps the
    run's lease alive (a heartbeat every STEPLENS_RUN_HEARTBEAT_SECONDS). The one watcher: setting the run's
    CancelEvent aborts its in-flight provider call directly (runner.providers.base), with no thread of its own.

    A heartbeat that finds the lease gone (the run was taken over after this worker stalled past the bound)
    stops the run here as if cancelled; the new holder finishes it.
    """

    def __init__(self, run_id: str, event: CancelEvent, interval: float, *, lease: str | None = None) -> None:
        self._run_id, self._event, self._interval, self._lease = run_id, event, interval, lease
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"cancel-watch-{run_id}", daemon=True)
        self.lost = False

    def __enter__(self) -> "CancelWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        beat_every = settings.STEPLENS_RUN_HEARTBEAT_SECONDS
        last_beat = time.monotonic()
        try:
            while not self._stopped.wait(self._interval) and not self._event.is_set():
                if self._lease is not None and time.monotonic() - last_beat >= beat_every:
                    if not self._beat():
                        self.lost = True
                        self._event.set()
                        break
                    last_beat = time.monotonic()
                if run_cancel_requested(run_id=self._run_id):
                    self._event.set()
        except Exception:  # the database going away must not kill the run; the main loop sees it too
            logger.warning("cancel watcher for %s stopped", self._run_id, exc_info=True)
        finally:
            connection.close()

    def _beat(self) -> bool:
        try:
            return run_heartbeat(run_id=self._run_id, lease=self._lease)
        except Exception:  # a database blip: the next beat tries again (the bound allows many missed beats)
            logger.warning("heartbeat of %s failed", self._run_id, exc_info=True)
            reconnect_if_broken()
            return True


def reconnect_if_broken() -> None:
    """After a database restart the old connection is dead; drop it so the next query reconnects."""
    if connection.connection is not None and not connection.in_atomic_block and not connection.is_usable():
        connection.close()
