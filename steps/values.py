"""The value types every app shares: typed message content and normalized token usage.

Content: a message's `content` is a list of parts discriminated by `type`; tool returns carry a value that is a
string or a list of text/image parts. `validate_message` is the one gate: it raises a `ContentValidationError`
naming the offending field (e.g. ``content.1.source.data``).

Usage: one shape for every provider API (see the usage table in DESIGN.md). `None` means the provider did not
report a count; `0` means it reported zero. `prompt_tokens` includes cached and cache-write tokens;
`completion_tokens` includes reasoning tokens.
"""

import base64
import binascii
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError

from config.errors import ApplicationError


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextContent(_Part):
    type: Literal["text"] = "text"
    text: str


class UrlImageSource(_Part):
    type: Literal["url"] = "url"
    url: str

    @field_validator("url")
    @classmethod
    def _http_or_data(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "data:")):
            raise ValueError("must be an http(s) or data: URL")
        return value


class Base64ImageSource(_Part):
    type: Literal["base64"] = "base64"
    media_type: Literal["image/png", "image/jpeg", "image/gif", "image/webp"]
    data: str

    @field_validator("data")
    @classmethod
    def _valid_base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("is not valid base64") from exc
        return value


ImageSource = Annotated[UrlImageSource | Base64ImageSource, Field(discriminator="type")]


class ImageContent(_Part):
    type: Literal["image"] = "image"
    source: ImageSource
    detail: Literal["auto", "low", "high"] | None = None


class ReasoningContent(_Part):
    """Model reasoning shown in clear text; `signature` lets it be sent back to the provider."""

    type: Literal["reasoning"] = "reasoning"
    reasoning: str
    signature: str | None = None
    is_native: bool = True


class RedactedReasoningContent(_Part):
    """Reasoning the provider encrypted (Anthropic redacted_thinking)."""

    type: Literal["redacted_reasoning"] = "redacted_reasoning"
    data: str


class OmittedReasoningContent(_Part):
    """Reasoning happened (and was billed) but the provider returned none of it."""

    type: Literal["omitted_reasoning"] = "omitted_reasoning"
    signature: str | None = None


class SummaryPart(_Part):
    index: int = 0
    text: str


class SummarizedReasoningContent(_Part):
    """OpenAI Responses reasoning item: summaries plus the encrypted content to send back."""

    type: Literal["summarized_reasoning"] = "summarized_reasoning"
    id: str
    summary: list[SummaryPart] = Field(default_factory=list)
    encrypted_content: str | None = None


class ToolCallContent(_Part):
    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    signature: str | None = None


ToolReturnPart = Annotated[TextContent | ImageContent, Field(discriminator="type")]


class ToolReturnContent(_Part):
    type: Literal["tool_return"] = "tool_return"
    tool_call_id: str
    content: str | list[ToolReturnPart]
    is_error: bool = False


ContentPart = Annotated[
    TextContent
    | ImageContent
    | ReasoningContent
    | RedactedReasoningContent
    | OmittedReasoningContent
    | SummarizedReasoningContent
    | ToolCallContent
    | ToolReturnContent,
    Field(discriminator="type"),
]


class FunctionCall(_Part):
    name: str
    arguments: str  # JSON text exactly as the model produced it


class ToolCall(_Part):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolReturn(_Part):
    """The outcome of one tool call; `func_response` is a string or a list of text/image parts."""

    tool_call_id: str
    status: Literal["success", "error"]
    func_response: str | list[ToolReturnPart] | None = None
    stdout: list[str] | None = None
    stderr: list[str] | None = None


Role = Literal["system", "user", "assistant", "tool", "approval"]


class MessageIn(_Part):
    """A message as it is written: the shape every writer (agent loop, OTLP ingest, API) hands over."""

    role: Role
    content: list[ContentPart] = Field(default_factory=list)
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    tool_returns: list[ToolReturn] | None = None
    otid: str | None = None
    is_err: bool = False


_content_adapter: TypeAdapter[list[ContentPart]] = TypeAdapter(list[ContentPart])


