"""The scripted provider: scenarios of provider responses fed to the REAL SDK clients in memory.

A `Scenario` stands in for one real model (e.g. `anthropic/claude-sonnet-4-6`): steps record that
provider and model, and the bytes go through the same adapter and SDK as a live call. It holds one
entry per LLM call of an agent run:

- a `Turn` (see `runner.providers.wire`): text, reasoning, tool calls, usage, finish reason, an error
  or a truncated stream, synthesized into the API's wire format;
- a `RecordedTurn`: a recorded response body replayed verbatim (SSE, JSON, or an error body);
- a callable `(LLMRequest) -> Turn | RecordedTurn` (e.g. an echo);
- a list of those: successive *attempts* of the same step (a 429, then the answer) for retry demos.

Which entry answers a call: the number of assistant messages already in the request's history
(stateless, so any worker process picks the same one). For a list of attempts, the attempt number
is counted per (step, history) inside this process. With `repeat_last=True` the last entry answers
every later step; otherwise running past the end answers with a 400 error the step records.

Register your own with `register_scenario(Scenario(...))` and use it as `scripted/<name>`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.providers.base import APIS, CancelEvent, LLMRequest, ProviderCall
from runner.providers.history import message_text, tool_returns
from runner.providers.replay import adapter_for_api, warm_up
from runner.providers.transport import InMemoryTransport, WireResponse
from runner.providers.wire import ErrorSpec, ToolCallSpec, Turn, TurnUsage, synthesize

RECORDINGS_DIR = Path(__file__).resolve().parent / "recordings"

PROVIDER_OF_API = {
    "openai_chat": "openai",
    "openai_responses": "openai",
    "anthropic": "anthropic",
    "google": "google",
}


@dataclass
class RecordedTurn:
    """A recorded response body served verbatim; `path` is relative to `RECORDINGS_DIR` unless absolute."""

    path: str | Path | None = None
    body: bytes | None = None
    status_code: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    def load(self) -> bytes:
        if self.body is not None:
            return self.body
        if self.path is None:
            raise ValueError("RecordedTurn needs a path or a body")
        path = Path(self.path)
        if not path.is_absolute():
            path = RECORDINGS_DIR / path
        return path.read_bytes()


TurnLike = Turn | RecordedTurn | Callable[[LLMRequest], Turn | RecordedTurn]
Entry = TurnLike | list[TurnLike]


@dataclass
class Scenario:
    """A named script of responses standing in for `model` on `api` (see the module docstring)."""

    name: str
    api: str
    model: str
    turns: list[Entry]
    description: str = ""
    repeat_last: bool = False
    chunk_delay: float = 0.0
    first_chunk_delay: float = 0.0
    _attempts: dict[tuple[int, str], int] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"Scenario {self.name!r}: api must be one of {APIS}, not {self.api!r}")
        if not self.turns:
            raise ValueError(f"Scenario {self.name!r} has no turns")

    @property
    def provider(self) -> str:
        return PROVIDER_OF_API[self.api]

    @property
    def handle(self) -> str:
        """The model handle of the model this scenario stands in for, e.g. `anthropic/claude-sonnet-4-6`."""
        prefix = "openai-responses" if self.api == "openai_responses" else self.provider
        return f"{prefix}/{self.model}"

    def next_attempt(self, *, step: int, history_key: str) -> int:
        """0 for the first call of this step with this history, then 1, 2, … (retries)."""
        with self._lock:
            if len(self._attempts) > 10_000:
                self._attempts.clear()
            attempt = self._attempts.get((step, history_key), 0)
            self._attempts[(step, history_key)] = attempt + 1
            return attempt


_SCENARIOS: dict[str, Scenario] = {}
_REGISTRY_LOCK = threading.Lock()


def register_scenario(scenario: Scenario, *, replace: bool = True) -> Scenario:
    """Make `scenario` available as `scripted/<name>`; returns it (handy for tests)."""
    with _REGISTRY_LOCK:
        if not replace and scenario.name in _SCENARIOS:
            raise ValueError(f"A scenario named {scenario.name!r} is already registered")
        _SCENARIOS[scenario.name] = scenario
    return scenario


def unregister_scenario(name: str) -> None:
    with _REGISTRY_LOCK:
        _SCENARIOS.pop(name, None)


def get_scenario(name: str) -> Scenario:
    """The registered scenario `name`; KeyError lists the known names."""
    try:
        return _SCENARIOS[name]
    except KeyError:
        raise KeyError(f"Unknown scripted scenario {name!r}; known: {', '.join(sorted(_SCENARIOS))}") from None


def scenario_names() -> list[str]:
    return sorted(_SCENARIOS)


def _history_key(request: LLMRequest) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    for message in request.messages:
        digest.update(message.model_dump_json().encode())
    return digest.hexdigest()


def prompt_chars(request: LLMRequest) -> int:
    """Characters of text in the history (drives the scripted prompt-token estimate)."""
    total = 0
    for message in request.messages:
        total += len(message_text(message))
        if message.role == "tool":
            total += sum(len(p.text) for ret in tool_returns(message) for p in ret.parts if hasattr(p, "text"))
    return total


class ScriptedAdapter:
    """Serves a scenario through the real adapter of its API over an in-memory transport.

    `chunk_delay` / `first_chunk_delay` (seconds) override the scenario's pacing; a turn's own delays
    win over both. Cancellation interrupts a pending delay at once.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        chunk_delay: float | None = None,
        first_chunk_delay: float | None = None,
        **adapter_options: Any,
    ) -> None:
        self.scenario = scenario
        self.provider_name = scenario.provider
        self.api = scenario.api
        self.model = scenario.model
        self.chunk_delay = scenario.chunk_delay if chunk_delay is None else chunk_delay
        self.first_chunk_delay = scenario.first_chunk_delay if first_chunk_delay is None else first_chunk_delay
        self.transport = InMemoryTransport()
        options = {"api_key": "scripted", "transport": self.transport, **adapter_options}
        self._streaming = adapter_for_api(scenario.api, streaming=True, **options)
        self._json = adapter_for_api(scenario.api, streaming=False, **options)
        warm_up(scenario.api)

    def stream(self, request: LLMRequest, *, cancel_event: CancelEvent | None = None) -> ProviderCall:
        """Pick the scenario's response for this history and run it through the real SDK."""
        wire = self.plan(request)
        streaming = wire.is_event_stream or wire.status_code >= 400
        adapter = self._streaming if streaming else self._json

        def arm(_ctx: Any) -> None:
            self.transport.arm(wire)

        return ProviderCall(
            adapter=adapter, request=request, cancel_event=cancel_event, streaming=streaming, before_send=arm
        )

    def plan(self, request: LLMRequest) -> WireResponse:
        """The wire response the scenario gives for `request` (advances the attempt counter)."""
        scenario = self.scenario
        step = sum(1 for m in request.messages if m.role == "assistant")
        if step >= len(scenario.turns) and not scenario.repeat_last:
            error = ErrorSpec(
                kind="bad_request",
                message=f"Scripted scenario {scenario.name!r} has {len(scenario.turns)} turn(s); "
                f"this is call {step + 1} (the history has {step} assistant message(s)).",
            )
            return self._synthesize(Turn(error=error), request=request, step=step)
        entry = scenario.turns[min(step, len(scenario.turns) - 1)]
        if isinstance(entry, list):
            attempt = scenario.next_attempt(step=step, history_key=_history_key(request))
            entry = entry[min(attempt, len(entry) - 1)]
        turn = entry(request) if callable(entry) and not isinstance(entry, (Turn, RecordedTurn)) else entry
        if isinstance(turn, RecordedTurn):
            body = turn.load()
            is_json = body.lstrip()[:1] == b"{"
            headers = {"content-type": "application/json" if is_json else "text/event-stream", **turn.headers}
            return WireResponse(
                body=body,
                status_code=turn.status_code,
                headers=headers,
                chunk_delay=self.chunk_delay,
                first_chunk_delay=self.first_chunk_delay,
            )
        return self._synthesize(turn, request=request, step=step)

    def _synthesize(self, turn: Turn, *, request: LLMRequest, step: int) -> WireResponse:
        wire = synthesize(
            api=self.api,
            turn=turn,
            model=self.model,
            seed=f"{self.scenario.name}:{step}:{len(request.messages)}",
            prompt_chars=prompt_chars(request),
        )
        if turn.chunk_delay is None:
            wire.chunk_delay = self.chunk_delay
        if turn.first_chunk_delay is None:
            wire.first_chunk_delay = self.first_chunk_delay
        return wire


