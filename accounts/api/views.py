"""`GET /v1/audit`: the organization's audit log, newest first, for a `full` key only."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import config.openapi  # noqa: F401  (registers the API key scheme with drf-spectacular)
from accounts.authentication import request_organization
from accounts.models import ApiKeyScope, AuditEvent
from accounts.selectors import audit_list


class AuditEventOut(serializers.ModelSerializer):
    """One audit event: who (a username or a key prefix), what, when, from where, before and after."""

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "action", "target_type", "target_id", "ip", "before", "after"]


class AuditParams(serializers.Serializer):
    before_id = serializers.IntegerField(required=False, min_value=1, help_text="Events older than this id.")
    action = serializers.CharField(required=False, max_length=64, help_text="Only this action (e.g. api_key.create).")
    limit = serializers.IntegerField(required=False, min_value=1, default=100)

    def validate_limit(self, value: int) -> int:
        if value > settings.STEPLENS_AUDIT_PAGE_MAX:
            raise serializers.ValidationError(f"At most {settings.STEPLENS_AUDIT_PAGE_MAX}.")
        return value


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
