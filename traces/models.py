"""Provider traces: the raw request and response of every provider call, secrets redacted."""

from django.db import models

from accounts.models import Organization
from steps.models import Step


class ProviderTrace(models.Model):
    """What was sent to the provider and what came back (or the error), for one attempt of a step."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="provider_traces")
    step = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="provider_traces", db_index=False)
    attempt = models.PositiveSmallIntegerField(default=1)
    provider = models.CharField(max_length=64)
    api = models.CharField(max_length=32, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    request_json = models.JSONField(null=True, blank=True)
    response_json = models.JSONField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error_type = models.CharField(max_length=64, null=True, blank=True)
    error_message = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # The unique constraint's index serves lookups by step.
        constraints = [
            models.UniqueConstraint(fields=["step", "attempt"], name="ptrace_unique_step_attempt"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} trace of {self.step_id}"
