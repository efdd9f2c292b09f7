"""Input and output shapes of the agents and runs API."""

from typing import Any

from rest_framework import serializers

from agents.models import Agent, Run


class AgentSerializer(serializers.ModelSerializer):
    project_id = serializers.CharField(read_only=True, allow_null=True)
    tools = serializers.ListField(child=serializers.CharField(), required=False)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    metadata = serializers.DictField(required=False)
    max_steps = serializers.IntegerField(required=False, min_value=1, max_value=100)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    max_output_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    context_window = serializers.IntegerField(required=False, allow_null=True, min_value=1)

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


class InputMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "system"])
    content = serializers.JSONField()
    otid = serializers.CharField(required=False)

    def validate_content(self, value: Any) -> list[dict[str, Any]]:
        if isinstance(value, str):
            return [{"type": "text", "text": value}]
        if isinstance(value, list):
            return value  # each part is validated by the message service, which names the field
        raise serializers.ValidationError("must be a string or a list of content parts")


class SendMessagesSerializer(serializers.Serializer):
    messages = InputMessageSerializer(many=True, allow_empty=False)


class ApprovalSerializer(serializers.Serializer):
    tool_call_id = serializers.CharField()
    approve = serializers.BooleanField()
    reason = serializers.CharField(required=False, allow_blank=True, default="")
