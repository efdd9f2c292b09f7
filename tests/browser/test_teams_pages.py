"""What a member sees in a real (headless) Chromium: a viewer of organization A sees only A (steps, dashboard,
switcher), no feedback form, and B's step is a 404; an owner creates a key (shown once), invites someone, and
reads the audit log. Screenshots go to test-artifacts/teams-*.png."""

import pytest
from django.conf import settings
from django.test import Client

from accounts.models import ApiKey
from steps.models import Step
from tests.browser.conftest import screenshot
from tests.console.teams import build_teams


@pytest.fixture
def teams(transactional_db):
    return build_teams()


def _sign_in(browser, live_server, user) -> None:
    client = Client()
    client.force_login(user)
    browser.set_cookie(
        name=settings.SESSION_COOKIE_NAME, value=client.cookies[settings.SESSION_COOKIE_NAME].value, url=live_server.url
    )
    browser.base_url = live_server.url


def _go(browser, path: str) -> str:
    browser.goto(browser.base_url + path)
    title = browser.evaluate("document.title")
    assert "Log in" not in title, f"{path} asked for a login"
    return title


def test_a_viewer_sees_only_their_organization(browser, live_server, teams):
    _sign_in(browser, live_server, teams.users["viewer"])
    _go(browser, "/admin/steps/step/")
    seen = browser.evaluate(
        """(() => ({
          rows: document.querySelectorAll('#result_list tbody tr').length,
          text: document.body.innerText,
          switcher: [...document.querySelectorAll('#sl-org option')].map(o => o.textContent),
          actions: document.querySelectorAll('select[name=action] option[value=mark_positive]').length,
        }))()"""
    )
    screenshot(browser, "teams-viewer-steps")
    assert seen["rows"] == 1 and seen["switcher"] == ["alpha"] and seen["actions"] == 0
    assert "bravo" not in seen["text"]

    _go(browser, "/admin/dashboard/?period=7d")
    kpi = browser.evaluate("document.querySelector('[data-kpi=steps] .v').textContent")
    screenshot(browser, "teams-viewer-dashboard")
    assert kpi == "1"

    _go(browser, f"/admin/steps/step/{teams.a[Step].pk}/change/")
    has_form = browser.evaluate("document.querySelectorAll('form [name=feedback]').length")
    screenshot(browser, "teams-viewer-step")
    assert has_form == 0

    title = _go(browser, f"/admin/steps/step/{teams.b[Step].pk}/change/")
    screenshot(browser, "teams-viewer-other-organization-step")
    assert title.startswith("Not found") and teams.b[Step].pk not in browser.evaluate("document.body.innerText")

    _go(browser, "/admin/")
    index = browser.evaluate("document.body.innerText")
    screenshot(browser, "teams-viewer-index")
    assert "API keys" not in index and "Audit events" not in index


def test_an_owner_creates_a_key_invites_someone_and_reads_the_audit_log(browser, live_server, teams):
    _sign_in(browser, live_server, teams.users["owner"])
    _go(browser, "/admin/accounts/apikey/add/")
    screenshot(browser, "teams-owner-new-key-form")
    browser.events.clear()
    browser.evaluate(
        """(() => {
          document.querySelector('#id_name').value = 'ci-ingest';
          document.querySelector('#id_scope').value = 'ingest';
          document.querySelector('#apikey_form').submit();
        })()"""
    )
    browser.wait_for_event("Page.loadEventFired")
    raw_key = browser.evaluate("document.querySelector('#raw-key').textContent.trim()")
    screenshot(browser, "teams-owner-key-created")
    assert raw_key.startswith("sl-") and ApiKey.objects.get(name="ci-ingest").scope == "ingest"

    _go(browser, "/admin/accounts/apikey/")
    listing = browser.evaluate("document.querySelector('#result_list').innerText")
    screenshot(browser, "teams-owner-keys")
    assert "ci-ingest" in listing and raw_key not in listing and "bravo" not in listing

    _go(browser, "/admin/accounts/invitation/add/")
    browser.events.clear()
    browser.evaluate(
        """(() => {
          document.querySelector('#id_email').value = 'new@example.com';
          document.querySelector('#id_role').value = 'member';
          document.querySelector('#invitation_form').submit();
        })()"""
    )
    browser.wait_for_event("Page.loadEventFired")
    link = browser.evaluate("document.querySelector('#invite-link').textContent.trim()")
    screenshot(browser, "teams-owner-invitation")
    assert "/admin/invitation/inv-" in link

    _go(browser, "/admin/accounts/membership/")
    screenshot(browser, "teams-owner-members")
    _go(browser, "/admin/accounts/auditevent/")
    audit = browser.evaluate("document.querySelector('#result_list').innerText")
    screenshot(browser, "teams-owner-audit-log")
    assert "api_key.create" in audit and "invitation.create" in audit
