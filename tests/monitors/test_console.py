"""The console's monitors pages: the list, one monitor's history and test button, the form that carries the
dashboard's and errors page's filters, and organization scoping; plus a real Chromium drawing the list."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from accounts.services import membership_set
from monitors.models import Delivery, Monitor
from monitors.services import monitor_create, monitors_evaluate
from tests.browser.conftest import browser, screenshot  # noqa: F401 (the session's Chromium fixture)
from tests.factories import AgentFactory, OrganizationFactory, StepFactory


def _alerting_monitor(organization, **data) -> Monitor:
    agent = AgentFactory(organization=organization, name="support")
    monitor, _ = monitor_create(
        organization=organization,
        data={"name": "support errors", "filters": {"agent_id": agent.pk}, "metric": "error_rate", "operator": ">",
              "threshold": 0.2, "window_seconds": 600, "min_steps": 5, **data},
    )  # fmt: skip
    now = timezone.now()
    for minutes, (ok, failed) in enumerate([(5, 0), (3, 1), (2, 3)]):
        at = now - timedelta(minutes=6 - 2 * minutes)
        for status, count in (("success", ok), ("failed", failed)):
            StepFactory.create_batch(count, agent=agent, status=status, created_at=at,
                                     error_type="overloaded" if status == "failed" else None)  # fmt: skip
        monitors_evaluate(now=at + timedelta(seconds=1))
    monitor.refresh_from_db()
    return monitor


@pytest.fixture
def staff(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


@pytest.mark.django_db
def test_the_list_shows_state_value_and_a_sparkline(staff, organization):
    monitor = _alerting_monitor(organization)
    assert monitor.state == "alerting"
    page = staff.get("/admin/monitors/", {"organization": organization.pk})
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-state="alerting"' in html and "support errors" in html
    assert f"{monitor.value * 100:.1f}%" in html  # the current value as a percentage
    assert 'class="chart sparkline"' in html and html.count('class="bar"') == 3


@pytest.mark.django_db
def test_one_monitor_shows_its_alert_history_and_the_test_button_sends(staff, organization, settings):
    settings.STEPLENS_NOTIFY_ALLOW_PRIVATE = True
    monitor = _alerting_monitor(organization, targets=[{"kind": "webhook", "url": "http://127.0.0.1:9/x"}])
    page = staff.get(f"/admin/monitors/{monitor.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="alert-event"') == 2  # no_data -> ok, ok -> alerting
    assert "/admin/steps/step/?organization=" in html and "/v1/steps?" in html
    assert staff.get(f"/admin/monitors/{monitor.pk}/test/").status_code == 405
    response = staff.post(f"/admin/monitors/{monitor.pk}/test/")
    assert response.status_code == 302
    delivery = Delivery.objects.get(event=None)
    assert (delivery.destination, delivery.status) == ("http://127.0.0.1:9/x", "pending")  # queued for after commit
    assert 'class="delivery"' in staff.get(f"/admin/monitors/{monitor.pk}/").content.decode()


@pytest.mark.django_db
def test_create_a_monitor_from_the_errors_view_carries_its_filters(staff, organization):
    agent = AgentFactory(organization=organization)
    StepFactory(agent=agent, status="failed", error_type="overloaded")
    errors = staff.get("/admin/errors/", {"organization": organization.pk, "agent_id": agent.pk, "provider": "openai"})
    html = errors.content.decode()
    assert 'id="create-monitor"' in html
    link = html.split('id="create-monitor" href="')[1].split('"')[0].replace("&amp;", "&")
    assert f"agent_id={agent.pk}" in link and "provider=openai" in link
    form = staff.get(link)
    assert form.status_code == 200 and f"agent_id={agent.pk}" in form.content.decode()
    form = {"organization": organization.pk, "filter:agent_id": agent.pk, "filter:provider": "openai",
            "name": "from errors", "metric": "error_rate", "operator": ">", "threshold": "0.1",
            "window_seconds": "1800", "min_steps": "3", "group_by": "", "webhook_url": "",
            "email": "oncall@example.com"}  # fmt: skip
    posted = staff.post("/admin/monitors/new/", form)
    assert posted.status_code == 302
    monitor = Monitor.objects.get(name="from errors")
    assert monitor.filters == {"agent_id": agent.pk, "provider": "openai"}
    assert (monitor.window_seconds, monitor.min_steps, monitor.targets) == (
        1800, 3, [{"kind": "email", "email": "oncall@example.com"}]
    )  # fmt: skip
    assert "shown only now" in staff.get(posted["Location"]).content.decode()


@pytest.mark.django_db
def test_the_dashboard_offers_a_monitor_on_its_agent_and_model(staff, organization):
    agent = AgentFactory(organization=organization)
    StepFactory(agent=agent, status="success")
    page = staff.get("/admin/dashboard/", {"organization": organization.pk, "agent_id": agent.pk,
                                           "model_handle": "openai/gpt-4o-mini"})  # fmt: skip
    link = page.content.decode().split('id="create-monitor" href="')[1].split('"')[0].replace("&amp;", "&")
    assert f"agent_id={agent.pk}" in link and "model_handle=openai/gpt-4o-mini" in link


@pytest.mark.django_db
def test_a_bad_form_is_a_400_naming_the_field_and_creates_nothing(staff, organization):
    response = staff.post("/admin/monitors/new/", {"organization": organization.pk, "name": "x", "metric": "steps",
                                                    "operator": ">", "threshold": "many", "window_seconds": "600",
                                                    "min_steps": "1", "webhook_url": "http://10.0.0.1/x"})  # fmt: skip
    assert response.status_code == 400 and "threshold" in response.content.decode()
    response = staff.post("/admin/monitors/new/", {"organization": organization.pk, "name": "x", "metric": "steps",
                                                    "operator": ">", "threshold": "1", "window_seconds": "600",
                                                    "min_steps": "1", "webhook_url": "http://10.0.0.1/x"})  # fmt: skip
    assert response.status_code == 400 and "targets.0.url" in response.content.decode()
    assert not Monitor.objects.exists()


@pytest.mark.django_db
def test_a_member_sees_only_their_organizations_monitors(organization, django_user_model):
    theirs = _alerting_monitor(OrganizationFactory())
    person = django_user_model.objects.create_user("member", "m@example.com", "pw")
    membership_set(organization=organization, user=person, role="viewer")
    client = Client()
    client.force_login(person)
    assert client.get(f"/admin/monitors/{theirs.pk}/").status_code == 404
    assert client.get("/admin/monitors/", {"organization": theirs.organization_id}).status_code == 404
    assert client.get("/admin/monitors/").status_code == 200
    assert client.get("/admin/monitors/new/").status_code == 403  # a viewer cannot create


@pytest.mark.django_db(transaction=True)
def test_the_monitors_page_in_a_browser(browser, live_server, organization, django_user_model):  # noqa: F811
    alerting = _alerting_monitor(organization)
    latency = {"name": "gpt-4o p95 latency", "metric": "latency_ms_p95", "operator": ">", "threshold": 8000,
               "window_seconds": 3600}  # fmt: skip
    monitor_create(organization=organization, data=latency)
    user = django_user_model.objects.create_superuser("browser-root", "b@example.com", "pw")
    client = Client()
    client.force_login(user)
    browser.set_cookie(name=settings.SESSION_COOKIE_NAME, value=client.cookies[settings.SESSION_COOKIE_NAME].value,
                       url=live_server.url)  # fmt: skip
    browser.goto(f"{live_server.url}/admin/monitors/?organization={organization.pk}")
    seen = browser.evaluate(
        """(() => ({
          rows: [...document.querySelectorAll('tr.monitor-row')].map(tr => ({
            state: tr.dataset.state, value: tr.querySelector('.monitor-value').innerText,
            bars: tr.querySelectorAll('svg.sparkline rect.bar').length})),
          sparkHeight: document.querySelector('svg.sparkline').getBoundingClientRect().height,
        }))()"""
    )
    screenshot(browser, "monitors")
    assert sorted((r["state"], r["bars"]) for r in seen["rows"]) == [("alerting", 3), ("no_data", 0)]
    assert seen["sparkHeight"] > 10
    browser.goto(f"{live_server.url}/admin/monitors/{alerting.pk}/")
    history = browser.evaluate("[...document.querySelectorAll('tr.alert-event')].map(tr => tr.dataset.state)")
    screenshot(browser, "monitor-detail")
    assert history == ["alerting", "ok"]
