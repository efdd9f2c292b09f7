"""Static files come from the web process (WhiteNoise), the API docs need no CDN, the demo port is a choice.

The same checks run against real gunicorn processes in test_readme_production.py; these run everywhere, fast.
"""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

REPO = Path(django_settings.BASE_DIR)
ASSET_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def test_api_docs_load_swagger_ui_only_from_this_server(client):
    page = client.get("/v1/docs")

    assert page.status_code == 200
    assets = ASSET_REFERENCE.findall(page.content.decode())
    assert {Path(url).name for url in assets} >= {"swagger-ui.css", "swagger-ui-bundle.js"}
    for url in assets:
        assert url.startswith("/static/"), f"/v1/docs loads {url} from elsewhere"
        answer = client.get(url)
        assert answer.status_code == 200, url
        body = b"".join(answer.streaming_content) if answer.streaming else answer.content
        assert len(body) > 100, url


def test_api_docs_page_has_no_address_outside_this_server(client):
    html = client.get("/v1/docs").content.decode()

    assert not re.findall(r"https?://|//cdn", html)


def test_admin_stylesheet_is_served_by_the_web_process(client):
    answer = client.get("/static/admin/css/base.css")

    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/css")


def _deploy_warnings(**env: str) -> set[str]:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": "deploy-check-" + "k" * 50,
        "DATABASE_URL": "postgres://steplens@127.0.0.1:1/steplens",  # never connected to by `check`
        **env,
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return set(re.findall(r"\((security\.[A-Z]\d+)\)", result.stdout + result.stderr))


def test_production_settings_leave_only_the_documented_hsts_warning():
    # HSTS stays opt-in (DJANGO_SECURE_HSTS_SECONDS): pinning a host to HTTPS by default could lock users out.
    assert _deploy_warnings() == {"security.W004"}


def test_production_settings_pass_the_deploy_check_once_hsts_is_set():
    hsts = {
        "DJANGO_SECURE_HSTS_SECONDS": "31536000",
        "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "DJANGO_SECURE_HSTS_PRELOAD": "true",
    }

    assert _deploy_warnings(**hsts) == set()


def test_make_demo_serves_on_the_host_and_port_given():
    result = subprocess.run(
        ["make", "-n", "demo", "HOST=0.0.0.0", "PORT=8001"], cwd=REPO, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert "manage.py runserver 0.0.0.0:8001" in result.stdout
    assert "demo_setup --base-url http://0.0.0.0:8001" in result.stdout


@pytest.mark.django_db
def test_demo_setup_prints_the_address_the_demo_is_served_on(tmp_path):
    out = io.StringIO()

    call_command("demo_setup", "--credentials-file", str(tmp_path / "creds"), "--base-url", "http://h:8001", stdout=out)

    assert "admin:    http://h:8001/admin/" in out.getvalue()
    assert "http://h:8001/v1/steps" in out.getvalue()
