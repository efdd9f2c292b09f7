"""When each periodic task last ran: what the system page and the late-task warning read."""

from django.db import models


class PeriodicTaskRun(models.Model):
    """The last execution of one Celery task named in CELERY_BEAT_SCHEDULE, written by the worker that ran it
    (ops.signals). One row per task: beat keeps its own schedule file on one host, which no web process can read."""

    task = models.CharField(max_length=200, primary_key=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    last_outcome = models.CharField(max_length=16, blank=True, default="", help_text="success, failure or retry.")
    last_duration_ms = models.PositiveIntegerField(null=True, blank=True)
    last_rows = models.BigIntegerField(null=True, blank=True, help_text="What the task reported handling.")
    last_error = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"{self.task} (last finished {self.last_finished_at})"
