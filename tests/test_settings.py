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
