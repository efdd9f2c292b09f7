"""Serializers of the steps API: steps, pages, typed messages, reports; also the OpenAPI shapes."""

from collections.abc import Iterable
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_serializer
from rest_framework import serializers

from agents.models import Run
from config.fields import StrictCharField
from config.representation import Representation
from steps.models import Feedback, ProviderTrace, Step, StepMetrics


class StepMetricsSerializer(serializers.ModelSerializer):
    step_id = serializers.CharField(read_only=True)

    class Meta:
        model = StepMetrics
        exclude = ["step"]


class StepSerializer(serializers.ModelSerializer):
    organization_id = serializers.CharField(read_only=True)
    project_id = serializers.CharField(read_only=True, allow_null=True)
    agent_id = serializers.CharField(read_only=True, allow_null=True)
    run_id = serializers.CharField(read_only=True, allow_null=True)
    progression = serializers.CharField(source="get_progression_display", read_only=True)
    cost_usd = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=False, allow_null=True)

    class Meta:
        model = Step
        exclude = ["organization", "project", "agent", "run"]


STEP = Representation(StepSerializer)
STEP_METRICS = Representation(StepMetricsSerializer)


def steps_data(steps: Iterable[Step], *, with_metrics: bool = False) -> list[dict[str, Any]]:
    """What StepSerializer (or StepWithMetricsSerializer) renders, without DRF's per-row field machinery."""
    steps = list(steps)
    rows = STEP.many(steps)
    if with_metrics:
        for row, step in zip(rows, steps, strict=True):
            try:
                row["metrics"] = STEP_METRICS.one(step.metrics)
            except StepMetrics.DoesNotExist:
                row["metrics"] = None
    return rows


class StepWithMetricsSerializer(StepSerializer):
    metrics = serializers.SerializerMethodField()

    def get_metrics(self, step: Step) -> dict | None:
        try:
            return StepMetricsSerializer(step.metrics).data
        except StepMetrics.DoesNotExist:
            return None

    class Meta(StepSerializer.Meta):
        pass


class PageSerializer(serializers.Serializer):
    next_cursor = serializers.CharField(allow_null=True, help_text="Pass as `cursor` for the next page.")
    has_more = serializers.BooleanField()


class StepPageSerializer(PageSerializer):
    data = StepSerializer(many=True)


class CursorField(serializers.CharField):
    """A page cursor: only ever one the API returned as next_cursor (opaque; anything else is a 400)."""


class CursorFieldSchema(OpenApiSerializerFieldExtension):
    """Cursors have their own format: no pattern describes them, and a client never makes one up."""

    target_class = CursorField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return {"type": "string", "format": "cursor", "maxLength": 2000}


class ListParamsSerializer(serializers.Serializer):
    """Paging parameters shared by every list."""

    limit = serializers.IntegerField(min_value=1, max_value=1000, default=50, help_text="Items per page.")
    order = serializers.ChoiceField(choices=["asc", "desc"], default="desc", help_text="By creation time.")
    cursor = CursorField(
        required=False, allow_blank=True, max_length=2000, help_text="next_cursor of the previous page."
    )


class MessageListParamsSerializer(ListParamsSerializer):
    order = serializers.ChoiceField(choices=["asc", "desc"], default="asc", help_text="By sequence.")


# --- typed messages (schema only: the renderer in steps.rendering builds the dicts) ---------------


class _MessageBase(serializers.Serializer):
    id = serializers.CharField()
    date = serializers.DateTimeField(allow_null=True)
    message_type = serializers.CharField()
    step_id = serializers.CharField(allow_null=True)
    run_id = serializers.CharField(allow_null=True)
    sequence = serializers.IntegerField()
    otid = serializers.CharField(allow_null=True)
    name = serializers.CharField(allow_null=True)
    is_err = serializers.BooleanField()


class ToolCallSerializer(serializers.Serializer):
    name = serializers.CharField()
    arguments = serializers.CharField(help_text="JSON text as the model produced it.")
    tool_call_id = serializers.CharField()


class ToolReturnSerializer(serializers.Serializer):
    tool_call_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["success", "error"], allow_null=True)
    func_response = serializers.JSONField(allow_null=True, help_text="A string, or a list of text/image parts.")
    stdout = serializers.ListField(child=serializers.CharField(), allow_null=True)
    stderr = serializers.ListField(child=serializers.CharField(), allow_null=True)


class SystemMessageSerializer(_MessageBase):
    content = serializers.CharField()


class UserMessageSerializer(_MessageBase):
    content = serializers.JSONField(help_text="A string, or a list of text/image parts.")


