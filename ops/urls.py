"""/healthz, /readyz and /metrics, at the root: where load balancers, Kubernetes and Prometheus look."""

from django.urls import path

from ops.views import healthz, metrics_view, readyz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]
