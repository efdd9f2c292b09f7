"""The console: steps list (shared FilterSet, no full counts), step page, run waterfall, errors page, dashboard."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from console import changelist
from console.admin import StepConsoleAdmin
from console.changelist import StepPaginator
from console.dashboard import period_get
from steps.models import Step, StepStatus
from steps.reports import errors_report, usage_report
from steps.selectors import run_usage
from tests.browser.data import build_admin_data
from tests.factories import OrganizationFactory, StepFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/steps/step/"


@pytest.fixture
def data(organization):
    return build_admin_data(organization=organization)


def _rows(html: str) -> int:
    return len(re.findall(r'<tr[^>]*>\s*<td class="action-checkbox">', html))


def test_index_links_to_the_dashboard_and_the_errors_page(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/dashboard/"' in html and 'href="/admin/errors/"' in html


def test_provider_trace_pages_moved_to_steps_and_their_old_urls_redirect(admin_client, data):
    from steps.models import ProviderTrace

    trace = ProviderTrace.objects.filter(step__organization=data.organization).first()
    old = admin_client.get(f"/admin/traces/providertrace/{trace.pk}/change/?_changelist_filters=x%3D1")
    assert old.status_code == 301
    assert old["Location"] == f"/admin/steps/providertrace/{trace.pk}/change/?_changelist_filters=x%3D1"
    assert admin_client.get(old["Location"]).status_code == 200
    assert admin_client.get("/admin/traces/providertrace/")["Location"] == "/admin/steps/providertrace/"


def test_admin_pages_need_a_staff_login(client):
    for url in ("/admin/dashboard/", "/admin/errors/", CHANGELIST):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_steps_list_shows_the_columns_and_filters_by_error_type_with_the_api_parameter(admin_client, data):
    html = admin_client.get(CHANGELIST, {"organization": data.organization.pk}).content.decode().lower()
    for column in (
        "time",
        "agent",
        "model handle",
        "status",
        "stop reason",
        "tokens",
        "cost",
        "ttft",
        "latency",
        "request id",
    ):
        assert column in html
    assert "claude-sonnet-4-6" in html and "cached 256" in html

    response = admin_client.get(CHANGELIST, {"organization": data.organization.pk, "error_type": "rate_limit"})
    html = response.content.decode()
    expected = Step.objects.filter(organization=data.organization, error_type="rate_limit").count()
    assert expected >= 1 and _rows(html) == expected
    assert "rate_limit" in html and "failed" in html


def test_steps_list_filters_by_status_and_searches_request_and_run_ids(admin_client, data):
    org = data.organization.pk
    html = admin_client.get(CHANGELIST, {"organization": org, "status": "failed"}).content.decode()
    assert _rows(html) == Step.objects.filter(organization=data.organization, status=StepStatus.FAILED).count()
    html = admin_client.get(CHANGELIST, {"q": "req-admin-chart"}).content.decode()
    assert _rows(html) == 2
    html = admin_client.get(CHANGELIST, {"q": data.chart_run.pk}).content.decode()
    assert _rows(html) == 2
    html = admin_client.get(CHANGELIST, {"run_id": data.chart_run.pk}).content.decode()
    assert _rows(html) == 2 and "run_id = " in html


def test_steps_list_rejects_an_invalid_filter_value_like_the_api(admin_client, data):
    response = admin_client.get(CHANGELIST, {"status": "exploded"})
    assert response.status_code == 302 and "e=1" in response["Location"]


def test_steps_list_never_counts_more_than_the_cap(admin_client, organization, monkeypatch):
    monkeypatch.setattr(changelist, "COUNT_CAP", 5)
    StepFactory.create_batch(12, agent__organization=organization, status="success")
    with CaptureQueriesContext(connection) as queries:
        html = admin_client.get(CHANGELIST, {"organization": organization.pk, "status": "success"}).content.decode()
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT 6" in sql for sql in counts), counts
    # The 12 steps are never counted: the page gives an estimate above the cap, marked as one.
    shown = re.search(r'<span id="result-count">(about )?(\d+) steps</span>', html)
    assert shown and shown.group(1) == "about " and int(shown.group(2)) > 5, shown and shown.group(0)


def test_steps_list_reads_only_the_shown_columns(admin_client, data):
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(CHANGELIST, {"organization": data.organization.pk})
    listing = [q["sql"] for q in queries.captured_queries if 'FROM "steps_step"' in q["sql"] and "ORDER BY" in q["sql"]]
    assert listing
    for column in ("error_data", "metadata", "prompt_tokens_details", "model_endpoint"):
        assert f'"steps_step"."{column}"' not in listing[-1]


def test_pages_across_organizations_match_a_plain_newest_first_ordering():
    orgs = [OrganizationFactory() for _ in range(3)]
    now = timezone.now()
    for index in range(45):
        StepFactory(agent__organization=orgs[index % 3], created_at=now - timedelta(seconds=index * 7 % 40))
    queryset = Step.objects.order_by("-created_at", "-id")
    expected = list(queryset.values_list("pk", flat=True))
    paginator = StepPaginator(queryset, 10, merge_organizations=[o.pk for o in orgs])
    seen = []
    for number in range(1, 6):
        seen.extend(step.pk for step in paginator.page(number).object_list)
    assert seen == expected


def test_step_page_renders_the_conversation_with_the_image_tool_return_and_the_provider_trace(admin_client, data):
    first = Step.objects.get(run=data.chart_run, step_number=1)
    html = admin_client.get(reverse("admin:steps_step_change", args=[first.pk])).content.decode()
    assert 'class="sl-image" src="data:image/png;base64,' in html
    assert "render_chart" in html and "&quot;values&quot;: [\n" in html  # pretty JSON arguments
    assert "<details><summary>Reasoning (click to show)</summary>" in html
    assert 'id="provider-trace"' in html and 'class="sl-code provider-response"' in html
    assert 'class="segment segment-wait"' in html  # the phases timeline
    assert "Steps of the same run" in html and Step.objects.get(run=data.chart_run, step_number=2).pk in html


def test_failed_step_page_shows_the_error_and_the_provider_error_response(admin_client, data, settings):
    settings.STEPLENS_TRACE_URL_TEMPLATE = "http://jaeger.local/trace/{trace_id}"
    failed = Step.objects.filter(run=data.runs["context-overflow"], status=StepStatus.FAILED).first()
    html = admin_client.get(reverse("admin:steps_step_change", args=[failed.pk])).content.decode()
    assert 'id="error"' in html and failed.error_type in html
    assert failed.error_data["message"][:30] in html.replace("&#x27;", "'").replace("&quot;", '"')
    assert "context_length_exceeded" in html  # the provider's error body
    if failed.trace_id:
        assert f"http://jaeger.local/trace/{failed.trace_id}" in html


def test_feedback_and_tags_from_the_step_page_go_through_the_service(admin_client, data):
    step = Step.objects.filter(run=data.chart_run).first()
    url = reverse("admin:steps_step_feedback", args=[step.pk])
    admin_client.post(url, {"feedback": "negative"})
    admin_client.post(url, {"add_tags": "needs-review, charts-v2"})
    admin_client.post(url, {"remove_tag": "charts"})
    step.refresh_from_db()
    assert step.feedback == "negative" and step.tags == ["charts-v2", "needs-review"]
    admin_client.post(url, {"feedback": "clear"})
    step.refresh_from_db()
    assert step.feedback is None


def test_run_page_draws_a_waterfall_of_steps_llm_calls_and_tools_with_totals(admin_client, data):
    html = admin_client.get(reverse("admin:agents_run_change", args=[data.chart_run.pk])).content.decode()
    assert html.count('class="segment segment-step"') == 2
    assert html.count('class="segment segment-llm"') == 2
    assert html.count('class="segment segment-tool"') == 1 and ">render_chart<" in html
    assert 'class="marker"' in html  # first-token ticks
    totals = run_usage(organization=data.organization, run_id=data.chart_run.pk)["totals"]
    assert totals["steps"] == 2
    assert f"{totals['prompt_tokens']:,} → {totals['completion_tokens']:,}" in html


def test_errors_page_groups_errors_like_the_errors_report_with_links(admin_client, data):
    period = period_get(key="24h")
    html = admin_client.get("/admin/errors/", {"organization": data.organization.pk, "period": "24h"}).content.decode()
    report = errors_report(organization=data.organization, filters=period.params())
    assert report.rows
    for row in report.rows:
        assert f'data-error-type="{row["error_type"]}" data-count="{row["count"]}"' in html
    assert f"error_type={report.rows[0]['error_type']}" in html  # link to the filtered steps list
    assert 'class="example-link"' in html and 'class="chart sparkline"' in html


def test_dashboard_numbers_match_the_usage_report(admin_client, data):
    html = admin_client.get(
        "/admin/dashboard/", {"organization": data.organization.pk, "period": "7d"}
    ).content.decode()
    period = period_get(key="7d")
    overall = usage_report(organization=data.organization, filters=period.params()).rows[0]
    by_day_model = usage_report(
        organization=data.organization, filters=period.params(), group_by=["day", "model_handle"]
    )
    cost_values = re.findall(r'<rect class="bar"[^>]*data-series="([^"]+)"[^>]*data-value="([^"]+)"', html)
    assert cost_values
    charted_cost = sum(Decimal(v) for s, v in cost_values if "." in v and Decimal(v) < 1)
    assert overall["steps"] == Step.objects.filter(organization=data.organization).exclude(status="pending").count()
    assert f'<span class="v">{overall["steps"]:,}</span>' in html
    total_cost = sum(Decimal(r["cost_usd"]) for r in by_day_model.rows)
    assert Decimal(overall["cost_usd"]) == total_cost
    assert charted_cost > 0
    assert "Top agents by cost" in html and "chart-artist" in html


def test_dashboard_and_errors_pages_render_for_an_organization_without_steps(admin_client, organization):
    for url in ("/admin/dashboard/", "/admin/errors/"):
        response = admin_client.get(url, {"organization": organization.pk, "period": "30d"})
        assert response.status_code == 200
        assert "No data in this period" in response.content.decode()


def test_step_page_escapes_what_models_and_tools_wrote(admin_client, organization):
    from tests.factories import MessageFactory

    step = StepFactory(agent__organization=organization, model_handle="<script>alert(1)</script>")
    MessageFactory(step=step, content=[{"type": "text", "text": "<img src=x onerror=alert(1)>"}])
    html = admin_client.get(reverse("admin:steps_step_change", args=[step.pk])).content.decode()
    assert "<script>alert(1)</script>" not in html and "<img src=x onerror" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_an_estimated_list_offers_nearby_pages_and_refuses_to_page_too_far_back(
    admin_client, organization, monkeypatch
):
    monkeypatch.setattr(changelist, "COUNT_CAP", 5)
    monkeypatch.setattr(changelist, "MAX_OFFSET", 4)
    monkeypatch.setattr(StepConsoleAdmin, "list_per_page", 2)
    StepFactory.create_batch(12, agent__organization=organization)
    html = admin_client.get(CHANGELIST, {"organization": organization.pk, "p": "2"}).content.decode()
    assert "about " in html and _rows(html) == 2
    assert "p=1" in html and "p=3" not in html  # page links stop at the offset limit
    html = admin_client.get(CHANGELIST, {"organization": organization.pk, "p": "3"}).content.decode()
    assert "too far back" in html and _rows(html) == 0
