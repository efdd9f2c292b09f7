"""The Celery application; workers start with `celery -A config worker`."""

import os
from enum import StrEnum

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")


class Queue(StrEnum):
    """Every queue Steplens uses, named in one place."""

    DEFAULT = "default"
    RUNS = "runs"
    INGEST = "ingest"


app = Celery("steplens")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = None
app.conf.task_create_missing_queues = True
app.autodiscover_tasks()


@signals.worker_process_init.connect
def _telemetry_setup_in_child(**_: object) -> None:
    """OpenTelemetry per prefork child: exporter threads do not survive the fork, so each child builds its own."""
    from config.telemetry import telemetry_setup

    telemetry_setup()


@signals.worker_init.connect
def _telemetry_setup_in_worker(sender: object = None, **_: object) -> None:
    """Solo and thread pools run tasks in the worker process itself, which no worker_process_init reaches."""
    if "prefork" not in str(getattr(sender, "pool_cls", "prefork")).lower():
        from config.telemetry import telemetry_setup

        telemetry_setup()
