"""Input and output shapes of the agents and runs API."""

import re
from collections.abc import Mapping
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents.models import Agent, Run, RunStatus
from config.errors import ApplicationError
from config.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from steps.api.serializers import TokenCountsSerializer, typed_messages
from steps.values import INPUT_CONTENT_SCHEMA, input_content_errors


class ModelHandleField(StrictCharField):
    """`provider/model` or `scripted/<scenario>`; the service says which handles Steplens can run."""


class ToolNameField(StrictCharField):
    """The name of a registered tool."""


class ModelHandleFieldSchema(OpenApiSerializerFieldExtension):
    """The handles Steplens can run, as a pattern built when the schema is (scenarios and tools register late)."""

    target_class = ModelHandleField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        from runner.providers import scenario_names
        from runner.providers.registry import HANDLE_PREFIXES

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
        from runner.tools import registered_tools

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


# The chat-completions request (the OpenAI format, the parts Steplens uses; other keys are ignored). Each error
# names the same field path the endpoint has always named (`messages.0.content.1.image_url.url`), which is why a
# few of these classes check an item's shape before DRF would (DRF would say `messages.0.non_field_errors`).
CHAT_ROLES = ("assistant", "system", "user")


def _object_or_fail(data: Any, message: str) -> Mapping[str, Any]:
    """`data` if it is a JSON object; else an error on the item itself (not on its `non_field_errors`)."""
    if not isinstance(data, Mapping):
        raise serializers.ValidationError(message)
    return data


class ChatImageUrlSerializer(serializers.Serializer):
    url = StrictCharField(allow_blank=True)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise serializers.ValidationError({"url": ["Must be a string inside an image_url object."]})
        return super().to_internal_value(data)


class ChatTextPartSerializer(serializers.Serializer):
    text = StrictCharField(allow_blank=True)


class ChatImagePartSerializer(serializers.Serializer):
    image_url = ChatImageUrlSerializer(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("image_url") is None:
            raise serializers.ValidationError({"image_url": {"url": ["This field is required."]}})
        return attrs


class ChatContentPartField(serializers.Field):
    """A text part or an image_url part, read as Steplens's own text and image parts."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        part = _object_or_fail(data, "Must be a text or image_url part.")
        if part.get("type") == "text":
            return {"type": "text", "text": ChatTextPartSerializer().run_validation(part)["text"]}
        if part.get("type") == "image_url":
            url = ChatImagePartSerializer().run_validation(part)["image_url"]["url"]
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise serializers.ValidationError("Must be a text or image_url part.")


class ChatContentField(serializers.ListField):
    """A string (one text part) or a non-empty list of text and image_url parts."""

    child = ChatContentPartField()
    default_error_messages = {
        "not_a_list": "Must be a string or a non-empty list of content parts.",
        "empty": "Must be a string or a non-empty list of content parts.",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_empty=False, **kwargs)

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        if isinstance(data, str):
            return [{"type": "text", "text": data}]
        return super().to_internal_value(data)


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(
        choices=CHAT_ROLES,
        error_messages={"invalid_choice": f"Must be one of {list(CHAT_ROLES)} (tools run inside the agent)."},
    )
    content = ChatContentField()

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        return super().to_internal_value(_object_or_fail(data, "Must be an object."))


class ChatStreamOptionsField(serializers.JSONField):
    """`{"include_usage": bool}` or null; any other shape is an error on `stream_options` itself."""

    def to_internal_value(self, data: Any) -> bool:
        if data is None:
            return False
        if not isinstance(data, Mapping) or not isinstance(data.get("include_usage", False), bool):
            raise serializers.ValidationError("Must be an object whose include_usage is a boolean.")
        return data.get("include_usage", False)


class ChatRequestSerializer(serializers.Serializer):
    """What `POST /v1/chat/completions` reads; `stream_options` becomes `include_usage`."""

    model = StrictCharField(allow_blank=True, help_text="The name or id of a Steplens agent.")
    messages = serializers.ListField(child=ChatMessageSerializer(), allow_empty=False)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = ChatStreamOptionsField(required=False, allow_null=True, default=None)
    user = StrictCharField(required=False, allow_null=True, allow_blank=True, default=None)

    def run_validation(self, data: Any = serializers.empty) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            # Reported as the field `body` (DRF would name no field), as this endpoint always has.
            raise ApplicationError("the body must be a JSON object", extra={"body": "the body must be a JSON object"})
        return super().run_validation(data)

    def validate_model(self, value: str) -> str:
        # Not StrictCharField's "not blank": a model of spaces is a name like any other (and names no agent).
        if not value:
            raise serializers.ValidationError("This field may not be blank.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs["include_usage"] = bool(attrs.pop("stream_options"))
        return attrs
