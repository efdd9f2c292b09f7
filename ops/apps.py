from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Celery task timing, periodic-task bookkeeping and log context; OpenTelemetry gauges read at export time.
        from ops import collectors, signals

        signals.connect()
        collectors.otel_gauges_register()
