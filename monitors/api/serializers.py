"""Input and output shapes of the monitors and alerts API. The input shapes say exactly what the server accepts
(the OpenAPI schema is generated from them, and schemathesis holds the server to it)."""

from __future__ import annotations

import math
import re
from typing import Any

import django_filters
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from config.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from monitors.models import (
    MAX_WINDOW_SECONDS,
    MIN_WINDOW_SECONDS,
    DeliveryStatus,
    GroupBy,
    Metric,
    MonitorState,
    Operator,
    TargetKind,
)
from steps.filters import (
    MAX_FILTER_NUMBER,
    METADATA_PREFIX,
    MultiValueFilter,
    StepFilterSet,
    StrictBooleanFilter,
    UtcDateTimeFilter,
    multi_value_pattern,
)

MAX_THRESHOLD = 1e15
MAX_TARGETS = 20
# http(s), a host without spaces or credentials, an optional port, then anything without spaces.
WEBHOOK_URL_PATTERN = r"^https?://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?(?:[/?#][\x21-\x7e]*)?$"
_METADATA_PATTERN = r"^metadata\.[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-]{1,64}){0,4}$"


def _body_filter_schema(flt: Any) -> dict[str, Any] | None:
    """One step filter as a JSON body value (strings as in the query string; booleans and numbers as JSON), or
    None for start/end, which a monitor's window sets."""
    if isinstance(flt, UtcDateTimeFilter):
        return None
    if isinstance(flt, MultiValueFilter):
        field = flt.field_class(**flt.extra)
        return {"type": "string", "pattern": multi_value_pattern(choices=field.allowed, max_length=field.max_length)}
    if isinstance(flt, StrictBooleanFilter):
        return {"type": "boolean"}
    if isinstance(flt, django_filters.ChoiceFilter):
        return {"type": "string", "enum": [choice for choice, _ in flt.extra["choices"]]}
    return {"type": "number", "minimum": 0, "maximum": MAX_FILTER_NUMBER}


FILTER_SCHEMAS = {
    name: schema for name, flt in StepFilterSet.base_filters.items() if (schema := _body_filter_schema(flt)) is not None
}


