"""`manage.py check --deploy` is clean with the production settings as the README describes them."""

import os
import subprocess

import pytest

from tests.production.test_readme_production import REPO, readme_environment, readme_production_block


def _check_deploy(**overrides: str) -> subprocess.CompletedProcess:
    exports = [line for line in readme_production_block() if line.startswith("export ")]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_", "STEPLENS_", "DATABASE_"))}
    env = {**readme_environment(exports, base=base), **overrides}
    return subprocess.run(
        [str(REPO / ".venv/bin/python"), "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="readme-as-written"),
        # Behind TLS with HSTS opted in, as the README describes: redirect, secure cookies, HSTS.
        pytest.param(
            {
                "DJANGO_HTTPS": "true",
                "DJANGO_SECURE_HSTS_SECONDS": "31536000",
                "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
                "DJANGO_SECURE_HSTS_PRELOAD": "true",
            },
            id="https",
        ),
    ],
)
def test_check_deploy_passes_with_the_readme_production_settings(overrides):
    result = _check_deploy(**overrides)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_check_deploy_still_warns_when_https_is_on_without_hsts():
    """Only DJANGO_HTTPS=false silences the HTTPS checks: an HTTPS deployment is still told about HSTS."""
    result = _check_deploy(DJANGO_HTTPS="true")
    assert result.returncode != 0
    assert "security.W004" in result.stdout + result.stderr
