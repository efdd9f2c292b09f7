"""Every /v1/ route, gathered from the apps' api/urls.py."""

from django.urls import include, path

urlpatterns = [
    path("", include("accounts.api.urls")),
    path("", include("steps.api.urls")),
    path("", include("traces.api.urls")),
    path("", include("runner.api.urls")),
    path("", include("monitors.api.urls")),
]
