from django.urls import path

from steps.api import views

urlpatterns = [
    path("steps", views.StepListApi.as_view(), name="step-list"),
    path("deletions/<str:deletion_id>", views.DeletionDetailApi.as_view(), name="deletion-detail"),
    path("steps/<str:step_id>", views.StepDetailApi.as_view(), name="step-detail"),
    path("steps/<str:step_id>/messages", views.StepMessagesApi.as_view(), name="step-messages"),
    path("steps/<str:step_id>/metrics", views.StepMetricsApi.as_view(), name="step-metrics"),
    path("steps/<str:step_id>/trace", views.StepTraceApi.as_view(), name="step-trace"),
    path("steps/<str:step_id>/feedback", views.StepFeedbackApi.as_view(), name="step-feedback"),
    path("requests/<str:request_id>", views.RequestDetailApi.as_view(), name="request-detail"),
    path("runs/<str:run_id>/usage", views.RunUsageApi.as_view(), name="run-usage"),
    path("usage", views.UsageReportApi.as_view(), name="usage-report"),
    path("errors", views.ErrorsReportApi.as_view(), name="errors-report"),
]
