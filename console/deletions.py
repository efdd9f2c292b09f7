"""The console's "delete the steps matching this filter": the count, a confirmation, then a deletion job.

The job is the API's (steps.deletion, `DELETE /v1/steps`): same filters, same batches, same rollup subtraction.
Only an organization's owners and admins (Capability.MANAGE) may start one, and only on one organization at a
time; a parameter the deletion cannot apply (a search, the ordering) refuses the page rather than being
dropped, because dropping it would delete more than the list showed."""

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.template.response import TemplateResponse
from django.urls import reverse

from accounts.roles import Capability
from config.errors import ApplicationError
from console.changelist import ORGANIZATION_PARAM
from console.scoping import console_scope
from steps.deletion import deletion_create
from steps.filters import is_filter_param
from steps.selectors import step_queryset
from steps.tasks import run_deletion

# Changelist parameters that change nothing about which steps match.
_HARMLESS = {"p", "o", "_changelist_filters"}


def steps_delete_matching_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """GET: how many steps match the list's filters, and a confirmation form; POST: start the deletion job."""
    scope = console_scope(request)
    organization_id = request.GET.get(ORGANIZATION_PARAM, "")
    if not organization_id or not scope.can_read(organization_id):
        raise Http404("Choose an organization first.")
    if not scope.allows(Capability.MANAGE, organization_id):
        raise PermissionDenied
    organization = scope.organization_or_404(organization_id)
    changelist_url = f"{reverse('admin:steps_step_changelist')}?{request.GET.urlencode()}"
    unsupported = [k for k in request.GET if k != ORGANIZATION_PARAM and k not in _HARMLESS and not is_filter_param(k)]
    filters = QueryDict(mutable=True)
    for name in request.GET:
        if is_filter_param(name):
            filters.setlist(name, request.GET.getlist(name))
    try:
        if unsupported:
            raise ApplicationError(f"These parameters cannot be applied to a deletion: {', '.join(unsupported)}.")
        _limit_to_one_project(scope.project_ids(organization.pk), organization, filters)
        if request.method == "POST":
            with transaction.atomic():
                job = deletion_create(organization=organization, params=filters)
                transaction.on_commit(lambda: run_deletion.delay(job.pk))
            messages.success(
                request, f"Deletion {job.pk} started: {job.steps_total} steps (GET /v1/deletions/{job.pk})."
            )
            return HttpResponseRedirect(changelist_url)
        count = step_queryset(organization=organization, filters=filters).count()
        if not any(filters.getlist(name) != [""] for name in filters):
            raise ApplicationError("Choose at least one filter: a deletion never means every step.")
    except ApplicationError as exc:
        messages.error(request, f"{exc} {exc.extra or ''}".strip())
        return HttpResponseRedirect(changelist_url)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Delete the steps matching this filter",
        "organization": organization,
        "filters": sorted((name, ", ".join(filters.getlist(name))) for name in filters),
        "count": count,
        "changelist_url": changelist_url,
    }
    return TemplateResponse(request, "admin/steps/step/delete_matching.html", context)


def _limit_to_one_project(project_ids: list[str] | None, organization: Any, filters: QueryDict) -> None:
    """A membership limited to some projects deletes inside one of them: the job keeps one project as its scope
    (steps.deletion's `project_scope`), so it is the person's only project or the one the filter names."""
    if not project_ids:
        return
    asked = {v for raw in filters.getlist("project_id") for v in raw.split(",") if v} & set(project_ids)
    if len(project_ids) == 1:
        organization.scoped_project_id = project_ids[0]
    elif len(asked) == 1:
        organization.scoped_project_id = asked.pop()
    else:
        raise ApplicationError("Your membership is limited to some projects: filter on one of them to delete.")
