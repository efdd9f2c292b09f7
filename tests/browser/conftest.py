"""Browser tests: headless Chromium (Debian's `chromium`) over the DevTools protocol against a live test server.

In CI (CI=true) a missing chromium fails these tests; elsewhere they skip. Screenshots go to test-artifacts/.
"""

from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from tests.browser.cdp import Browser, chromium_path
from tests.browser.data import build_admin_data
from tests.conftest import require_service

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"


@pytest.fixture(scope="session")
def browser():
    binary = chromium_path()
    if binary is None:
        require_service("chromium", "install Debian's chromium (`make browser-deps`) for the browser tests")
    instance = Browser(binary)
    yield instance
    instance.close()


@pytest.fixture
def admin_data(transactional_db, organization):
    return build_admin_data(organization=organization, seeded=600)


@pytest.fixture
def page(browser, live_server, admin_data, django_user_model):
    """The browser logged in as a superuser of the live server (a real session cookie)."""
    user = django_user_model.objects.create_superuser("browser-admin", "admin@example.com", "pw-browser-admin")
    client = Client()
    client.force_login(user)
    browser.set_cookie(
        name=settings.SESSION_COOKIE_NAME, value=client.cookies[settings.SESSION_COOKIE_NAME].value, url=live_server.url
    )
    browser.base_url = live_server.url
    return browser


def screenshot(browser: Browser, name: str) -> Path:
    return browser.screenshot(ARTIFACTS / f"{name}.png")
