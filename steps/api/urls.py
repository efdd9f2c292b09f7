from django.urls import path

from steps.api import views

urlpatterns = [
    path("steps/<str:step_id>", views.StepDetailApi.as_view(), name="step-detail"),
]
