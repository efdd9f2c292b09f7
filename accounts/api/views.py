"""`GET /v1/audit` (a `full` key only): the organization's audit log, newest first; `GET/PUT /v1/retention`."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import config.openapi  # noqa: F401  (registers the API key scheme with drf-spectacular)
from accounts.audit import actor_from_request
from accounts.authentication import request_organization
from accounts.models import ApiKeyScope, AuditEvent, Project
from accounts.selectors import audit_list
from accounts.services import retention_set
from config.errors import ApplicationError


class AuditEventOut(serializers.ModelSerializer):
    """One audit event: who (a username or a key prefix), what, when, from where, before and after."""

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "action", "target_type", "target_id", "ip", "before", "after"]


class AuditParams(serializers.Serializer):
    before_id = serializers.IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, help_text="Events older than this id."
    )
    action = serializers.CharField(required=False, max_length=64, help_text="Only this action (e.g. api_key.create).")
    # The bound is in the schema too (read once, at start), so a client knows it before asking.
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=settings.STEPLENS_AUDIT_PAGE_MAX, default=100,
        help_text="Events per page (STEPLENS_AUDIT_PAGE_MAX at the most).",
    )  # fmt: skip


class AuditPage(serializers.Serializer):
    events = AuditEventOut(many=True)
    next_before_id = serializers.IntegerField(allow_null=True, help_text="Pass as before_id for the next page.")


class AuditListApi(APIView):
    """The audit log of the key's organization. Needs a key of scope `full` (403 otherwise)."""

    api_key_scope = ApiKeyScope.FULL

    @extend_schema(
        operation_id="audit_list",
        parameters=[AuditParams],
        responses={200: AuditPage},
        summary="The organization's audit log, newest first",
    )
    def get(self, request: Request) -> Response:
        params = AuditParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        limit = data["limit"]
        events = list(
            audit_list(
                organization=request_organization(request), before_id=data.get("before_id"), action=data.get("action")
            )[: limit + 1]
        )
        more = len(events) > limit
        events = events[:limit]
        return Response(
            {"events": AuditEventOut(events, many=True).data, "next_before_id": events[-1].pk if more else None}
        )


class ProjectRetentionOut(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    retention_days = serializers.IntegerField(allow_null=True)


class RetentionOut(serializers.Serializer):
    default_days = serializers.IntegerField(allow_null=True, help_text="STEPLENS_RETENTION_DAYS; null: forever.")
    retention_days = serializers.IntegerField(allow_null=True, help_text="The organization's; null: the default.")
    projects = ProjectRetentionOut(many=True, help_text="Projects with a retention of their own.")


class RetentionIn(serializers.Serializer):
    retention_days = serializers.IntegerField(
        allow_null=True, min_value=1, max_value=36500, help_text="Days raw steps are kept; null: inherit."
    )
    project = serializers.CharField(required=False, max_length=64, help_text="Set this project's instead.")


def _retention_body(request: Request) -> dict:
    organization = request_organization(request)
    projects = Project.objects.filter(organization=organization, retention_days__isnull=False).order_by("name")
    if organization.scoped_project_id:
        projects = projects.filter(pk=organization.scoped_project_id)
    return {
        "default_days": settings.STEPLENS_RETENTION_DAYS,
        "retention_days": organization.retention_days,
        "projects": ProjectRetentionOut(projects[: settings.STEPLENS_AUDIT_PAGE_MAX], many=True).data,
    }


class RetentionApi(APIView):
    """How long raw steps are kept (README "Retention and deletion"): any reading key reads it, a `full` key
    (the default rule for unsafe methods) sets it."""

    @extend_schema(operation_id="retention_get", responses={200: RetentionOut}, summary="Retention in force")
    def get(self, request: Request) -> Response:
        return Response(_retention_body(request))

    @extend_schema(
        operation_id="retention_set",
        request=RetentionIn,
        responses={200: RetentionOut},
        summary="Set the organization's or a project's retention",
        extensions={"x-error-statuses": [404]},
    )
    def put(self, request: Request) -> Response:
        body = RetentionIn(data=request.data)
        body.is_valid(raise_exception=True)
        organization = request_organization(request)
        project = None
        project_id = body.validated_data.get("project")
        if organization.scoped_project_id and project_id != organization.scoped_project_id:
            raise ApplicationError(
                "A key limited to a project can only set that project's retention.",
                extra={"project": ["Must be the key's project."]},
                status_code=403,
            )
        if project_id is not None:
            project = Project.objects.filter(organization=organization, pk=project_id).first()
            if project is None:
                raise ApplicationError("No such project.", extra={"project": ["Not found."]}, status_code=404)
        retention_set(
            organization=organization,
            project=project,
            days=body.validated_data["retention_days"],
            actor=actor_from_request(request),
        )
        return Response(_retention_body(request))
