"""What each adapter sends: history conversion, tools, and multimodal tool returns per provider."""

from __future__ import annotations

import base64

import httpx2
import pytest

from runner.providers import ImageFetcher, LLMRequest, ToolSpec, Turn, synthesize
from steps.values import (
    Base64ImageSource,
    FunctionCall,
    ImageContent,
    MessageIn,
    ReasoningContent,
    TextContent,
    ToolCall,
    ToolCallContent,
    ToolReturn,
    UrlImageSource,
)
from tests.runner.providers.conftest import adapter_serving, sent_json

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_B64 = base64.b64encode(PNG).decode()
CHART_URL = "https://images.example.com/chart.png"
HUGE_URL = "https://images.example.com/huge.png"
MISSING_URL = "https://images.example.com/missing.png"
SLOW_URL = "https://images.example.com/slow.png"


def _image_server(request: httpx2.Request) -> httpx2.Response:
    url = str(request.url)
    if url == CHART_URL:
        return httpx2.Response(200, headers={"content-type": "image/png"}, content=PNG)
    if url == HUGE_URL:
        return httpx2.Response(200, headers={"content-type": "image/png"}, content=PNG + b"\0" * 4096)
    if url == SLOW_URL:
        raise httpx2.ReadTimeout("slow", request=request)
    return httpx2.Response(404)


def _fetcher() -> ImageFetcher:
    return ImageFetcher(max_bytes=2048, timeout=2.0, transport=httpx2.MockTransport(_image_server))


def _history(*image_urls: str) -> LLMRequest:
    images = [ImageContent(source=Base64ImageSource(media_type="image/png", data=PNG_B64))]
    images += [ImageContent(source=UrlImageSource(url=url)) for url in image_urls]
    return LLMRequest(
        model="m",
        messages=[
            MessageIn(role="system", content=[TextContent(text="Be brief.")]),
            MessageIn(role="user", content=[TextContent(text="Draw the chart.")]),
            MessageIn(
                role="assistant",
                content=[TextContent(text="Rendering.")],
                tool_calls=[
                    ToolCall(id="call_1", function=FunctionCall(name="render_chart", arguments='{"kind":"bar"}'))
                ],
            ),
            MessageIn(
                role="tool",
                tool_returns=[
                    ToolReturn(
                        tool_call_id="call_1", status="success", func_response=[TextContent(text="Here it is"), *images]
                    )
                ],
            ),
        ],
        tools=[ToolSpec(name="render_chart", description="Render a chart.", parameters={"type": "object"})],
        tool_choice="required",
        temperature=0.2,
        max_output_tokens=300,
    )


def _send(api: str, request: LLMRequest) -> dict:
    wire = synthesize(api=api, turn=Turn(text="ok"), model="m")
    adapter, transport = adapter_serving(api, wire, image_fetcher=_fetcher())
    adapter.stream(request).run()
    return sent_json(transport)