class AssistantMessageSerializer(_MessageBase):
    content = serializers.CharField()


class ReasoningMessageSerializer(_MessageBase):
    reasoning = serializers.CharField()
    signature = serializers.CharField(allow_null=True)
    source = serializers.ChoiceField(choices=["model", "summary"])


class HiddenReasoningMessageSerializer(_MessageBase):
    state = serializers.ChoiceField(choices=["redacted", "omitted"])
    hidden_reasoning = serializers.CharField(allow_null=True)


class ToolCallMessageSerializer(_MessageBase):
    tool_call = ToolCallSerializer()


class ToolReturnMessageSerializer(_MessageBase):
    tool_return = ToolReturnSerializer()


class ApprovalRequestMessageSerializer(_MessageBase):
    tool_call = ToolCallSerializer()


class ApprovalResponseMessageSerializer(_MessageBase):
    approve = serializers.BooleanField(allow_null=True)
    tool_call_id = serializers.CharField(allow_null=True)
    reason = serializers.CharField(allow_null=True)


def typed_messages() -> PolymorphicProxySerializer:
    """A list of the typed message union, discriminated by message_type (a fresh field per use)."""
    return PolymorphicProxySerializer(
        component_name="TypedMessage",
        serializers={
            "system_message": SystemMessageSerializer,
            "user_message": UserMessageSerializer,
            "assistant_message": AssistantMessageSerializer,
            "reasoning_message": ReasoningMessageSerializer,
            "hidden_reasoning_message": HiddenReasoningMessageSerializer,
            "tool_call_message": ToolCallMessageSerializer,
            "tool_return_message": ToolReturnMessageSerializer,
            "approval_request_message": ApprovalRequestMessageSerializer,
            "approval_response_message": ApprovalResponseMessageSerializer,
        },
        resource_type_field_name="message_type",
        many=True,
    )


class MessagePageSerializer(PageSerializer):
    data = typed_messages()


# --- traces, runs, requests ---------------------------------------------------------------------


class ProviderTraceSerializer(serializers.ModelSerializer):
    step_id = serializers.CharField(read_only=True)

    class Meta:
        model = ProviderTrace
        exclude = ["organization", "step"]


class StepTraceSerializer(ProviderTraceSerializer):
    attempts = serializers.ListField(child=serializers.IntegerField(), help_text="Every attempt with a trace.")

    class Meta(ProviderTraceSerializer.Meta):
        pass


class RequestRunSerializer(serializers.ModelSerializer):
    agent_id = serializers.CharField(read_only=True, allow_null=True)
    project_id = serializers.CharField(read_only=True, allow_null=True)
    agent_name = serializers.SerializerMethodField()

    def get_agent_name(self, run: Run) -> str | None:
        return run.agent.name if run.agent_id and run.agent else None

    class Meta:
        model = Run
        exclude = ["organization", "project", "agent"]


class RequestErrorSerializer(serializers.Serializer):
    source = serializers.ChoiceField(choices=["run", "step", "provider_trace"])
    run_id = serializers.CharField(allow_null=True)
    step_id = serializers.CharField(allow_null=True)
    error_type = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_null=True)
    data = serializers.JSONField(allow_null=True)
    created_at = serializers.DateTimeField(allow_null=True)


PROVIDER_TRACE = Representation(ProviderTraceSerializer)
REQUEST_RUN = Representation(RequestRunSerializer)
REQUEST_ERROR = Representation(RequestErrorSerializer)


class RequestSerializer(serializers.Serializer):
    request_id = serializers.CharField()
    runs = RequestRunSerializer(many=True)
    steps = StepWithMetricsSerializer(many=True)
    messages = typed_messages()
    provider_traces = ProviderTraceSerializer(many=True)
    errors = RequestErrorSerializer(many=True)


class TokenCountsSerializer(serializers.Serializer):
    """The normalized token counts (null: not reported)."""

    prompt_tokens = serializers.IntegerField(allow_null=True)
    completion_tokens = serializers.IntegerField(allow_null=True)
    total_tokens = serializers.IntegerField(allow_null=True)
    cached_input_tokens = serializers.IntegerField(allow_null=True)
    cache_write_tokens = serializers.IntegerField(allow_null=True)
    reasoning_tokens = serializers.IntegerField(allow_null=True)


class StepUsageSerializer(TokenCountsSerializer):
    id = serializers.CharField()
    step_number = serializers.IntegerField(allow_null=True)
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    provider_name = serializers.CharField(allow_null=True)
    model = serializers.CharField(allow_null=True)
    model_handle = serializers.CharField(allow_null=True)
    cost_usd = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=False, allow_null=True)
    ttft_ns = serializers.IntegerField(allow_null=True)
    latency_ns = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()


