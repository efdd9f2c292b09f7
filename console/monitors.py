"""Console pages of monitors: the list (current value, state, sparkline), one monitor (its alert history and
deliveries, a test button), and a form that creates a monitor from the dashboard's or the errors page's filters.

URLs (installed by `install_monitor_urls`): /admin/monitors/, /admin/monitors/new/?<step filters>,
/admin/monitors/<id>/ and POST /admin/monitors/<id>/test/. Reads go through monitors.selectors, writes through
monitors.services, like the API; another organization's monitor is a 404 here as there.
"""

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, re_path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import Organization
from accounts.roles import Capability
from config.errors import ApplicationError, NotFound
from console import charts
from console.scoping import console_scope
from monitors import evaluation, payloads, selectors, services
from monitors.models import GroupBy, Metric, Monitor, MonitorState, Operator
from steps.filters import FILTER_NAMES, METADATA_PREFIX

# Windows offered by the form (the API takes any number of seconds from 5 minutes to 7 days).
WINDOWS = [(300, "5 minutes"), (600, "10 minutes"), (1800, "30 minutes"), (3600, "1 hour"), (21600, "6 hours"),
           (86400, "1 day"), (604800, "7 days")]  # fmt: skip
STATE_COLORS = {MonitorState.OK: "#15803d", MonitorState.ALERTING: "#b91c1c", MonitorState.NO_DATA: "#64748b"}
# Parameters of the dashboard and errors pages that are not step filters (the window replaces the period).
_PAGE_PARAMS = frozenset({"organization", "period", "day", "start", "end", "from"})
_ID = r"monitor-[0-9a-f\-]{36}"


def format_value(metric: str, value: float | None) -> str:
    """A metric's value as people read it: rates in percent, cost in dollars, times in ms."""
    if value is None:
        return "–"
    if metric == Metric.ERROR_RATE:
        return charts.fmt_percent(value)
    if metric == Metric.COST_USD:
        return charts.fmt_usd(value)
    if metric.startswith(("latency", "ttft")):
        return charts.fmt_ms(value)
    return charts.fmt_number(value)


def _organization(request: HttpRequest, organization_id: str | None) -> Organization:
    scope = console_scope(request)
    if organization_id:
        return scope.organization_or_404(organization_id)
    current = scope.current()
    if current is None:
        raise Http404("No organization.")
    return current


def _need(request: HttpRequest, capability: Capability, organization: Organization) -> None:
    if not console_scope(request).allows(capability, organization.pk):
        raise PermissionDenied


def _context(request: HttpRequest, **values: Any) -> dict[str, Any]:
    return {**admin.site.each_context(request), **values}


def _sparkline(monitor: Monitor) -> Any:
    """The monitor's values at the evaluations inside its window (the last 60 at most), oldest first."""
    since = timezone.now() - timedelta(seconds=monitor.window_seconds)
    points = []
    for moment, value in monitor.history or []:
        at = parse_datetime(moment)
        if at is not None and at >= since:
            points.append(float(value) if value is not None else 0.0)
    if not points:
        return None
    return charts.sparkline(points, label=f"{monitor.metric} at each evaluation over the window")


def _row(monitor: Monitor) -> dict[str, Any]:
    return {
        "monitor": monitor,
        "value": format_value(monitor.metric, monitor.value),
        "threshold": format_value(monitor.metric, monitor.threshold),
        "window": payloads.window_label(monitor.window_seconds),
        "color": STATE_COLORS.get(monitor.state, "#64748b"),
        "sparkline": _sparkline(monitor),
        "link": reverse("admin:monitor_detail", args=[monitor.pk]),
        "alerting_groups": [alert.group for alert in monitor.group_alerts.all()] if monitor.group_by else [],
    }


