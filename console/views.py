"""Admin pages beyond the model admins: the dashboard, the errors page, the step page and a run's waterfall.

URLs: /admin/dashboard/ and /admin/errors/ (added to the admin site by `install_admin_urls`),
the step page at /admin/steps/step/<id>/change/ (with a POST to .../feedback/), and the run page at
/admin/agents/run/<id>/change/. Reads go through steps.reports, steps.selectors
and console.selectors; the only write (feedback and tags) goes through steps.services.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from django.contrib import admin, messages
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, re_path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.generic import RedirectView

from accounts.audit import actor_from_request
from accounts.models import Organization
from accounts.roles import Capability
from accounts.services import invitation_accept, invitation_for_token, user_get_or_create
from agents.selectors import agent_choices, run_get, run_organization
from config.errors import ApplicationError, NotFound
from console import charts
from console.charts import BarChart, HBarRow, Series
from console.dashboard import PERIODS, Period, by_bucket, by_bucket_and_model, dashboard_get, errors_get, period_get
from console.scoping import SESSION_ORGANIZATION, console_scope
from console.selectors import chat_items, pretty_json, related_steps, run_waterfall, step_phases
from console.system import system_view
from steps.models import Feedback, StepMetrics
from steps.selectors import (
    organization_with_most_steps,
    provider_traces_for_step,
    step_conversation,
    step_dimension_values,
    step_get,
    step_organization,
    step_queryset,
)
from steps.services import step_set_feedback
from traces.otel import trace_url


def steps_url(**params: Any) -> str:
    """The steps changelist filtered by StepFilterSet parameters (the REST API's names)."""
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return reverse("admin:steps_step_changelist") + (f"?{query}" if query else "")


def step_url(step_id: str) -> str:
    return reverse("admin:steps_step_change", args=[step_id])


def run_url(run_id: str) -> str:
    return reverse("admin:agents_run_change", args=[run_id])


def _check_view(request: HttpRequest) -> None:
    if not request.user.has_perm("steps.view_step"):
        raise PermissionDenied


def _organization(request: HttpRequest) -> Organization | None:
    """The page's organization: `?organization=` (404 unless the person may read it), else the switcher's, else
    (a superuser who chose none) the busiest one."""
    scope = console_scope(request)
    chosen = request.GET.get("organization")
    if chosen:
        return scope.organization_or_404(chosen)
    if scope.current_id or not scope.everything:
        return scope.current()
    return organization_with_most_steps()


def _context(request: HttpRequest, **values: Any) -> dict[str, Any]:
    return {**admin.site.each_context(request), **values}


def _period_page(request: HttpRequest, *, title: str, **values: Any) -> tuple[Organization | None, Period, dict]:
    """What the dashboard and the errors page share: the permission check, the organization, the period and
    the context of their toolbar (organization and period menus)."""
    _check_view(request)
    organization = _organization(request)
    period = period_get(key=request.GET.get("period"), day=request.GET.get("day"))
    context = _context(
        request,
        title=title,
        organization=organization,
        organizations=console_scope(request).organizations(),
        periods=PERIODS.items(),
        period=period,
        **values,
    )
    return organization, period, context


def _float(value: Any) -> float:
    return float(Decimal(value)) if value not in (None, "") else 0.0


def _day_param(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


# --- dashboard ------------------------------------------------------------------------------------


def dashboard_view(request: HttpRequest) -> HttpResponse:
    """Usage for a period (and optionally one agent or model): charts, KPIs, top agents, top errors."""
    agent_id = request.GET.get("agent_id") or None
    model_handle = request.GET.get("model_handle") or None
    organization, period, context = _period_page(
        request, title="Dashboard", agent_id=agent_id, model_handle=model_handle
    )
    if organization is None:
        return render(request, "admin/steplens/dashboard.html", context)
    try:
        data = dashboard_get(organization=organization, period=period, agent_id=agent_id, model_handle=model_handle)
    except ApplicationError as exc:
        messages.error(request, f"{exc}: {exc.extra}")
        return render(request, "admin/steplens/dashboard.html", context)
    buckets = period.buckets()
    categories = [period.bucket_label(moment) for moment in buckets]
    per_model = by_bucket_and_model(data.by_time_model, period)
    per_time = by_bucket(data.by_time, period)
    model_names = data.models

    def model_series(measure: str) -> list[Series]:
        return [
            Series(
                name, [_float(per_model.get((moment, name), {}).get(measure)) for moment in buckets], charts.color_of(i)
            )
            for i, name in enumerate(model_names)
        ]

    scope = {"organization": organization.pk, "agent_id": agent_id, "model_handle": model_handle}
    if period.bucket == "day":
        day_links = [
            reverse("admin:errors") + "?" + urlencode({k: v for k, v in {**scope, "day": _day_param(m)}.items() if v})
            for m in buckets
        ]
    else:
        day_links = [steps_url(**scope, start=m.isoformat(), end=(m + timedelta(hours=1)).isoformat()) for m in buckets]
    tokens_chart = charts.bar_chart(
        BarChart(
            categories, model_series("total_tokens"), fmt=charts.fmt_number, label="Tokens by model", links=day_links
        )
    )
    cost_chart = charts.bar_chart(
        BarChart(categories, model_series("cost_usd"), fmt=charts.fmt_usd, label="Cost by model", links=day_links)
    )
    steps_series = Series("steps", [_float(per_time.get(m, {}).get("steps")) for m in buckets], "#64748b")
    rate = Series("error rate", [per_time[m]["error_rate"] if m in per_time else None for m in buckets], "#dc2626")
    steps_chart = charts.bar_chart(
        BarChart(categories, [steps_series], line=rate, label="Steps and error rate", links=day_links)
    )
    by_model = sorted(data.by_model, key=lambda r: -r["steps"])

    def model_link(row: dict[str, Any]) -> str:
        return steps_url(organization=organization.pk, model_handle=row["model_handle"], **period.params())

    latency_chart = charts.hbar_chart(
        [
            HBarRow(
                r["model_handle"] or "(none)",
                [("p50", r["latency_ms_p50"]), ("p95", r["latency_ms_p95"])],
                model_link(r),
            )
            for r in by_model
        ],
        fmt=charts.fmt_ms,
        label="Latency p50/p95 by model",
    )
    ttft_chart = charts.hbar_chart(
        [
            HBarRow(
                r["model_handle"] or "(none)", [("p50", r["ttft_ms_p50"]), ("p95", r["ttft_ms_p95"])], model_link(r)
            )
            for r in by_model
        ],
        fmt=charts.fmt_ms,
        label="Time to first token p50/p95 by model",
    )
    cache_chart = charts.hbar_chart(
        [
            HBarRow(r["model_handle"] or "(none)", [("cache hit", r["cache_hit_ratio"])], model_link(r))
            for r in by_model
        ],
        fmt=charts.fmt_percent,
        label="Cache hit ratio by model",
    )
    max_agent_cost = max((_float(r["cost_usd"]) for r in data.top_agents), default=0) or 1
    top_agents = [
        {
            **row,
            "cost": _float(row["cost_usd"]),
            "bar": round(100 * _float(row["cost_usd"]) / max_agent_cost, 1),
            "link": steps_url(organization=organization.pk, agent_id=row["agent_id"], **period.params()),
        }
        for row in data.top_agents
    ]
    errors_link = (
        reverse("admin:errors")
        + "?"
        + urlencode(
            {
                k: v
                for k, v in {
                    **scope,
                    "period": period.key if period.key in PERIODS else None,
                    "day": _day_param(period.start) if period.key == "day" else None,
                }.items()
                if v
            }
        )
    )
    top_errors = [
        {
            **row,
            "link": steps_url(
                organization=organization.pk,
                error_type=row["error_type"],
                agent_id=agent_id,
                model_handle=model_handle,
                **period.params(),
            ),
            "example_link": step_url(row["example_step_id"]) if row.get("example_step_id") else None,
        }
        for row in data.top_errors
    ]
    context.update(
        data=data,
        overall=data.overall,
        overall_cost=_float(data.overall.get("cost_usd")),
        tokens_chart=tokens_chart,
        cost_chart=cost_chart,
        steps_chart=steps_chart,
        latency_chart=latency_chart,
        ttft_chart=ttft_chart,
        cache_chart=cache_chart,
        legend=charts.legend(model_names),
        top_agents=top_agents,
        top_errors=top_errors,
        errors_link=errors_link,
        agents=agent_choices(organization=organization),
        model_choices=step_dimension_values(column="model_handle", organization_id=organization.pk),
        steps_link=steps_url(
            organization=organization.pk, agent_id=agent_id, model_handle=model_handle, **period.params()
        ),
    )
    return render(request, "admin/steplens/dashboard.html", context)


# --- errors ---------------------------------------------------------------------------------------

ERROR_EXTRA_FILTERS = ("agent_id", "model_handle", "provider")
EXAMPLES_PER_TYPE = 3


def errors_view(request: HttpRequest) -> HttpResponse:
    """Errors grouped by type over a period: count, share, trend, first/last seen, example steps."""
    extra = {name: request.GET.get(name, "") for name in ERROR_EXTRA_FILTERS}
    organization, period, context = _period_page(request, title="Errors", extra=extra)
    if organization is None:
        return render(request, "admin/steplens/errors.html", context)
    try:
        page = errors_get(organization=organization, period=period, extra=extra)
    except ApplicationError as exc:
        messages.error(request, f"{exc}: {exc.extra}")
        return render(request, "admin/steplens/errors.html", context)
    buckets = period.buckets()
    per_time = by_bucket(page.by_time, period)
    links = [
        (
            reverse("admin:errors")
            + "?"
            + urlencode(
                {k: v for k, v in {"organization": organization.pk, "day": _day_param(m), **extra}.items() if v}
            )
        )
        if period.bucket == "day"
        else steps_url(
            organization=organization.pk,
            status="failed",
            start=m.isoformat(),
            end=(m + timedelta(hours=1)).isoformat(),
            **extra,
        )
        for m in buckets
    ]
    chart = charts.bar_chart(
        BarChart(
            [period.bucket_label(m) for m in buckets],
            [Series("steps", [_float(per_time.get(m, {}).get("steps")) for m in buckets], "#64748b")],
            line=Series("error rate", [per_time[m]["error_rate"] if m in per_time else None for m in buckets]),
            label="Steps and error rate",
            links=links,
            width=960,
        )
    )
    groups = []
    for group in page.groups:
        row = group.row
        examples = list(
            step_queryset(organization=organization, filters={**page.filters, "error_type": row["error_type"]})
            .only("id", "created_at", "model_handle")
            .order_by("-created_at", "-id")[:EXAMPLES_PER_TYPE]
        )
        groups.append(
            {
                **row,
                "first_seen": datetime.fromisoformat(row["first_seen"]),
                "last_seen": datetime.fromisoformat(row["last_seen"]),
                "trend": charts.sparkline(group.trend, label=f"{row['error_type']} per {period.bucket}"),
                "trend_total": sum(group.trend),
                "steps_link": steps_url(organization=organization.pk, error_type=row["error_type"], **page.filters),
                "examples": [{"step": s, "link": step_url(s.pk)} for s in examples],
            }
        )
    context.update(
        page=page,
        chart=chart,
        groups=groups,
        error_rate=(page.total_errors / page.total_steps) if page.total_steps else None,
        failed_link=steps_url(organization=organization.pk, status="failed", **page.filters),
        model_choices=step_dimension_values(column="model_handle", organization_id=organization.pk),
        provider_choices=step_dimension_values(column="provider_name", organization_id=organization.pk),
        agents=agent_choices(organization=organization),
    )
    return render(request, "admin/steplens/errors.html", context)


# --- one step -------------------------------------------------------------------------------------


# The step page shows at most this many of the run's messages (the newest ones up to the step).
CONVERSATION_LIMIT = 300


def _page_object(
    model_admin: Any, request: HttpRequest, *, organization: Organization | None, get: Callable[..., Model]
) -> Model:
    """The object a console page shows, read through `get(organization=...)`; 404 without an organization (or
    outside the projects the person's membership is limited to), 403 when the user may not view it."""
    scope = console_scope(request)
    if organization is None or not scope.can_read(organization.pk):
        raise Http404(f"{model_admin.model._meta.verbose_name.capitalize()} not found.")
    try:
        found = get(organization=scope.narrow(organization))
    except NotFound as exc:  # outside the projects the membership is limited to
        raise Http404(f"{model_admin.model._meta.verbose_name.capitalize()} not found.") from exc
    if not model_admin.has_view_or_change_permission(request, found):
        raise PermissionDenied
    return found


def _ms(value_ns: int | None) -> float | None:
    return None if value_ns is None else value_ns / 1e6


def step_detail_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """Everything about one step: fields, phases, conversation, provider traces, error, trace link, related steps."""
    organization = step_organization(step_id=object_id)
    step = _page_object(model_admin, request, organization=organization, get=partial(step_get, step_id=object_id))
    try:
        metrics = step.metrics
    except StepMetrics.DoesNotExist:
        metrics = None
    conversation, truncated = step_conversation(step=step, limit=CONVERSATION_LIMIT)
    traces = provider_traces_for_step(organization=organization, step_id=step.pk)
    related = related_steps(organization=organization, step=step)
    error = step.error_data or {}
    phases = step_phases(metrics=metrics)
    context = _context(
        request,
        title=f"Step {step.pk}",
        opts=model_admin.model._meta,
        step=step,
        organization=organization,
        metrics=metrics,
        timings={
            "ttft_ms": _ms(step.ttft_ns),
            "latency_ms": _ms(step.latency_ns),
            "llm_request_ms": _ms(metrics.llm_request_ns) if metrics else None,
            "tool_execution_ms": _ms(metrics.tool_execution_ns) if metrics else None,
            "step_ms": _ms(metrics.step_ns) if metrics else None,
            "step_start": datetime.fromtimestamp(metrics.step_start_ns / 1e9, tz=UTC)
            if metrics and metrics.step_start_ns
            else None,
        },
        timeline=charts.waterfall(phases, label="Phases of the step") if phases else None,
        chat=chat_items(messages=conversation, step_id=step.pk),
        conversation_truncated=truncated,
        traces=[
            {"trace": t, "request": pretty_json(t.request_json), "response": pretty_json(t.response_json)}
            for t in traces
        ],
        error={
            "message": error.get("message"),
            "traceback": error.get("traceback"),
            "details": pretty_json(error.get("details")) if error.get("details") else "",
        },
        trace_link=trace_url(step.trace_id, step.span_id),
        related=related,
        run_link=run_url(step.run_id) if step.run_id else None,
        request_link=steps_url(organization=organization.pk, request_id=step.request_id) if step.request_id else None,
        trace_steps_link=steps_url(organization=organization.pk, trace_id=step.trace_id) if step.trace_id else None,
        metadata=pretty_json(step.metadata) if step.metadata else "",
        prompt_details=pretty_json(step.prompt_tokens_details) if step.prompt_tokens_details else "",
        completion_details=pretty_json(step.completion_tokens_details) if step.completion_tokens_details else "",
        can_feedback=request.user.has_perm("steps.change_step")
        and console_scope(request).allows(Capability.ANNOTATE, organization.pk),
        feedback_url=reverse("admin:steps_step_feedback", args=[step.pk]),
        feedback_choices=Feedback.choices,
        changelist_link=steps_url(organization=organization.pk),
    )
    return render(request, "admin/steps/step/detail.html", context)


def step_feedback_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """Set feedback and add/remove tags through steps.services.step_set_feedback (the API's write path)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    scope = console_scope(request)
    organization = scope.narrow(step_organization(step_id=object_id))
    if organization is None or not scope.can_read(organization.pk):
        raise Http404("Step not found.")
    if not (request.user.has_perm("steps.change_step") and scope.allows(Capability.ANNOTATE, organization.pk)):
        raise PermissionDenied
    action = request.POST.get("feedback")
    add = [t.strip() for t in request.POST.get("add_tags", "").split(",") if t.strip()]
    remove = [t for t in request.POST.getlist("remove_tag") if t]
    try:
        step_set_feedback(
            organization=organization,
            step_id=object_id,
            feedback=None if action in (None, "", "clear") else action,
            set_feedback=action is not None,
            add_tags=add,
            remove_tags=remove,
        )
    except NotFound as exc:  # outside the projects the membership is limited to
        raise Http404("Step not found.") from exc
    except ApplicationError as exc:
        messages.error(request, f"{exc} {exc.extra or ''}")
    else:
        messages.success(request, "Feedback and tags saved.")
    return HttpResponseRedirect(step_url(object_id) + "#feedback")


# --- a run ----------------------------------------------------------------------------------------


def run_detail_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """A run's steps and tool calls as a waterfall, with totals and the run's fields."""
    organization = run_organization(run_id=object_id)
    run = _page_object(model_admin, request, organization=organization, get=partial(run_get, run_id=object_id))
    waterfall = run_waterfall(organization=organization, run=run, step_url=step_url)
    context = _context(
        request,
        title=f"Run {run.pk}",
        opts=model_admin.model._meta,
        run=run,
        waterfall=waterfall,
        chart=charts.waterfall(waterfall.spans, label="Run waterfall"),
        totals=waterfall.totals,
        steps_link=steps_url(organization=run.organization_id, run_id=run.pk),
        request_link=steps_url(organization=run.organization_id, request_id=run.request_id),
        trace_link=trace_url(run.trace_id, run.span_id),
        step_links={s.pk: step_url(s.pk) for s in waterfall.steps},
        error=pretty_json(run.error_data) if run.error_data else "",
    )
    return render(request, "admin/agents/run/detail.html", context)


# --- wiring ---------------------------------------------------------------------------------------


def switch_organization_view(request: HttpRequest) -> HttpResponse:
    """The header's switcher: remember the chosen organization (one the person may read, else 404)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    organization = console_scope(request).organization_or_404(request.POST.get("organization", ""))
    request.session[SESSION_ORGANIZATION] = organization.pk
    target = request.POST.get("next") or reverse("admin:index")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("admin:index")
    # A page showing another organization (?organization=...) would stay on it: drop the parameter.
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "organization"]
    return HttpResponseRedirect(parts._replace(query=urlencode(query)).geturl())


class InvitationSignupForm(UserCreationForm):
    """A new person's account, made when they accept an invitation."""


def invitation_accept_view(request: HttpRequest, token: str) -> HttpResponse:
    """An invitation link: a signed-in person joins; anyone else creates an account and joins. One use only."""
    invitation = invitation_for_token(raw_token=token)
    form = None
    if invitation is not None and not request.user.is_authenticated:
        form = InvitationSignupForm(request.POST or None)
    if request.method == "POST" and invitation is not None:
        user = request.user if request.user.is_authenticated else None
        if user is None and form is not None and form.is_valid():
            user, _ = user_get_or_create(
                username=form.cleaned_data["username"], password=form.cleaned_data["password1"], email=invitation.email
            )
        if user is not None:
            try:
                invitation_accept(raw_token=token, user=user, actor=actor_from_request(request))
            except ApplicationError:
                invitation = None
            else:
                if not request.user.is_authenticated:
                    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                request.session[SESSION_ORGANIZATION] = invitation.organization_id
                return HttpResponseRedirect(reverse("admin:index"))
    context = _context(request, title="Invitation", invitation=invitation, form=form)
    return render(request, "admin/accounts/invitation/accept.html", context, status=200 if invitation else 404)


def install_admin_urls(site: admin.AdminSite) -> None:
    """Put /admin/dashboard/ and /admin/errors/ in front of the site's own URLs (login and staff checks apply),
    with the organization switcher and the invitation link (open to anyone holding a valid token)."""
    if getattr(site, "_steplens_urls", False):
        return
    original = site.get_urls

    def get_urls() -> list:
        return [
            path("dashboard/", site.admin_view(dashboard_view), name="dashboard"),
            path("errors/", site.admin_view(errors_view), name="errors"),
            path("system/", site.admin_view(system_view), name="system"),
            path("organization/switch/", site.admin_view(switch_organization_view), name="switch_organization"),
            path("invitation/<str:token>/", invitation_accept_view, name="invitation_accept"),
            # Provider traces moved from the traces app to steps (issue 12): old bookmarks and links still land.
            re_path(
                r"^traces/providertrace/(?P<rest>.*)$",
                RedirectView.as_view(url="/admin/steps/providertrace/%(rest)s", permanent=True, query_string=True),
            ),
            *original(),
        ]

    site.get_urls = get_urls
    site._steplens_urls = True