# --- built-in scenarios -------------------------------------------------------------------------


def echo_turn(request: LLMRequest) -> Turn:
    """Answers the last user (or tool) message by echoing it, with usage estimated from the history."""
    last = next((m for m in reversed(request.messages) if m.role in ("user", "tool")), None)
    if last is None:
        return Turn(text="Echo: (nothing to echo)")
    if last.role == "tool":
        texts = [p.text for ret in tool_returns(last) for p in ret.parts if hasattr(p, "text")]
        return Turn(text="Tool said: " + " ".join(texts))
    return Turn(text="Echo: " + (message_text(last) or "(no text)"))


def slow_first_token_turn(request: LLMRequest) -> Turn:
    """The echo, sent after a long silence; the delay is read per call so a deployment can change it."""
    from django.conf import settings

    turn = echo_turn(request)
    turn.first_chunk_delay = settings.STEPLENS_SLOW_FIRST_TOKEN_SECONDS
    return turn


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
_WEATHER_ANSWER = "It is 18°C and sunny in Paris right now, with a light breeze from the west."


def _weather(api: str, model: str, *, reasoning: bool, cache: bool) -> list[Entry]:
    thought = "The user wants the current weather in Paris. I should call get_weather with city=Paris."
    return [
        Turn(
            reasoning=thought if reasoning else "",
            text="" if api != "anthropic" else "Let me check the weather in Paris.",
            tool_calls=[ToolCallSpec(name="get_weather", arguments={"city": "Paris"})],
            usage=TurnUsage(
                prompt_tokens=412,
                completion_tokens=96 if reasoning else 18,
                cache_write_tokens=384 if cache and api == "anthropic" else 0,
                reasoning_tokens=64 if reasoning else 0,
            ),
        ),
        Turn(
            text=_WEATHER_ANSWER,
            usage=TurnUsage(
                prompt_tokens=498,
                completion_tokens=24,
                cached_input_tokens=384 if cache else 0,
            ),
        ),
    ]


