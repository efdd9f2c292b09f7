"""The system page in a real (headless) Chromium: the banner, the lag and the late task a person sees."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from ops.models import PeriodicTaskRun
from tests.browser.conftest import browser, screenshot  # noqa: F401 (the session's Chromium)
from traces.models import IngestBatch


@pytest.fixture
def system_page(browser, live_server, transactional_db, organization, django_user_model):  # noqa: F811
    for minutes in (25, 3):
        batch = IngestBatch.objects.create(
            organization=organization, content_type="application/json", body=b"{}", body_bytes=4096, span_count=3
        )
        IngestBatch.objects.filter(pk=batch.pk).update(received_at=timezone.now() - timedelta(minutes=minutes))
    PeriodicTaskRun.objects.create(
        task="steps.fail_stale_steps", last_finished_at=timezone.now() - timedelta(minutes=30), last_outcome="success"
    )
    PeriodicTaskRun.objects.create(
        task="traces.sweep_ingest_batches", last_finished_at=timezone.now(), last_outcome="success", last_rows=4
    )
    user = django_user_model.objects.create_superuser("system-admin", "admin@example.com", "pw-system-admin")
    client = Client()
    client.force_login(user)
    browser.set_cookie(
        name=settings.SESSION_COOKIE_NAME, value=client.cookies[settings.SESSION_COOKIE_NAME].value, url=live_server.url
    )
    browser.base_url = live_server.url
    return browser


def test_system_page_shows_the_lag_and_a_late_task_under_a_warning_banner(system_page):
    system_page.goto(system_page.base_url + "/admin/system/")
    seen = system_page.evaluate(
        """(() => ({
          title: document.title,
          banner: document.querySelector('#system-banner')?.innerText || '',
          bannerVisible: document.querySelector('#system-banner')?.getBoundingClientRect().height || 0,
          batches: document.querySelector('[data-kpi=backlog_batches] .v').innerText,
          lag: document.querySelector('[data-kpi=mapping_lag] .v').innerText,
          late: [...document.querySelectorAll('#periodic tr[data-late="1"]')].map(tr => tr.dataset.task),
          onTime: [...document.querySelectorAll('#periodic tr[data-late="0"]')].map(tr => tr.dataset.task),
          navSystem: !!document.querySelector('.sl-nav a[href$="/admin/system/"]'),
        }))()"""
    )
    screenshot(system_page, "system-page")
    assert "System" in seen["title"]
    assert seen["bannerVisible"] > 20
    assert "minutes behind" in seen["banner"] and "steps.fail_stale_steps" in seen["banner"]
    assert seen["batches"] == "2 batches"
    assert 25 * 60 <= int(seen["lag"].split()[0]) < 27 * 60
    assert seen["late"] == ["steps.fail_stale_steps"]
    assert "traces.sweep_ingest_batches" in seen["onTime"]
    assert seen["navSystem"]
    # Every console page carries the banner.
    system_page.goto(system_page.base_url + "/admin/steps/step/")
    assert "minutes behind" in system_page.evaluate("document.querySelector('#system-banner')?.innerText || ''")