def test_chat_completions_gets_a_text_placeholder_for_each_tool_image():
    body = _send("openai_chat", _history(CHART_URL))

    tool_message = body["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert isinstance(tool_message["content"], str)
    lines = tool_message["content"].split("\n")
    assert lines[0] == "Here it is"
    assert lines[1].startswith("[image returned by the tool: inline image")
    assert lines[2].startswith(f"[image returned by the tool: {CHART_URL}")
    assert body["messages"][-2]["tool_calls"][0]["function"] == {"name": "render_chart", "arguments": '{"kind":"bar"}'}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["tool_choice"] == "required" and body["max_completion_tokens"] == 300


def test_responses_api_gets_the_images_inside_the_function_call_output():
    body = _send("openai_responses", _history(CHART_URL))

    output_item = body["input"][-1]
    assert output_item["type"] == "function_call_output" and output_item["call_id"] == "call_1"
    assert output_item["output"] == [
        {"type": "input_text", "text": "Here it is"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}", "detail": "auto"},
        {"type": "input_image", "image_url": CHART_URL, "detail": "auto"},
    ]
    assert {
        "type": "function_call",
        "call_id": "call_1",
        "name": "render_chart",
        "arguments": '{"kind":"bar"}',
    } in body["input"]
    assert body["max_output_tokens"] == 300


def test_anthropic_gets_base64_image_blocks_inside_the_tool_result():
    body = _send("anthropic", _history(CHART_URL))

    last = body["messages"][-1]
    assert last["role"] == "user"
    [result] = last["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "call_1"
    assert "is_error" not in result
    image_block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    assert result["content"] == [{"type": "text", "text": "Here it is"}, image_block, image_block]
    assert body["system"] == "Be brief."
    assert body["tool_choice"] == {"type": "any"}
    assert body["tools"] == [
        {"name": "render_chart", "description": "Render a chart.", "input_schema": {"type": "object"}}
    ]


def test_gemini_gets_the_images_as_inline_parts_beside_the_function_response():
    body = _send("google", _history(CHART_URL))

    last = body["contents"][-1]
    assert last["role"] == "user"
    function_part, *image_parts = last["parts"]
    assert function_part == {"functionResponse": {"name": "render_chart", "response": {"output": "Here it is"}}}
    assert len(image_parts) == 2
    for part in image_parts:
        # google-genai sends the blob's mime type in proto field spelling; the API accepts both spellings.
        assert (part["inlineData"].get("mimeType") or part["inlineData"].get("mime_type")) == "image/png"
        assert base64.urlsafe_b64decode(part["inlineData"]["data"] + "==") == PNG
    assert body["contents"][-2] == {
        "role": "model",
        "parts": [{"text": "Rendering."}, {"functionCall": {"name": "render_chart", "args": {"kind": "bar"}}}],
    }
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


@pytest.mark.parametrize(
    ("url", "reason"), [(HUGE_URL, "too large"), (MISSING_URL, "HTTP 404"), (SLOW_URL, "longer than")]
)
def test_an_image_that_cannot_be_fetched_becomes_a_tool_error_for_anthropic(url, reason):
    body = _send("anthropic", _history(url))

    [result] = body["messages"][-1]["content"]
    assert result["is_error"] is True
    texts = [block["text"] for block in result["content"] if block["type"] == "text"]
    assert any(reason in text and url in text for text in texts)


def test_an_image_that_cannot_be_fetched_becomes_a_tool_error_for_gemini():
    body = _send("google", _history(MISSING_URL))

    function_part = body["contents"][-1]["parts"][0]["functionResponse"]
    assert "HTTP 404" in function_part["response"]["error"]


def test_image_fetcher_rejects_non_images_and_reads_data_urls():
    fetcher = ImageFetcher(
        transport=httpx2.MockTransport(
            lambda r: httpx2.Response(200, headers={"content-type": "text/html"}, content=b"<html>")
        )
    )

    with pytest.raises(Exception, match="not a supported image"):
        fetcher.fetch("https://example.com/page")
    data = fetcher.resolve(ImageContent(source=UrlImageSource(url=f"data:image/png;base64,{PNG_B64}")))
    assert (data.media_type, data.data) == ("image/png", PNG_B64)


def test_anthropic_replays_signed_thinking_and_drops_unsigned_reasoning():
    request = LLMRequest(
        model="m",
        messages=[
            MessageIn(role="user", content=[TextContent(text="hi")]),
            MessageIn(
                role="assistant",
                content=[
                    ReasoningContent(reasoning="signed thought", signature="sig-1"),
                    ReasoningContent(reasoning="someone else's thought"),
                    ToolCallContent(id="toolu_1", name="get_weather", input={"city": "Paris"}),
                ],
            ),
            MessageIn(role="tool", tool_call_id="toolu_1", content=[TextContent(text="18C")]),
        ],
    )

    body = _send("anthropic", request)

    assert body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "signed thought", "signature": "sig-1"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]}
    ]


def test_chat_user_images_are_sent_as_image_url_parts():
    request = LLMRequest(
        model="m",
        messages=[
            MessageIn(
                role="user",
                content=[
                    TextContent(text="What is this?"),
                    ImageContent(source=UrlImageSource(url=CHART_URL), detail="low"),
                ],
            )
        ],
    )

    body = _send("openai_chat", request)

    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": CHART_URL, "detail": "low"}},
    ]
