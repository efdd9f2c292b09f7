"""URL routes: the admin and the /v1/ API."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    # Probes and the metrics scrape (ops/urls.py): no API key, no session, JSON errors.
    path("", include("ops.urls")),
    path("admin/", admin.site.urls),
    path("v1/schema", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
    path(
        "v1/docs",
        SpectacularSwaggerView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="docs",
    ),
    path("v1/", include("config.api_urls")),
]

# Unknown /v1/ paths and uncaught exceptions answer the API's JSON error, never an HTML page.
handler400 = "config.exceptions.handler400"
handler404 = "config.exceptions.handler404"
handler500 = "config.exceptions.handler500"
