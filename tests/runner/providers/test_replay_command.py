"""`manage.py replay_stream` prints what Steplens would record for a captured response."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from tests.runner.providers.conftest import manifest_cases


def _replay(*args: str) -> dict:
    out = io.StringIO()
    call_command("replay_stream", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.parametrize("case", manifest_cases(), ids=lambda c: c["file"])
def test_replay_stream_prints_the_expected_usage_and_finish_reason(recordings_dir, case):
    output = _replay("--api", case["api"], str(recordings_dir / case["file"]))

    assert set(output) >= {
        "usage",
        "finish_reason_raw",
        "finish_reason",
        "tool_calls",
        "content",
        "model",
        "response_id",
    }
    assert output["usage"] == {k: case["expected"][k] for k in output["usage"]}
    assert output["finish_reason_raw"] == case["expected"]["finish_reason_raw"]
    assert len(output["tool_calls"]) == case["expected"]["tool_calls"]
    assert ("error" in output) is (case["status_code"] >= 400)


def test_replay_stream_of_an_error_body_names_the_error(recordings_dir):
    output = _replay(
        "--api",
        "anthropic",
        str(recordings_dir / "anthropic/test_anthropic_explicit_effort_xhigh_unsupported_model_errors__i0.json"),
    )

    assert output["error"]["error_type"] == "bad_request" and output["error"]["status_code"] == 400
    assert output["usage"]["total_tokens"] is None


@pytest.mark.parametrize(
    ("api", "content"),
    [
        ("openai_chat", b"this is not a response"),
        ("anthropic", b'{"hello": "world"}'),
        ("openai_responses", b'data: {"type": "response.created"}\n\n'),
        ("google", b"{not json"),
        ("google", b""),
    ],
)
def test_a_file_that_is_not_a_valid_response_exits_with_code_2(tmp_path, api, content):
    path = tmp_path / "body.txt"
    path.write_bytes(content)

    with pytest.raises(CommandError) as excinfo:
        _replay("--api", api, str(path))

    assert excinfo.value.returncode == 2
    assert "not a valid" in str(excinfo.value) or "empty" in str(excinfo.value)


def test_a_missing_file_exits_with_code_2(tmp_path):
    with pytest.raises(CommandError) as excinfo:
        _replay("--api", "google", str(tmp_path / "nope.sse"))

    assert excinfo.value.returncode == 2
