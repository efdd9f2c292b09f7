"""Typed message content: every part type validates, invalid parts are named precisely."""

import pytest

from steps.values import ContentValidationError, validate_content, validate_message

VALID_PARTS = [
    {"type": "text", "text": "hello"},
    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
    {"type": "reasoning", "reasoning": "Let me think", "signature": "EqQB"},
    {"type": "redacted_reasoning", "data": "opaque"},
    {"type": "omitted_reasoning"},
    {"type": "summarized_reasoning", "id": "rs_1", "summary": [{"index": 0, "text": "Thought about it"}]},
    {"type": "tool_call", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
    {"type": "tool_return", "tool_call_id": "call_1", "content": "12 C"},
    {
        "type": "tool_return",
        "tool_call_id": "call_2",
        "content": [
            {"type": "text", "text": "see"},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        ],
    },
]


def test_every_content_part_type_validates():
    parts = validate_content(VALID_PARTS)
    assert [p.type for p in parts] == [p["type"] for p in VALID_PARTS]


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ({"type": "video", "url": "x"}, "content.0"),
        ({"type": "text"}, "content.0.text"),
        ({"type": "text", "text": "a", "extra": 1}, "content.0.extra"),
        ({"type": "image", "source": {"type": "url", "url": "ftp://x"}}, "content.0.source.url"),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA=="}},
            "content.0.source.media_type",
        ),
        ({"type": "tool_call", "id": "c", "name": "f", "input": "not a dict"}, "content.0.input"),
        (
            {"type": "tool_return", "tool_call_id": "c", "content": [{"type": "reasoning", "reasoning": "x"}]},
            "content.0.content",
        ),
    ],
)  # fmt: skip
def test_invalid_part_names_the_field(part, field):
    with pytest.raises(ContentValidationError) as info:
        validate_content([part])
    fields = [e["field"] for e in info.value.extra["errors"]]
    assert field in fields or any(f.startswith(field) for f in fields), fields
    assert info.value.status_code == 400


def test_tool_return_value_is_a_string_or_text_and_image_parts():
    message = validate_message(
        {
            "role": "tool",
            "tool_returns": [
                {"tool_call_id": "a", "status": "success", "func_response": "ok", "stdout": ["printed"]},
                {
                    "tool_call_id": "b",
                    "status": "error",
                    "func_response": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}],
                },
            ],
        }
    )
    assert message.tool_returns[1].func_response[0].type == "image"
    with pytest.raises(ContentValidationError) as info:
        validate_message({"role": "tool", "tool_returns": [{"tool_call_id": "a", "status": "ok"}]})
    assert info.value.extra["errors"][0]["field"] == "tool_returns.0.status"


def test_unknown_role_is_rejected():
    with pytest.raises(ContentValidationError) as info:
        validate_message({"role": "robot", "content": []})
    assert info.value.extra["errors"][0]["field"] == "role"