def monitors_view(request: HttpRequest) -> HttpResponse:
    """Every monitor of the organization with its state, current value and a sparkline."""
    organization = _organization(request, request.GET.get("organization"))
    _need(request, Capability.VIEW, organization)
    monitors = selectors.monitor_list(organization=organization).prefetch_related("group_alerts")
    context = _context(
        request,
        title="Monitors",
        organization=organization,
        organizations=console_scope(request).organizations(),
        rows=[_row(m) for m in monitors],
        can_manage=console_scope(request).allows(Capability.MANAGE, organization.pk),
        new_link=reverse("admin:monitor_new") + "?" + urlencode({"organization": organization.pk}),
    )
    return render(request, "admin/steplens/monitors.html", context)


def _monitor(request: HttpRequest, monitor_id: str, capability: Capability) -> Monitor:
    # Narrowed to a limited membership's projects: another project's monitor is then not found.
    organization = console_scope(request).narrow(selectors.monitor_organization(monitor_id=monitor_id))
    if organization is None or not console_scope(request).can_read(organization.pk):
        raise Http404("Monitor not found.")
    _need(request, capability, organization)
    try:
        return selectors.monitor_get(organization=organization, monitor_id=monitor_id)
    except NotFound as exc:
        raise Http404("Monitor not found.") from exc


def monitor_detail_view(request: HttpRequest, monitor_id: str) -> HttpResponse:
    """One monitor: its definition, state and sparkline, its alert history and the latest deliveries."""
    monitor = _monitor(request, monitor_id, Capability.VIEW)
    organization = monitor.organization
    events = list(selectors.alert_list(organization=organization, monitor=monitor)[:100])
    window_filters = evaluation.monitor_filters(monitor)
    now = timezone.now()
    steps_link = payloads.links(
        organization_id=organization.pk,
        filters={**window_filters, "start": (now - timedelta(seconds=monitor.window_seconds)).isoformat()},
    )["console"]
    context = _context(
        request,
        title=f"Monitor: {monitor.name}",
        organization=organization,
        row=_row(monitor),
        monitor=monitor,
        recovery=format_value(monitor.metric, evaluation.recovery_of(monitor)),
        filters=sorted(window_filters.items()),
        events=[
            {
                "event": event,
                "value": format_value(event.metric, event.value),
                "color": STATE_COLORS.get(event.state, "#64748b"),
                "links": payloads.links(
                    organization_id=organization.pk,
                    filters={
                        **event.filters,
                        "start": event.window_start.isoformat(),
                        "end": event.window_end.isoformat(),
                    },
                ),
            }
            for event in events
        ],
        deliveries=selectors.delivery_list(organization=organization, monitor=monitor, limit=20),
        steps_link=steps_link,
        can_manage=console_scope(request).allows(Capability.MANAGE, organization.pk),
        test_url=reverse("admin:monitor_test", args=[monitor.pk]),
        list_link=reverse("admin:monitors") + "?" + urlencode({"organization": organization.pk}),
    )
    return render(request, "admin/steplens/monitor_detail.html", context)


def monitor_test_view(request: HttpRequest, monitor_id: str) -> HttpResponse:
    """The test button: a sample notification to every target (through monitors.services, as the API)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    monitor = _monitor(request, monitor_id, Capability.MANAGE)
    try:
        deliveries = services.monitor_test_send(monitor=monitor)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request, f"Test notification queued for {len(deliveries)} target(s): see the deliveries below."
        )
    return HttpResponseRedirect(reverse("admin:monitor_detail", args=[monitor.pk]) + "#deliveries")


def carried_filters(params: Any) -> dict[str, str]:
    """The step filters among a page's query parameters (what "create a monitor from this view" carries over)."""
    carried = {}
    for name in params:
        if name in _PAGE_PARAMS or not (name in FILTER_NAMES or name.startswith(METADATA_PREFIX)):
            continue
        value = params.get(name)
        if value:
            carried[name] = value
    return carried