class RunUsageTotalsSerializer(TokenCountsSerializer):
    steps = serializers.IntegerField()
    failed_steps = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=24, decimal_places=10, coerce_to_string=False, allow_null=True)


class RunUsageSerializer(serializers.Serializer):
    run_id = serializers.CharField()
    agent_id = serializers.CharField(allow_null=True)
    request_id = serializers.CharField()
    totals = RunUsageTotalsSerializer()
    steps = StepUsageSerializer(many=True)


@extend_schema_serializer(extensions={"x-additional-properties": False})  # other fields are refused
class FeedbackInSerializer(serializers.Serializer):
    """Feedback and tag changes; tags are added and removed, never replaced."""

    feedback = serializers.ChoiceField(
        choices=Feedback.values, allow_null=True, required=False, help_text="positive, negative, or null to clear."
    )
    add_tags = serializers.ListField(
        child=StrictCharField(max_length=200), required=False, default=list, max_length=100
    )
    remove_tags = serializers.ListField(
        child=StrictCharField(max_length=200), required=False, default=list, max_length=100
    )

    def validate(self, attrs: dict) -> dict:
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if "tags" in unknown:
            raise serializers.ValidationError({"tags": ["Tags are never replaced: use add_tags and remove_tags."]})
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return attrs


# --- reports ------------------------------------------------------------------------------------


class UsageRowSerializer(serializers.Serializer):
    """One group of the usage report; only the group_by keys asked for are present."""

    model = serializers.CharField(required=False, allow_null=True)
    model_handle = serializers.CharField(required=False, allow_null=True)
    provider = serializers.CharField(required=False, allow_null=True)
    agent_id = serializers.CharField(required=False, allow_null=True)
    agent_name = serializers.CharField(required=False, allow_null=True)
    project_id = serializers.CharField(required=False, allow_null=True)
    run_id = serializers.CharField(required=False, allow_null=True)
    user_id = serializers.CharField(required=False, allow_null=True)
    conversation_id = serializers.CharField(required=False, allow_null=True)
    hour = serializers.DateTimeField(required=False)
    day = serializers.DateTimeField(required=False)
    week = serializers.DateTimeField(required=False)
    steps = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    cache_hit_ratio = serializers.FloatField(allow_null=True, help_text="cached_input_tokens / prompt_tokens.")
    cost_usd = serializers.CharField(help_text="Decimal string, exact.")
    error_count = serializers.IntegerField(help_text="Steps with status failed.")
    error_rate = serializers.FloatField(allow_null=True)
    latency_ms_p50 = serializers.FloatField(allow_null=True)
    latency_ms_p95 = serializers.FloatField(allow_null=True)
    latency_ms_p99 = serializers.FloatField(allow_null=True)
    ttft_ms_p50 = serializers.FloatField(allow_null=True)
    ttft_ms_p95 = serializers.FloatField(allow_null=True)
    ttft_ms_p99 = serializers.FloatField(allow_null=True)


class _ReportSerializer(serializers.Serializer):
    group_by = serializers.ListField(child=serializers.CharField())
    source = serializers.ChoiceField(
        choices=["rollup", "rollup+steps", "steps"],
        help_text="What answered: the rollups, the rollups plus the steps of the window's ragged ends, or a scan.",
    )
    exact_percentiles = serializers.BooleanField()
    truncated = serializers.BooleanField()


class UsageReportSerializer(_ReportSerializer):
    data = UsageRowSerializer(many=True)


class ErrorRowSerializer(serializers.Serializer):
    error_type = serializers.CharField()
    provider = serializers.CharField(required=False, allow_null=True)
    model = serializers.CharField(required=False, allow_null=True)
    agent_id = serializers.CharField(required=False, allow_null=True)
    agent_name = serializers.CharField(required=False, allow_null=True)
    day = serializers.DateTimeField(required=False)
    count = serializers.IntegerField()
    steps = serializers.IntegerField(help_text="Ended steps in the same group (the share's denominator).")
    share = serializers.FloatField(allow_null=True)
    first_seen = serializers.DateTimeField()
    last_seen = serializers.DateTimeField()
    example_step_id = serializers.CharField()


class ErrorsReportSerializer(_ReportSerializer):
    total_steps = serializers.IntegerField()
    total_errors = serializers.IntegerField()
    data = ErrorRowSerializer(many=True)
