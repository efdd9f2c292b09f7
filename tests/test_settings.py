"""Production settings refuse to start without the values that must never have defaults."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings.production", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"DATABASE_URL": "postgres://u@127.0.0.1/x"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "x" * 50}, "DATABASE_URL"),
    ],
)
def test_production_refuses_to_start_without(env, missing):
    result = _check(env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_production_starts_with_secret_key_and_database_url():
    result = _check({"DJANGO_SECRET_KEY": "x" * 50, "DATABASE_URL": "postgres://u@127.0.0.1/x"})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("value", "expected"), [(None, "False False"), ("true", "True True")])
def test_database_disable_server_side_cursors_reaches_the_primary_and_the_replica(value, expected):
    """Behind PgBouncer in transaction mode: no server-side cursors and nothing prepared (steps.selectors), on both."""
    env = {"DJANGO_SECRET_KEY": "x" * 50, "DATABASE_URL": "postgres://u@127.0.0.1/x",
           "DATABASE_REPLICA_URL": "postgres://u@127.0.0.2/x"}  # fmt: skip
    if value is not None:
        env["DATABASE_DISABLE_SERVER_SIDE_CURSORS"] = value
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(*(s.DATABASES[alias]['DISABLE_SERVER_SIDE_CURSORS'] for alias in ('default', 'replica')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings.production", **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == expected