def monitor_new_view(request: HttpRequest) -> HttpResponse:
    """A form for a new monitor, its filters taken from the query string (the dashboard's and errors page's)."""
    source = request.POST if request.method == "POST" else request.GET
    organization = _organization(request, source.get("organization"))
    _need(request, Capability.MANAGE, organization)
    filters = carried_filters(request.GET if request.method != "POST" else _prefixed(request.POST))
    form = {"name": "", "metric": Metric.ERROR_RATE, "operator": Operator.GT, "threshold": "0.2", "window_seconds":
            "600", "min_steps": "5", "group_by": "", "webhook_url": "", "email": ""}  # fmt: skip
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        form.update({k: request.POST.get(k, "") for k in form})
        data, errors = _parse(form, filters)
        if not errors:
            try:
                monitor, secret = services.monitor_create(organization=organization, data=data)
            except ApplicationError as exc:
                errors = exc.fields
            else:
                messages.success(
                    request,
                    f"Monitor created. Webhook signing secret (shown only now): {secret}",
                )
                return HttpResponseRedirect(reverse("admin:monitor_detail", args=[monitor.pk]))
    context = _context(
        request,
        title="New monitor",
        organization=organization,
        filters=sorted(filters.items()),
        form=form,
        errors=errors,
        metrics=Metric.values,
        operators=Operator.values,
        windows=WINDOWS,
        group_choices=GroupBy.values,
    )
    return render(request, "admin/steplens/monitor_form.html", context, status=400 if errors else 200)


def _prefixed(post: Any) -> dict[str, str]:
    """The form posts the carried filters as hidden `filter:<name>` inputs."""
    return {key.removeprefix("filter:"): post.get(key) for key in post if key.startswith("filter:")}


def _parse(form: dict[str, str], filters: dict[str, str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    errors: dict[str, list[str]] = {}
    data: dict[str, Any] = {"name": form["name"].strip(), "metric": form["metric"], "operator": form["operator"],
                            "filters": filters, "group_by": form["group_by"] or None}  # fmt: skip
    if not data["name"]:
        errors["name"] = ["Required."]
    if data["metric"] not in Metric.values:
        errors["metric"] = ["Choose a metric."]
    if data["operator"] not in Operator.values:
        errors["operator"] = ["Choose a comparison."]
    if data["group_by"] and data["group_by"] not in GroupBy.values:
        errors["group_by"] = ["Choose a dimension."]
    for name, kind in (("threshold", float), ("window_seconds", int), ("min_steps", int)):
        try:
            data[name] = kind(form[name])
        except ValueError:
            errors[name] = ["Must be a number."]
    if isinstance(data.get("window_seconds"), int) and data["window_seconds"] not in dict(WINDOWS):
        errors["window_seconds"] = ["Choose a window."]
    targets = []
    if form["webhook_url"].strip():
        targets.append({"kind": "webhook", "url": form["webhook_url"].strip()})
    if form["email"].strip():
        targets.append({"kind": "email", "email": form["email"].strip()})
    data["targets"] = targets
    return data, errors


def install_monitor_urls(site: admin.AdminSite) -> None:
    """Put the monitors pages in front of the site's URLs (login and staff or member checks apply)."""
    if getattr(site, "_steplens_monitor_urls", False):
        return
    original = site.get_urls

    def get_urls() -> list:
        return [
            path("monitors/", site.admin_view(monitors_view), name="monitors"),
            path("monitors/new/", site.admin_view(monitor_new_view), name="monitor_new"),
            # Monitor ids only ("monitor-<uuid>"): /admin/monitors/monitor/ and the other model pages stay the admin's.
            re_path(rf"^monitors/(?P<monitor_id>{_ID})/$", site.admin_view(monitor_detail_view), name="monitor_detail"),
            re_path(
                rf"^monitors/(?P<monitor_id>{_ID})/test/$", site.admin_view(monitor_test_view), name="monitor_test"
            ),
            *original(),
        ]

    site.get_urls = get_urls
    site._steplens_monitor_urls = True
