from django.urls import path

from accounts.api import views

urlpatterns = [
    path("audit", views.AuditListApi.as_view(), name="audit-list"),
    path("retention", views.RetentionApi.as_view(), name="retention"),
]