# --- tool scenarios: the first call asks for a tool with arguments read from the question, the second answers
# from what the tool returned (an approval denied comes back as the tool's error). The demo builds its agents
# from the same functions.

_ORDER_ID = re.compile(r"\b[A-Z]{1,3}-\d{1,8}\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_EXPRESSION = re.compile(r"[\d(][\d\s.+\-*/%()]*[\d)]")
_OPERATION = re.compile(r"[\d)]\s*(?:[-+*/%]|\*\*)\s*[\d(]")
_CITIES = ("Paris", "Oslo", "London", "Lisbon", "Berlin", "Tokyo", "New York")


def last_user_text(request: LLMRequest) -> str:
    """The text of the last user message of the request ('' when there is none)."""
    last = next((m for m in reversed(request.messages) if m.role == "user"), None)
    return message_text(last) if last is not None else ""


def calculator_call(question: str) -> ToolCallSpec:
    """calculator(expression): the arithmetic in the question, or the mean of the demo's sign-ups."""
    found = max((m for m in _EXPRESSION.findall(question) if _OPERATION.search(m)), key=len, default="")
    return ToolCallSpec(name="calculator", arguments={"expression": found or "(12 + 18 + 25 + 31 + 29) / 5"})


def chart_call(question: str) -> ToolCallSpec:
    """render_chart(title, values): the numbers in the question (two or more), else the demo's sign-ups."""
    values = [float(n) if "." in n else int(n) for n in _NUMBER.findall(question)]
    values = values[:50] if len(values) >= 2 else [12, 18, 25, 31, 29]
    return ToolCallSpec(name="render_chart", arguments={"title": "Weekly sign-ups", "values": values})


def refund_call(question: str) -> ToolCallSpec:
    """issue_refund(order_id, amount, reason): the order id in the question (e.g. A-1042), 49.90, the question."""
    match = _ORDER_ID.search(question)
    order_id = match.group(0) if match else "A-1042"
    return ToolCallSpec(name="issue_refund", arguments={"order_id": order_id, "amount": 49.9, "reason": question})


def weather_call(question: str) -> ToolCallSpec:
    """get_weather(city): the first known city named in the question, else Paris."""
    return ToolCallSpec(name="get_weather", arguments={"city": next((c for c in _CITIES if c in question), "Paris")})


TOOL_CALLS: dict[str, Callable[[str], ToolCallSpec]] = {
    "calculator": calculator_call,
    "render_chart": chart_call,
    "issue_refund": refund_call,
    "get_weather": weather_call,
}


def tool_for_question(question: str, tools: Sequence[str]) -> str:
    """Which of `tools` a question asks for: charts, refunds, arithmetic, else the weather (or the first tool)."""
    lowered = question.lower()
    wanted = [
        ("render_chart", "plot" in lowered or "chart" in lowered),
        ("issue_refund", "refund" in lowered),
        ("calculator", bool(_OPERATION.search(question)) or "calculate" in lowered),
        ("get_weather", True),
    ]
    return next((name for name, asked in wanted if asked and name in tools), tools[0])


def tool_answer(request: LLMRequest) -> Turn:
    """The answer after a tool ran: what the tool returned, or why it could not (an error or a denied approval)."""
    last = next((m for m in reversed(request.messages) if m.role == "tool"), None)
    returns = tool_returns(last) if last is not None else []
    text = " ".join(p.text for ret in returns for p in ret.parts if hasattr(p, "text")).strip()
    if any(ret.is_error for ret in returns):
        return Turn(text=f"I could not do that: {text or 'the tool failed'}.")
    return Turn(text=f"Done. {text}" if text else "Done.")


def tool_turns(
    *,
    api: str,
    tool: str | Callable[[str], str],
    first_usage: Callable[[], TurnUsage | None] = lambda: None,
    answer_usage: Callable[[], TurnUsage | None] = lambda: None,
    reasoning: str = "",
) -> list[Entry]:
    """Two turns: call `tool` (a name, or a function of the question naming one) with arguments from the
    question, then answer from its return. `*_usage` give each call's usage (None: estimated from the text)."""

    def call(request: LLMRequest) -> Turn:
        question = last_user_text(request)
        name = tool(question) if callable(tool) else tool
        return Turn(
            reasoning=reasoning,
            text="Let me take care of that." if api == "anthropic" else "",
            tool_calls=[TOOL_CALLS[name](question)],
            usage=first_usage(),
        )

    def answer(request: LLMRequest) -> Turn:
        turn = tool_answer(request)
        turn.usage = answer_usage()
        return turn

    return [call, answer]


def _builtin() -> list[Scenario]:
    scenarios = [
        Scenario(
            "weather-openai",
            "openai_chat",
            "gpt-4o-mini",
            _weather("openai_chat", "gpt-4o-mini", reasoning=False, cache=True),
            description="get_weather(city=Paris) tool call, then the answer; the second call hits the prompt cache.",
        ),
        Scenario(
            "weather-responses",
            "openai_responses",
            "gpt-5-mini",
            _weather("openai_responses", "gpt-5-mini", reasoning=True, cache=True),
            description="Responses API with a reasoning summary and reasoning tokens, then the answer.",
        ),
        Scenario(
            "weather-anthropic",
            "anthropic",
            "claude-sonnet-4-6",
            _weather("anthropic", "claude-sonnet-4-6", reasoning=True, cache=True),
            description="Thinking + tool_use with a cache write, then the answer reading the cache.",
        ),
        Scenario(
            "weather-google",
            "google",
            "gemini-2.5-flash",
            _weather("google", "gemini-2.5-flash", reasoning=True, cache=True),
            description="Gemini thoughts + functionCall with a thought signature, then the answer.",
        ),
        Scenario(
            "capital-openai",
            "openai_chat",
            "gpt-4o-mini",
            [RecordedTurn("openai_chat_capital_tool_call.sse"), RecordedTurn("openai_chat_capital_answer.sse")],
            description="Recorded gpt-4o-mini stream: get_capital(country=UK), then 'The capital of the UK is London.'",
        ),
        Scenario(
            "capital-responses",
            "openai_responses",
            "gpt-4o",
            [RecordedTurn("openai_responses_capital_tool_call.sse"), Turn(text="The capital of France is Paris.")],
            description="Recorded Responses stream calling get_capital(country=France), then a synthesized answer.",
        ),
        Scenario(
            "redacted-thinking-anthropic",
            "anthropic",
            "claude-sonnet-4-6",
            [RecordedTurn("anthropic_redacted_thinking.sse")],
            description="Recorded Claude stream with redacted_thinking blocks.",
        ),
        Scenario(
            "thinking-google",
            "google",
            "gemini-2.5-pro",
            [RecordedTurn("google_thinking.sse")],
            description="Recorded Gemini 2.5 Pro stream with thought parts.",
        ),
        Scenario(
            "rate-limited-openai",
            "openai_chat",
            "gpt-4o-mini",
            [[Turn(error=ErrorSpec(kind="rate_limit", retry_after=1)), Turn(text="Answered after a retry.")]],
            description="First attempt: 429 with retry-after: 1; the retry answers.",
        ),
        Scenario(
            "overloaded-anthropic",
            "anthropic",
            "claude-sonnet-4-6",
            [[Turn(error=ErrorSpec(kind="overloaded")), Turn(text="Answered after the overload cleared.")]],
            description="First attempt: 529 overloaded_error; the retry answers.",
        ),
        Scenario(
            "server-error-google",
            "google",
            "gemini-2.5-flash",
            [[Turn(error=ErrorSpec(kind="server_error")), Turn(text="Answered after a 500.")]],
            description="First attempt: 500 INTERNAL; the retry answers.",
        ),
        Scenario(
            "context-overflow-openai",
            "openai_chat",
            "gpt-4o-mini",
            [Turn(error=ErrorSpec(kind="context_window"))],
            description="400 context_length_exceeded.",
        ),
        Scenario(
            "truncated-anthropic",
            "anthropic",
            "claude-sonnet-4-6",
            [Turn(text="This answer is cut off in the middle of the stream and never", truncate=True)],
            description="A stream that stops before message_stop (malformed_stream).",
        ),
        Scenario(
            "incomplete-responses",
            "openai_responses",
            "gpt-5-mini",
            [
                Turn(
                    text="A long answer that ran out of output tokens befo",
                    finish_reason="length",
                    usage=TurnUsage(prompt_tokens=40, completion_tokens=256, reasoning_tokens=200),
                )
            ],
            description="Responses stream ending response.incomplete (max_output_tokens).",
        ),
        Scenario(
            "slow-echo",
            "openai_chat",
            "gpt-4o-mini",
            [echo_turn],
            repeat_last=True,
            chunk_delay=0.05,
            first_chunk_delay=0.3,
            description="Echo with a 300 ms first chunk and 50 ms between chunks (streaming and cancel demos).",
        ),
        Scenario(
            "slow-first-token",
            "openai_chat",
            "gpt-4o-mini",
            [slow_first_token_turn],
            repeat_last=True,
            description="Echo after STEPLENS_SLOW_FIRST_TOKEN_SECONDS (75 s) of silence: streams that must outlive "
            "a model thinking for minutes (pings, proxy and gunicorn timeouts).",
        ),
    ]
    for name, api, model in (
        ("echo", "openai_chat", "gpt-4o-mini"),
        ("echo-openai", "openai_chat", "gpt-4o-mini"),
        ("echo-responses", "openai_responses", "gpt-4o-mini"),
        ("echo-anthropic", "anthropic", "claude-sonnet-4-6"),
        ("echo-google", "google", "gemini-2.5-flash"),
    ):
        scenarios.append(
            Scenario(
                name,
                api,
                model,
                [echo_turn],
                repeat_last=True,
                description="Echoes the last user message with usage estimated from the history.",
            )
        )
    tools = (
        ("calculator", "calculator", "calculator(expression) with the arithmetic in the question, then the result."),
        ("chart", "render_chart", "render_chart(values) with the numbers in the question (a PNG), then the answer."),
        ("refund", "issue_refund", "issue_refund(order_id) for the order in the question (needs approval), then "
         "the outcome: refunded, or the reason it was denied."),
    )  # fmt: skip
    for prefix, tool, description in tools:
        for suffix, api, model in (
            ("openai", "openai_chat", "gpt-4o-mini"),
            ("responses", "openai_responses", "gpt-5-mini"),
            ("anthropic", "anthropic", "claude-sonnet-4-6"),
            ("google", "google", "gemini-2.5-flash"),
        ):
            scenarios.append(Scenario(f"{prefix}-{suffix}", api, model, tool_turns(api=api, tool=tool),
                                      description=description))  # fmt: skip
    return scenarios


for _scenario in _builtin():
    register_scenario(_scenario)