@extend_schema_field(
    {
        "type": "object",
        "description": "GET /v1/steps filters (without start and end: the window sets them); several values of a "
        "filter comma-separated; metadata.<key>=<value> for metadata.",
        "properties": FILTER_SCHEMAS,
        "patternProperties": {_METADATA_PATTERN: {"type": "string", "maxLength": 500}},
        "additionalProperties": False,
    }
)
class FiltersField(serializers.Field):
    """Step filters with the JSON type each one takes; their values are checked by the StepFilterSet (service)."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be an object of step filters.")
        errors: dict[str, list[str]] = {}
        for name, value in data.items():
            schema = FILTER_SCHEMAS.get(name)
            if schema is None:
                if name in ("start", "end"):
                    errors[name] = ["The window sets start and end; use window_seconds."]
                elif not (name.startswith(METADATA_PREFIX) and re.match(_METADATA_PATTERN, name)):
                    errors[name] = ["Unknown filter."]
                elif not isinstance(value, str) or len(value) > 500:
                    errors[name] = ["Must be a string of at most 500 characters."]
            elif schema["type"] == "boolean" and not isinstance(value, bool):
                errors[name] = ["Must be true or false."]
            elif schema["type"] == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
                errors[name] = ["Must be a number."]
            elif schema["type"] == "string" and not isinstance(value, str):
                errors[name] = ["Must be a string (several values comma-separated)."]
        if errors:
            raise serializers.ValidationError(errors)
        return data

    def to_representation(self, value: Any) -> dict[str, Any]:
        return value


class FiniteFloatField(StrictFloatField):
    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            self.fail("invalid")
        return value


_TARGET_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "enum": [TargetKind.WEBHOOK.value]},
                "url": {
                    "type": "string",
                    "maxLength": 2000,
                    "pattern": WEBHOOK_URL_PATTERN,
                },
            },
            "required": ["kind", "url"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "enum": [TargetKind.EMAIL.value]},
                "email": {"type": "string", "format": "email", "maxLength": 254},
            },
            "required": ["kind", "email"],
            "additionalProperties": False,
        },
    ]
}


class TargetSerializer(serializers.Serializer):
    """A notification target: `{"kind": "webhook", "url": ...}` or `{"kind": "email", "email": ...}`."""

    kind = serializers.ChoiceField(choices=TargetKind.values)
    url = StrictCharField(
        required=False, max_length=2000, help_text="webhook: an http(s) URL of a public address.",
        validators=[RegexValidator(WEBHOOK_URL_PATTERN, "Must be an http or https URL.")],
    )  # fmt: skip
    email = serializers.EmailField(required=False, max_length=254, help_text="email: the address.")

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        unknown = set(data) - set(self.fields) if isinstance(data, dict) else set()
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        if isinstance(data, dict) and "kind" not in data:  # required even inside a PATCH (partial) body
            raise serializers.ValidationError({"kind": ["This field is required."]})
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        needed, other = ("url", "email") if attrs["kind"] == TargetKind.WEBHOOK else ("email", "url")
        if needed not in attrs:
            raise serializers.ValidationError({needed: [f"Required for a {attrs['kind']} target."]})
        if other in attrs:
            raise serializers.ValidationError({other: [f"Not used by a {attrs['kind']} target."]})
        return attrs


@extend_schema_field({"type": "array", "maxItems": MAX_TARGETS, "items": _TARGET_SCHEMA})
class TargetsField(serializers.Field):
    """Notification targets, each checked whole by TargetSerializer (even inside a PATCH body)."""

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, list):
            raise serializers.ValidationError("Must be a list of targets.")
        if len(data) > MAX_TARGETS:
            raise serializers.ValidationError(f"At most {MAX_TARGETS} targets.")
        errors: dict[str, Any] = {}
        targets = []
        for index, item in enumerate(data):
            serializer = TargetSerializer(data=item)
            if serializer.is_valid():
                targets.append(serializer.validated_data)
            else:
                errors[str(index)] = serializer.errors
        if errors:
            raise serializers.ValidationError(errors)
        return targets

    def to_representation(self, value: Any) -> Any:
        return value


_NAME = {"max_length": 200}
_THRESHOLD = {"min_value": -MAX_THRESHOLD, "max_value": MAX_THRESHOLD}


@extend_schema_serializer(extensions={"x-additional-properties": False})
class MonitorInSerializer(serializers.Serializer):
    """A monitor as a client sends it (POST: name, metric, operator, threshold and window_seconds are required)."""

    name = StrictCharField(**_NAME)
    project_id = StrictCharField(required=False, allow_null=True, max_length=64, help_text="Only this project.")
    filters = FiltersField(required=False)
    metric = serializers.ChoiceField(choices=Metric.values)
    operator = serializers.ChoiceField(choices=Operator.values)
    threshold = FiniteFloatField(**_THRESHOLD)
    recovery_threshold = FiniteFloatField(
        required=False, allow_null=True, **_THRESHOLD,
        help_text="Where an alert resolves (default: the threshold less STEPLENS_MONITOR_RECOVERY_MARGIN).",
    )  # fmt: skip
    window_seconds = StrictIntegerField(min_value=MIN_WINDOW_SECONDS, max_value=MAX_WINDOW_SECONDS)
    min_steps = StrictIntegerField(required=False, min_value=0, max_value=10**9, help_text="Default 1.")
    group_by = serializers.ChoiceField(
        choices=GroupBy.values, required=False, allow_null=True, help_text="Evaluate each group on its own."
    )
    targets = TargetsField(required=False)
    enabled = StrictBooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return attrs


class TargetOutSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=TargetKind.values)
    url = serializers.CharField(required=False)
    email = serializers.CharField(required=False)


class MonitorSerializer(serializers.Serializer):
    """A monitor with its last evaluation: state, value (the metric over the window), steps counted."""

    id = serializers.CharField()
    name = serializers.CharField()
    project_id = serializers.CharField(allow_null=True)
    filters = serializers.DictField()
    metric = serializers.ChoiceField(choices=Metric.values)
    operator = serializers.ChoiceField(choices=Operator.values)
    threshold = serializers.FloatField()
    recovery_threshold = serializers.FloatField(allow_null=True)
    effective_recovery_threshold = serializers.FloatField()
    window_seconds = serializers.IntegerField()
    min_steps = serializers.IntegerField()
    group_by = serializers.ChoiceField(choices=GroupBy.values, allow_null=True)
    targets = TargetOutSerializer(many=True)
    enabled = serializers.BooleanField()
    state = serializers.ChoiceField(choices=MonitorState.values)
    value = serializers.FloatField(allow_null=True)
    steps = serializers.IntegerField(allow_null=True)
    evaluated_at = serializers.DateTimeField(allow_null=True)
    state_changed_at = serializers.DateTimeField(allow_null=True)
    alerting_groups = serializers.ListField(child=serializers.CharField(), required=False)
    last_error = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class MonitorCreatedSerializer(MonitorSerializer):
    secret = serializers.CharField(help_text="The webhook signing secret. Shown only here: keep it.")


class SecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="The new webhook signing secret. Shown only here: keep it.")


class MonitorListSerializer(serializers.Serializer):
    data = MonitorSerializer(many=True)


class WindowSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    seconds = serializers.IntegerField()


class AlertLinksSerializer(serializers.Serializer):
    console = serializers.CharField()
    api_steps = serializers.CharField()
    api_usage = serializers.CharField()


class AlertSerializer(serializers.Serializer):
    """A change of state of a monitor (or of one group of a split monitor)."""

    id = serializers.CharField()
    monitor_id = serializers.CharField()
    monitor_name = serializers.CharField()
    state = serializers.ChoiceField(choices=MonitorState.values)
    previous_state = serializers.ChoiceField(choices=MonitorState.values)
    resolved = serializers.BooleanField()
    metric = serializers.ChoiceField(choices=Metric.values)
    operator = serializers.ChoiceField(choices=Operator.values)
    value = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField()
    recovery_threshold = serializers.FloatField()
    steps = serializers.IntegerField()
    group_by = serializers.ChoiceField(choices=GroupBy.values, allow_null=True)
    group = serializers.CharField(allow_null=True)
    window = WindowSerializer()
    filters = serializers.DictField()
    links = AlertLinksSerializer()
    created_at = serializers.DateTimeField()


class AlertListSerializer(serializers.Serializer):
    data = AlertSerializer(many=True)


class AlertParamsSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=MonitorState.values, required=False, help_text="Only events into it.")
    start = serializers.DateTimeField(required=False, help_text="Events at or after (ISO 8601).")
    end = serializers.DateTimeField(required=False, help_text="Events before (ISO 8601).")
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100, help_text="At most this many.")


class AlertListParamsSerializer(AlertParamsSerializer):
    monitor_id = serializers.CharField(required=False, max_length=64, help_text="Only this monitor's events.")


class DeliveryAttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    ok = serializers.BooleanField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    duration_ms = serializers.FloatField()
    created_at = serializers.DateTimeField()


class DeliverySerializer(serializers.Serializer):
    """One notification to one target, with every attempt and its status code."""

    id = serializers.IntegerField()
    event_id = serializers.CharField(allow_null=True)
    kind = serializers.ChoiceField(choices=TargetKind.values)
    destination = serializers.CharField()
    status = serializers.ChoiceField(choices=DeliveryStatus.values)
    attempts = DeliveryAttemptSerializer(many=True)
    created_at = serializers.DateTimeField()


class DeliveryListSerializer(serializers.Serializer):
    data = DeliverySerializer(many=True)
