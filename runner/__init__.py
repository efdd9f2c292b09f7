"""What drives agents: the loop, the provider adapters, the tools, the Celery tasks, the run streams and the REST
API that starts and follows runs. It sits above the records it writes (agents, steps) and the OpenTelemetry
helpers it calls (traces)."""
