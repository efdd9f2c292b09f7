"""The Celery application; workers start with `celery -A config worker`."""

import os
from enum import StrEnum

from celery import Celery

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
