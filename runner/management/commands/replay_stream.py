"""`manage.py replay_stream --api API FILE`: what Steplens would record for a captured provider response."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runner.providers import APIS, ProviderError, parse_recorded_response
from runner.providers.errors import MALFORMED_STREAM

EMPTY_USAGE = {
    "prompt_tokens": None,
    "completion_tokens": None,
    "total_tokens": None,
    "cached_input_tokens": None,
    "cache_write_tokens": None,
    "reasoning_tokens": None,
}


class Command(BaseCommand):
    # Reads a file and prints; it needs neither the database nor URL/model checks.
    requires_system_checks: list[str] = []
    help = (
        "Read a raw provider response body (SSE text for a stream, or a JSON body) exactly as the provider "
        "sent it, run it through the same adapter code as a live call and print one JSON object: usage, "
        "finish_reason_raw, finish_reason, tool_calls, content, model, response_id. An error body prints the "
        "same object with null usage and an `error` member. A file that is not a valid response exits with 2."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--api", required=True, choices=APIS, help="The provider API the body came from.")
        parser.add_argument("file", help="The response body file ('-' reads stdin).")
        parser.add_argument(
            "--status-code",
            type=int,
            default=200,
            help="HTTP status of the recorded response (default 200; an error envelope is detected anyway).",
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--stream", dest="streaming", action="store_true", default=None, help="Force SSE.")
        mode.add_argument("--json", dest="streaming", action="store_false", help="Force a non-streaming JSON body.")
        parser.add_argument("--indent", type=int, default=None, help="Pretty-print with this indent.")

    def handle(self, *args: Any, **options: Any) -> None:
        # Adapter warnings/tracebacks would clutter the one JSON object this command promises.
        logging.getLogger("runner.providers").setLevel(logging.CRITICAL)
        body = self._read(options["file"])
        try:
            result = parse_recorded_response(
                options["api"], body, streaming=options["streaming"], status_code=options["status_code"]
            )
            output = result.summary()
        except ProviderError as exc:
            if exc.error_type == MALFORMED_STREAM and exc.result is None:
                raise CommandError(
                    f"{options['file']} is not a valid {options['api']} response: {exc.message}", returncode=2
                ) from None
            output = (
                exc.result.summary()
                if exc.result is not None
                else {
                    "usage": dict(EMPTY_USAGE),
                    "finish_reason_raw": None,
                    "finish_reason": None,
                    "tool_calls": [],
                    "content": [],
                    "model": None,
                    "response_id": None,
                }
            )
            output["error"] = {
                "error_type": exc.error_type,
                "message": exc.message,
                "status_code": exc.status_code,
                "retryable": exc.retryable,
                "retry_after": exc.retry_after,
            }
        self.stdout.write(json.dumps(output, ensure_ascii=False, indent=options["indent"]))

    def _read(self, name: str) -> bytes:
        if name == "-":
            return sys.stdin.buffer.read()
        path = Path(name)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {name}: {exc.strerror or exc}", returncode=2) from None
