from django.urls import path

from traces.api import views

urlpatterns = [
    path("traces", views.OtlpTracesApi.as_view(), name="otlp-traces"),
]
