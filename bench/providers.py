"""Adapter overhead: time per recorded stream through the adapter vs the bare SDK iterating the same bytes.

Both sides use the real SDK client over the same in-memory transport serving the same recorded SSE body
and send the same request; the bare side only iterates the SDK's stream events, the adapter side does
everything a live call does (request conversion, chunks, accumulation, usage, content parts, the
redacted trace).

    python bench/providers.py [--repeat 30] [--recordings DIR]

Target: the adapter adds at most 30% (ratio <= 1.30).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
warnings.simplefilter("ignore", DeprecationWarning)  # SDK model-deprecation notices

from runner.providers import LLMRequest  # noqa: E402
from runner.providers.replay import adapter_for_api  # noqa: E402
from runner.providers.transport import InMemoryTransport, WireResponse  # noqa: E402
from steps.values import MessageIn, TextContent  # noqa: E402

REQUEST = LLMRequest(
    model="m",
    messages=[
        MessageIn(role="system", content=[TextContent(text="You are terse.")]),
        MessageIn(role="user", content=[TextContent(text="What is the capital of France?")]),
    ],
)
SHARED = REPO_ROOT.parent / "shared" / "recordings"
LOCAL = REPO_ROOT / "agents" / "providers" / "recordings"
API_OF_LOCAL = {
    "openai_chat_": "openai_chat",
    "openai_responses_": "openai_responses",
    "anthropic_": "anthropic",
    "google_": "google",
}


def recorded_streams(directory: Path) -> list[tuple[str, str, bytes]]:
    """(api, name, body) of every recorded SSE stream under `directory`."""
    streams = []
    if (directory / "manifest.json").is_file():
        for api in ("openai_chat", "openai_responses", "anthropic", "google"):
            for path in sorted((directory / api).glob("*.sse")):
                streams.append((api, path.stem, path.read_bytes()))
    else:
        for path in sorted(directory.glob("*.sse")):
            api = next(a for prefix, a in API_OF_LOCAL.items() if path.name.startswith(prefix))
            streams.append((api, path.stem, path.read_bytes()))
    return streams


def bare_sdk(api: str, transport: InMemoryTransport) -> Callable[[], int]:
    """A function that makes the same SDK call as the adapter and only iterates the SDK's events.

    The request parameters are the ones the adapter builds (computed once, outside the timing), so both
    sides send the same request and read the same stream; the difference is the adapter's own work.
    """
    import httpx2

    http = httpx2.Client(transport=transport)
    params = adapter_for_api(api, api_key="sk-bench", transport=transport).build_request(REQUEST)
    if api in ("openai_chat", "openai_responses"):
        import openai

        client = openai.OpenAI(api_key="sk-bench", http_client=http, max_retries=0)
        if api == "openai_chat":

            def run() -> int:
                stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
                return sum(1 for _ in stream)

        else:

            def run() -> int:
                return sum(1 for _ in client.responses.create(**params, stream=True))

        return run
    if api == "anthropic":
        import anthropic

        client = anthropic.Anthropic(api_key="sk-bench", http_client=http, max_retries=0)

        def run() -> int:
            return sum(1 for _ in client.messages.create(**params, stream=True))

        return run
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="bench", vertexai=False, http_options=types.HttpOptions(httpx_client=http))

    def run() -> int:
        return sum(1 for _ in client.models.generate_content_stream(**params))

    return run


def through_adapter(api: str, transport: InMemoryTransport) -> Callable[[], int]:
    adapter = adapter_for_api(api, api_key="sk-bench", transport=transport)

    def run() -> int:
        call = adapter.stream(REQUEST)
        count = sum(1 for _ in call)
        assert call.result is not None and call.trace is not None
        return count

    return run


def measure(fn: Callable[[], Any], *, repeat: int) -> list[float]:
    """Seconds per call for `repeat` calls after a warm-up call."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--recordings", type=Path, default=SHARED if SHARED.is_dir() else LOCAL)
    args = parser.parse_args()

    streams = recorded_streams(args.recordings)
    print(f"{len(streams)} recorded streams from {args.recordings}; fastest of {args.repeat} interleaved runs each\n")
    header = f"{'api':<17} {'stream':<72} {'events':>6} {'sdk ms':>8} {'adapter ms':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    totals: dict[str, list[float]] = {}
    for api, name, body in streams:
        wire = WireResponse(body=body, headers={"content-type": "text/event-stream"})
        transport = InMemoryTransport(wire)
        sdk = bare_sdk(api, transport)
        adapter = through_adapter(api, transport)
        events = sdk()
        # Interleave the two in rounds so drift (CPU frequency, GC, other load) hits both alike, and keep
        # the fastest run of each: the least disturbed measurement of the same work.
        sdk_times: list[float] = []
        adapter_times: list[float] = []
        for _ in range(5):
            sdk_times += measure(sdk, repeat=max(args.repeat // 5, 1))
            adapter_times += measure(adapter, repeat=max(args.repeat // 5, 1))
        sdk_s, adapter_s = min(sdk_times), min(adapter_times)
        totals.setdefault(api, [0.0, 0.0])
        totals[api][0] += sdk_s
        totals[api][1] += adapter_s
        print(
            f"{api:<17} {name[:72]:<72} {events:>6} {sdk_s * 1e3:>8.2f} {adapter_s * 1e3:>10.2f} "
            f"{adapter_s / sdk_s:>6.2f}"
        )
    print()
    all_sdk = sum(t[0] for t in totals.values())
    all_adapter = sum(t[1] for t in totals.values())
    for api, (sdk_s, adapter_s) in totals.items():
        line = f"total sdk {sdk_s * 1e3:8.2f} ms  adapter {adapter_s * 1e3:8.2f} ms  ratio {adapter_s / sdk_s:.2f}"
        print(f"{api:<17} {line}")
    ratio = all_adapter / all_sdk
    print(f"{'all':<17} total sdk {all_sdk * 1e3:8.2f} ms  adapter {all_adapter * 1e3:8.2f} ms  ratio {ratio:.2f}")
    print(f"\ntarget ratio <= 1.30: {'met' if ratio <= 1.30 else 'NOT met'}")


if __name__ == "__main__":
    main()
