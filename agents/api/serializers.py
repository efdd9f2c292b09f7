"""Input and output shapes of the agents and runs API."""

import re
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents.models import Agent, Run, RunStatus
from config.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from steps.api.serializers import TokenCountsSerializer, typed_messages
from steps.content import INPUT_CONTENT_SCHEMA, input_content_errors


class ModelHandleField(StrictCharField):
    """`provider/model` or `scripted/<scenario>`; the service says which handles Steplens can run."""


class ToolNameField(StrictCharField):
    """The name of a registered tool."""


class ModelHandleFieldSchema(OpenApiSerializerFieldExtension):
    """The handles Steplens can run, as a pattern built when the schema is (scenarios and tools register late)."""

    target_class = ModelHandleField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        from agents.providers import scenario_names
        from agents.providers.registry import HANDLE_PREFIXES

        providers = "|".join(re.escape(p) for p in HANDLE_PREFIXES if p != "scripted")
        scenarios = "|".join(re.escape(name) for name in scenario_names())
        return {
            "type": "string",
            "maxLength": 200,
            "pattern": rf"^(?:(?:{providers})/[\s\S]+|scripted/(?:{scenarios}))$",
            "description": "provider/model (openai, openai-responses, anthropic, google) or scripted/<scenario>.",
        }


class ToolNameFieldSchema(OpenApiSerializerFieldExtension):
    target_class = ToolNameField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        from agents.tools import registered_tools

        return {"type": "string", "enum": sorted(registered_tools())}


class AgentSerializer(serializers.ModelSerializer):
    project_id = serializers.CharField(read_only=True, allow_null=True)
    name = StrictCharField(max_length=200)
    system = StrictCharField(required=False, allow_blank=True)
    model_handle = ModelHandleField(max_length=200, help_text="provider/model, e.g. openai/gpt-4o-mini")
    tools = serializers.ListField(child=ToolNameField(), required=False)
    tags = serializers.ListField(child=StrictCharField(), required=False)
    metadata = serializers.DictField(required=False)
    max_steps = StrictIntegerField(required=False, min_value=1, max_value=100)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    max_output_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=2**31 - 1)
    context_window = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=2**31 - 1)

    class Meta:
        model = Agent
        fields = [
            "id", "name", "model_handle", "system", "tools", "temperature", "max_output_tokens", "context_window",
            "max_steps", "tags", "metadata", "project_id", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["id", "created_at", "updated_at"]
        # Name uniqueness is checked by the service (names are unique among live agents only).
        validators: list[Any] = []


class RunErrorSerializer(serializers.Serializer):
    """Why a run failed: the error type of the step that ended it (or `internal_error`) and its message."""

    type = serializers.CharField()
    message = serializers.CharField()


class RunSerializer(serializers.ModelSerializer):
    agent_id = serializers.CharField(read_only=True, allow_null=True)
    error = RunErrorSerializer(read_only=True, allow_null=True)

    class Meta:
        model = Run
        fields = [
            "id", "agent_id", "request_id", "status", "stop_reason", "background", "ttft_ns", "total_duration_ns",
            "step_count", "user_id", "conversation_id", "trace_id", "error", "error_data", "created_at", "started_at",
            "completed_at", "cancel_requested_at",
        ]  # fmt: skip


@extend_schema_field(INPUT_CONTENT_SCHEMA)
class InputContentField(serializers.JSONField):
    """A string, or a list of text and image parts."""


class InputMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "system"])
    content = InputContentField()
    otid = StrictCharField(required=False, max_length=200)

    def validate_content(self, value: Any) -> list[dict[str, Any]]:
        if isinstance(value, str):
            return [{"type": "text", "text": value}]
        if isinstance(value, list) and value:
            errors = input_content_errors(value)
            if errors:
                raise serializers.ValidationError(errors)
            return value
        raise serializers.ValidationError("Must be a string or a non-empty list of text and image parts.")


class SendMessagesSerializer(serializers.Serializer):
    messages = serializers.ListField(child=InputMessageSerializer(), min_length=1)


class RunListParamsSerializer(serializers.Serializer):
    agent_id = StrictCharField(required=False, allow_blank=True, help_text="Only this agent's runs.")
    status = serializers.ChoiceField(choices=RunStatus.values, required=False, help_text="Only runs in this status.")
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100, help_text="At most this many runs.")


class ApprovalSerializer(serializers.Serializer):
    tool_call_id = StrictCharField()
    approve = StrictBooleanField()
    reason = StrictCharField(required=False, allow_blank=True, default="")


class RunUsageSummarySerializer(TokenCountsSerializer):
    """A run's token counts (null: no step reported it), cost and step count."""

    cost_usd = serializers.FloatField()
    step_count = serializers.IntegerField()


class RunResponseSerializer(serializers.Serializer):
    """The answer of a run that stopped (finished, or paused for an approval): its new messages and usage."""

    run_id = serializers.CharField()
    request_id = serializers.CharField()
    status = serializers.ChoiceField(choices=RunStatus.values)
    stop_reason = serializers.CharField(allow_null=True)
    error = RunErrorSerializer(allow_null=True)
    messages = typed_messages()
    usage = RunUsageSummarySerializer()