# What a caller of the API may send as a message's content: text and image parts (the other kinds are written by
# the agent loop and ingest). The OpenAPI schema of those parts, with the rules of their validators: URLs are
# http(s) or data:, base64 is padded and uses the standard alphabet (what b64decode(validate=True) accepts).
InputPart = Annotated[TextContent | ImageContent, Field(discriminator="type")]
_input_adapter: TypeAdapter[list[InputPart]] = TypeAdapter(list[InputPart])
_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_IMAGE_SOURCE = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["url"]},
                "url": {"type": "string", "pattern": "^(?:https?://|data:)"},
            },
            "required": ["type", "url"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["base64"]},
                "media_type": {"type": "string", "enum": ["image/png", "image/jpeg", "image/gif", "image/webp"]},
                "data": {"type": "string", "pattern": _BASE64},
            },
            "required": ["type", "media_type", "data"],
            "additionalProperties": False,
        },
    ]
}
INPUT_CONTENT_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
                        "required": ["type", "text"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string", "enum": ["image"]},
                            "source": _IMAGE_SOURCE,
                            "detail": {"type": "string", "enum": ["auto", "low", "high", None], "nullable": True},
                        },
                        "required": ["type", "source"],
                        "additionalProperties": False,
                    },
                ]
            },
        },
    ],
    "description": "A string, or a non-empty list of text and image parts.",
}


def input_content_errors(parts: list[Any]) -> dict[str, list[str]]:
    """What is wrong with a list of input content parts, by path inside the list ({} when it is valid)."""
    try:
        _input_adapter.validate_python(parts)
    except PydanticValidationError as exc:
        errors: dict[str, list[str]] = {}
        for error in exc.errors():
            errors.setdefault(_field_path(error["loc"], parts), []).append(error["msg"])
        return errors
    return {}


class ContentValidationError(ApplicationError):
    """A message or content part failed validation; `extra["errors"]` lists each field and reason (and
    `extra["message_index"]` which message, when several were given)."""

    @property
    def fields(self) -> dict[str, list[str]]:
        index = self.extra.get("message_index")
        prefix = f"messages.{index}." if index is not None else ""
        fields: dict[str, list[str]] = {}
        for error in self.extra.get("errors", []):
            fields.setdefault(prefix + error["field"], []).append(error["message"])
        return fields


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """The JSON path of an error, without pydantic's union-branch tags.

    pydantic puts the chosen branch of a union in `loc` (the discriminator value, or names such as
    ``list[...]``); walking the input alongside tells those apart from real keys and indexes.
    """
    path: list[str] = []
    current, tag_seen = data, False
    for i, segment in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, dict) and not tag_seen and current.get("type") == segment and not last:
            tag_seen = True
            continue
        index_into_list = isinstance(segment, int) and isinstance(current, list) and segment < len(current)
        key_of_dict = isinstance(segment, str) and isinstance(current, dict) and segment in current
        if index_into_list or key_of_dict:
            current, tag_seen = current[segment], False
        elif not (last and isinstance(current, dict)):
            continue  # a union branch name, or the value itself is wrong
        path.append(str(segment))
    return ".".join(path)


def _raise(exc: PydanticValidationError, data: Any, prefix: str = "") -> None:
    errors = [{"field": prefix + _field_path(e["loc"], data), "message": e["msg"]} for e in exc.errors()]
    first = errors[0]
    raise ContentValidationError(
        f"Invalid message content: {first['field']}: {first['message']}", extra={"errors": errors}
    ) from exc


def validate_message(data: MessageIn | dict[str, Any]) -> MessageIn:
    """Validate one message (a dict or an already built MessageIn) and return the typed model."""
    if isinstance(data, MessageIn):
        data = data.model_dump(mode="python", exclude_none=False)
    try:
        return MessageIn.model_validate(data)
    except PydanticValidationError as exc:
        _raise(exc, data)
        raise  # unreachable; keeps type checkers content


def validate_content(parts: list[Any]) -> list[ContentPart]:
    """Validate a bare list of content parts."""
    try:
        return _content_adapter.validate_python(parts)
    except PydanticValidationError as exc:
        _raise(exc, parts, prefix="content.")
        raise


# --- Normalized token usage ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    # The provider's own usage objects, unchanged (stored in prompt/completion_tokens_details).
    prompt_tokens_details: dict[str, Any] | None = field(default=None, compare=False)
    completion_tokens_details: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def total_tokens(self) -> int | None:
        """prompt + completion; None only when neither side was reported."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def as_counts(self) -> dict[str, int | None]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }
