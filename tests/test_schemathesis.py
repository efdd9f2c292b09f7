"""schemathesis against a live server: every operation of /v1/schema, all checks, 0 failures.

The server is gunicorn (gthread, as in production) on a free loopback port, with runs executed in process
(eager Celery) and no provider keys: outgoing HTTP goes to a closed local proxy, so a fuzzed agent fails fast
instead of reaching a provider. Its database is the test database (PostgreSQL in CI) or, on SQLite, a file
migrated for it. The run is reproducible (fixed seed, no example database) and bounded (MAX_EXAMPLES per
operation, one worker); the numbers are printed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from accounts.services import api_key_create
from tests.factories import OrganizationFactory
from tests.faults.otlp_support import REPO, free_port, production_env, start_gunicorn, stop_services

SEED = 20261128
# schemathesis's own expectation for valid data (2xx, 3xx, 401, 403, 404, 409, 429, 5xx), plus the 400 of a rule
# across fields; 5xx is still caught by the not_a_server_error check.
_ACCEPTED_OR_CROSS_FIELD = '["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]'

MAX_EXAMPLES = int(os.environ.get("STEPLENS_SCHEMATHESIS_EXAMPLES", "25"))
# The error-feedback heuristic of the fuzzing phase reads field errors at the top of a 4xx body (DRF's own
# shape); Steplens nests them under "fields", which it would mistake for a request property named "fields".
CONFIG = f"""
seed = {SEED}
hooks = "tests.schemathesis_hooks"

[generation]
max-examples = {MAX_EXAMPLES}
allow-x00 = false
database = "none"

[phases.fuzzing]
error-feedback = {{ enabled = false }}

# A request line longer than gunicorn's limit (8190 bytes, its largest; config/gunicorn.py) is refused by gunicorn
# with a 414 before Django runs: a fuzzed query of thousands of multi-byte characters is invalid data rejected.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "5xx"]

# Rules across fields that OpenAPI cannot state, whose breach is a 400 naming the field: a deletion needs at least
# one step filter, and a monitor's recovery threshold lies on the recovering side of its threshold. Every other
# check still applies to these operations; a 400 to a schema-valid request anywhere else still fails the run.
[[operations]]
include-path = "/v1/steps"
include-method = "DELETE"
checks.positive_data_acceptance.expected-statuses = {_ACCEPTED_OR_CROSS_FIELD}

[[operations]]
include-path-regex = "^/v1/monitors(/{{monitor_id}})?$"
include-method = ["POST", "PATCH", "PUT"]
checks.positive_data_acceptance.expected-statuses = {_ACCEPTED_OR_CROSS_FIELD}
"""
_PREPARE = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from accounts.services import api_key_create
from tests.factories import OrganizationFactory
print(api_key_create(organization=OrganizationFactory(), name="schemathesis")[1])
"""


def _database_url(tmp_path: Path) -> tuple[str, str | None]:
    """(DATABASE_URL for the server, an API key if the database already has one)."""
    db = settings.DATABASES["default"]
    if connection.vendor == "postgresql":
        url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        return url, api_key_create(organization=OrganizationFactory(), name="schemathesis")[1]
    return f"sqlite:///{tmp_path / 'schemathesis.sqlite3'}", None


def _environment(database_url: str) -> dict[str, str]:
    env = production_env(
        database_url,
        CELERY_BROKER_URL="memory://",
        CELERY_TASK_ALWAYS_EAGER="true",
        STEPLENS_LLM_RETRY_BASE_SECONDS="0",
        STEPLENS_LLM_RETRY_MAX_SECONDS="0",
        STEPLENS_SLOW_FIRST_TOKEN_SECONDS="0",
        HTTP_PROXY=f"http://127.0.0.1:{free_port()}",
        HTTPS_PROXY=f"http://127.0.0.1:{free_port()}",
        NO_PROXY="127.0.0.1,localhost",
    )
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    if database_url.startswith("sqlite"):
        # The base settings give SQLite what concurrent threads need (WAL, a busy timeout); production's own
        # DATABASES, meant for PostgreSQL, does not.
        env["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    return env


@pytest.mark.faults
@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_no_failure_with_every_check(tmp_path: Path) -> None:
    database_url, key = _database_url(tmp_path)
    env = _environment(database_url)
    if key is None:
        prepared = subprocess.run(
            [sys.executable, "-c", _PREPARE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert prepared.returncode == 0, prepared.stderr[-3000:]
        key = prepared.stdout.strip().splitlines()[-1]
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    server, port = start_gunicorn(env, tmp_path, workers=1, threads=4)
    try:
        result = subprocess.run(
            [
                str(REPO / ".venv/bin/schemathesis"), "--config-file", str(tmp_path / "schemathesis.toml"),
                "--no-color", "run", f"http://127.0.0.1:{port}/v1/schema", "--checks", "all", "--workers", "1",
                "--header", f"Authorization: Bearer {key}", "--request-timeout", "60",
                "--report", "junit", "--report-dir", str(tmp_path / "report"),
            ],
            env={**env, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
    finally:
        stop_services([server])
    output = result.stdout + result.stderr
    cases = re.search(r"(\d+) generated", output)
    print(output[-6000:])
    assert cases and int(cases.group(1)) > 25 * MAX_EXAMPLES // 2, output[-3000:]
    assert result.returncode == 0, output[-12000:] + "\n--- server log ---\n" + server.tail()
