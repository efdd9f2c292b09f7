from django.urls import path

from monitors.api import views

urlpatterns = [
    path("monitors", views.MonitorListApi.as_view(), name="monitor-list"),
    path("monitors/<str:monitor_id>", views.MonitorDetailApi.as_view(), name="monitor-detail"),
    path("monitors/<str:monitor_id>/alerts", views.MonitorAlertsApi.as_view(), name="monitor-alerts"),
    path("monitors/<str:monitor_id>/deliveries", views.MonitorDeliveriesApi.as_view(), name="monitor-deliveries"),
    path("monitors/<str:monitor_id>/test", views.MonitorTestApi.as_view(), name="monitor-test"),
    path("monitors/<str:monitor_id>/rotate-secret", views.MonitorRotateSecretApi.as_view(), name="monitor-rotate"),
    path("alerts", views.AlertListApi.as_view(), name="alert-list"),
]
