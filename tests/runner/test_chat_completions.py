"""`/v1/chat/completions`: the official openai client talks to an agent, streaming and not."""

import openai
import pytest

from runner.providers import Turn, TurnUsage
from steps.models import Step

USER = [{"role": "user", "content": "Say hi"}]


@pytest.fixture
def openai_client(live_server, api_key):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key, max_retries=0)


@pytest.mark.django_db(transaction=True)
def test_official_client_gets_a_reply_and_the_call_is_recorded(openai_client, make_agent, scenario):
    handle = scenario(
        "anthropic", [Turn(text="Hi from the agent!", usage=TurnUsage(prompt_tokens=20, completion_tokens=5))]
    )
    agent = make_agent(handle, name="greeter")

    completion = openai_client.chat.completions.create(model="greeter", messages=USER)

    assert completion.choices[0].message.content == "Hi from the agent!"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (20, 5)
    step = Step.objects.get(agent=agent)
    assert step.run_id == completion.id.removeprefix("chatcmpl-")


@pytest.mark.django_db(transaction=True)
def test_official_client_streams_a_reply(openai_client, make_agent, scenario):
    make_agent(scenario("openai_chat", [Turn(text="streamed words arrive", chunk_chars=3)]), name="streamer")

    chunks = list(
        openai_client.chat.completions.create(
            model="streamer", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed words arrive"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens > 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "greeter"}, "messages"),
        ({"model": "greeter", "messages": "hi"}, "messages"),
        ({"model": "greeter", "messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role"),
        ({"model": "greeter", "messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
        ({"model": "greeter", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages.0.content.0"),
        ({"messages": USER}, "model"),
        ([USER], "body"),
        ({"model": "greeter", "messages": ["hi"]}, "messages.0"),
        (
            {"model": "greeter", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content.0.image_url.url",
        ),
        ({"model": "greeter", "messages": USER, "stream": None}, "stream"),
        ({"model": "greeter", "messages": USER, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ],
)
def test_bad_chat_requests_get_precise_400s(api_client, make_agent, body, field):
    make_agent("scripted/echo", name="greeter")
    response = api_client.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"]


@pytest.mark.django_db
def test_unknown_agent_is_a_404(api_client):
    response = api_client.post("/v1/chat/completions", {"model": "ghost", "messages": USER}, format="json")
    assert response.status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("roles", [["assistant"], ["system"], ["user", "assistant"], ["user", "system"]])
def test_a_conversation_may_end_with_any_role(api_client, make_agent, roles):
    """OpenAI's API accepts any last message (an assistant prefill, say); so does this one, and the run ends."""
    make_agent("scripted/echo", name="greeter")
    messages = [{"role": role, "content": f"{role} says hi"} for role in roles]
    response = api_client.post("/v1/chat/completions", {"model": "greeter", "messages": messages}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["choices"][0]["finish_reason"] == "stop"
