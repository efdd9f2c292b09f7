"""What a person sees in the admin, in a real (headless) Chromium: charts with data, rows, images, waterfalls."""

import json
from decimal import Decimal

from console.dashboard import period_get
from steps.models import Step
from steps.reports import usage_report
from tests.browser.conftest import screenshot


def _go(page, path: str) -> None:
    page.goto(page.base_url + path)
    title = page.evaluate("document.title")
    assert "Log in" not in title, f"{path} asked for a login"
    assert "Server Error" not in title and title != "Error"


def test_dashboard_draws_charts_with_the_report_numbers(page, admin_data):
    org = admin_data.organization
    _go(page, f"/admin/dashboard/?organization={org.pk}&period=7d")
    seen = page.evaluate(
        """(() => {
          const values = sel => [...document.querySelectorAll(sel)]
            .map(e => Number(e.dataset.value)).filter(v => v > 0);
          return {
            cost: values('#chart-cost rect.bar'), tokens: values('#chart-tokens rect.bar'),
            steps: values('#chart-steps rect.bar'),
            rate: [...document.querySelectorAll('#chart-steps circle.point')].length,
            latency: values('#chart-latency rect.bar'), ttft: values('#chart-ttft rect.bar'),
            cache: values('#chart-cache rect.bar'),
            kpiSteps: document.querySelector('[data-kpi=steps] .v').textContent,
            agents: document.querySelectorAll('#top-agents tbody tr[data-agent]').length,
            svgVisible: document.querySelector('#chart-cost svg').getBoundingClientRect().height,
          };
        })()"""
    )
    screenshot(page, "dashboard")
    overall = usage_report(organization=org, filters=period_get(key="7d").params()).rows[0]
    assert seen["kpiSteps"] == f"{overall['steps']:,}"
    assert len(seen["steps"]) >= 5  # seeded history spreads over the week
    assert abs(sum(seen["steps"]) - overall["steps"]) == 0
    by_day_model = usage_report(
        organization=org, filters=period_get(key="7d").params(), group_by=["day", "model_handle"]
    )
    assert abs(Decimal(str(sum(seen["cost"]))) - sum(Decimal(r["cost_usd"]) for r in by_day_model.rows)) < Decimal(
        "0.01"
    )
    assert seen["tokens"] and seen["latency"] and seen["ttft"] and seen["cache"] and seen["rate"] >= 5
    assert seen["agents"] >= 3 and seen["svgVisible"] > 100


def test_steps_list_filtered_by_error_type_shows_those_failed_steps(page, admin_data):
    org = admin_data.organization
    _go(page, f"/admin/steps/step/?organization={org.pk}&error_type=rate_limit")
    rows = page.evaluate(
        """[...document.querySelectorAll('#result_list tbody tr')].map(tr => ({
             status: tr.querySelector('td.field-status_display').innerText,
             model: tr.querySelector('td.field-model_handle').innerText}))"""
    )
    screenshot(page, "steps-list-error-type")
    expected = Step.objects.filter(organization=org, error_type="rate_limit").count()
    assert expected > 0 and len(rows) == min(expected, 50)
    assert all("failed" in row["status"] and "rate_limit" in row["status"] for row in rows)
    selected = page.evaluate("[...document.querySelectorAll('#changelist-filter li.selected a')].map(a => a.innerText)")
    assert "rate_limit" in selected


def test_step_page_shows_the_chat_with_the_chart_image_the_tool_call_and_the_provider_trace(page, admin_data):
    step = Step.objects.get(run=admin_data.chart_run, step_number=1)
    _go(page, f"/admin/steps/step/{step.pk}/change/")
    seen = page.evaluate(
        """(() => ({
          images: [...document.querySelectorAll('.sl-msg.tool_return img.sl-image')].map(i => ({
              complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
              shown: i.getBoundingClientRect().width})),
          call: document.querySelector('.sl-msg.tool_call .tool-arguments').innerText,
          toolName: document.querySelector('.sl-msg.tool_call .who strong').textContent,
          reasoningOpen: document.querySelector('.sl-msg.reasoning details').open,
          user: document.querySelector('.sl-msg.user .text').innerText,
          phases: document.querySelectorAll('#timings svg rect.segment').length,
          response: document.querySelector('.provider-response').innerText.length,
        }))()"""
    )
    screenshot(page, "step-detail-image")
    assert seen["images"] and all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in seen["images"])
    assert seen["images"][0]["shown"] > 50
    assert json.loads(seen["call"])["values"] == [3, 1, 4, 1, 5, 9, 2, 6]
    assert seen["toolName"] == "render_chart" and seen["reasoningOpen"] is False
    assert "bar chart" in seen["user"] and seen["phases"] >= 3 and seen["response"] > 100


def test_run_page_draws_the_waterfall_of_steps_and_tool_calls(page, admin_data):
    _go(page, f"/admin/agents/run/{admin_data.chart_run.pk}/change/")
    segments = page.evaluate(
        """[...document.querySelectorAll('svg.waterfall rect.segment')].map(r => ({
             kind: r.getAttribute('class').replace('segment ', ''), label: r.dataset.label,
             start: Number(r.dataset.startMs), ms: Number(r.dataset.value), width: r.getBoundingClientRect().width}))"""
    )
    screenshot(page, "run-waterfall")
    kinds = [s["kind"] for s in segments]
    assert kinds.count("segment-step") == 2 and kinds.count("segment-llm") == 2 and kinds.count("segment-tool") == 1
    tool = next(s for s in segments if s["kind"] == "segment-tool")
    second = [s for s in segments if s["kind"] == "segment-step"][1]
    assert tool["label"] == "render_chart" and tool["ms"] > 0
    assert second["start"] >= tool["start"]  # the second step starts after the tool ran
    assert all(s["width"] > 0 for s in segments)
    assert page.evaluate("document.querySelector('[data-kpi=steps] .v').innerText") == "2"


def test_from_the_dashboard_to_a_failing_steps_provider_response_in_three_clicks(page, admin_data):
    org = admin_data.organization
    _go(page, f"/admin/dashboard/?organization={org.pk}&period=7d")

    def click(selector: str) -> None:
        page.events.clear()
        page.evaluate(
            f"document.querySelector({json.dumps(selector)}).dispatchEvent("
            "new MouseEvent('click', {bubbles: true, cancelable: true, view: window}))"
        )
        page.wait_for_event("Page.loadEventFired")

    # 1. today's bar of "steps and error rate" -> today's errors by type
    page.evaluate(
        "(() => { const bars = document.querySelectorAll('#chart-steps svg a');"
        " bars[bars.length - 1].id = 'today'; })()"
    )
    click("#today rect")
    assert "/admin/errors/" in page.evaluate("location.pathname")
    screenshot(page, "errors-today")
    # 2. the rate_limit errors -> the steps list filtered by that error type
    click("tr.error-group[data-error-type='rate_limit'] a.steps-link")
    assert "error_type=rate_limit" in page.evaluate("location.search")
    # 3. the failed step -> its page, with the provider's error response open
    click("#result_list tbody tr th a")
    response = page.evaluate(
        "(() => { const d = [...document.querySelectorAll('#provider-trace details')].pop();"
        " return {open: d.open, text: d.querySelector('.provider-response').innerText}; })()"
    )
    screenshot(page, "three-clicks-provider-response")
    assert response["open"] and "rate" in response["text"].lower()
