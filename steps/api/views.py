"""The query side of the REST API: steps, their messages/metrics/trace, a request's records, usage and errors.

Views are thin: they validate parameters, call one selector or report, and serialize.
"""

from typing import Any

import django_filters
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import config.openapi  # noqa: F401  (registers the API key scheme with drf-spectacular)
from accounts.audit import actor_from_request
from accounts.authentication import request_organization
from accounts.services import audit_record
from config.errors import ApplicationError
from steps.api import serializers as s
from steps.api.renderers import CSVRenderer
from steps.deletion import deletion_create, deletion_get, deletion_progress
from steps.filters import (
    MAX_FILTER_NUMBER,
    MAX_FILTER_VALUES,
    MultiValueFilter,
    StepFilterSet,
    StrictBooleanFilter,
    UtcDateTimeFilter,
    is_filter_param,
    multi_value_pattern,
)
from steps.models import DeletionJob, DeletionStatus
from steps.rendering import render_messages
from steps.reports import ERROR_GROUPS, USAGE_GROUPS, Report, errors_report, group_by_pattern, usage_report
from steps.selectors import (
    RequestRecord,
    provider_trace_get,
    provider_traces_for_step,
    request_get,
    run_usage,
    step_get,
    step_list,
    step_messages,
    step_metrics_get,
)
from steps.services import step_set_feedback
from steps.tasks import run_deletion

_PAGING = {"limit", "order", "cursor"}


def _filter_schema(flt: Any) -> dict[str, Any]:
    """The JSON schema of one StepFilterSet filter, with the limits its form field enforces."""
    if isinstance(flt, MultiValueFilter):
        field = flt.field_class(**flt.extra)
        return {"type": "string", "pattern": multi_value_pattern(choices=field.allowed, max_length=field.max_length)}
    if isinstance(flt, UtcDateTimeFilter):
        return {"type": "string", "format": "date-time"}
    if isinstance(flt, StrictBooleanFilter):
        return {"type": "boolean"}
    if isinstance(flt, django_filters.ChoiceFilter):
        return {"type": "string", "enum": [choice for choice, _ in flt.extra["choices"]]}
    if isinstance(flt, django_filters.NumberFilter):
        return {"type": "number", "minimum": 0, "maximum": MAX_FILTER_NUMBER}
    raise TypeError(f"no OpenAPI schema for {type(flt).__name__}")


def _filter_parameters() -> list[OpenApiParameter]:
    """The StepFilterSet's filters as OpenAPI query parameters (one source of truth); a filter given several
    values, comma-separated (`status=success,failed`), matches any of them."""
    parameters = []
    for name, flt in StepFilterSet.base_filters.items():
        description = str(flt.extra.get("help_text", ""))
        if isinstance(flt, MultiValueFilter):
            description += f" Several values: comma-separated, up to {MAX_FILTER_VALUES}."
        parameters.append(OpenApiParameter(name, _filter_schema(flt), description=description))
    # metadata.<key>=<value> filters have free-form names; the list operations' descriptions explain them.
    return parameters


FILTER_PARAMETERS = _filter_parameters()


def _check_params(request: Request, *, allowed: set[str], filters: bool = False) -> None:
    """Reject unknown query parameters: a typo must not silently widen a query."""
    unknown = [name for name in request.query_params if name not in allowed and not (filters and is_filter_param(name))]
    if unknown:
        raise ApplicationError("Invalid query parameters.", extra={name: ["Unknown parameter."] for name in unknown})


def _validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _page_response(page: Any, data: list[Any]) -> Response:
    return Response({"data": data, "next_cursor": page.next_cursor, "has_more": page.has_more})


class DeletionJobOut(serializers.Serializer):
    id = serializers.CharField()
    status = serializers.ChoiceField(choices=DeletionStatus.values)
    filters = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    steps_total = serializers.IntegerField(help_text="Steps matching when the job started.")
    steps_deleted = serializers.IntegerField()
    messages_deleted = serializers.IntegerField()
    provider_traces_deleted = serializers.IntegerField()
    runs_deleted = serializers.IntegerField()
    progress = serializers.FloatField(help_text="0 to 1.")
    error = serializers.CharField(help_text="Why the last attempt stopped (status failed; running it again resumes).")
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


def _deletion_data(job: DeletionJob) -> dict[str, Any]:
    fields = [f for f in DeletionJobOut().fields if f != "progress"]
    return DeletionJobOut({**{f: getattr(job, f) for f in fields}, "progress": deletion_progress(job)}).data


class StepListApi(APIView):
    """Steps of the key's organization, filtered, newest first, cursor paginated."""

    @extend_schema(
        operation_id="steps_list",
        parameters=[*FILTER_PARAMETERS, s.ListParamsSerializer],
        responses=s.StepPageSerializer,
    )
    def get(self, request: Request) -> Response:
        _check_params(request, allowed=_PAGING, filters=True)
        params = _validated(s.ListParamsSerializer, request.query_params)
        page = step_list(
            organization=request_organization(request), filters=request.query_params, order=params["order"],
            limit=params["limit"], cursor=params.get("cursor") or None,
        )  # fmt: skip
        return _page_response(page, s.steps_data(page.items))

    @extend_schema(
        operation_id="steps_delete",
        parameters=FILTER_PARAMETERS,
        request=None,
        responses={202: DeletionJobOut},
        summary="Start deleting the steps matching the filters (at least one); a full key only",
    )
    def delete(self, request: Request) -> Response:
        _check_params(request, allowed=set(), filters=True)
        job = deletion_create(organization=request_organization(request), params=request.query_params)
        audit_record(
            actor=actor_from_request(request),
            action="deletion.start",
            organization=job.organization_id,
            target=job,
            after={"filters": {key: request.query_params.getlist(key) for key in request.query_params}},
        )
        transaction.on_commit(lambda: run_deletion.delay(job.pk))
        return Response(_deletion_data(job), status=202)


class DeletionDetailApi(APIView):
    """A deletion job: its status, counts and progress."""

    @extend_schema(operation_id="deletions_retrieve", responses=DeletionJobOut, summary="A deletion job")
    def get(self, request: Request, deletion_id: str) -> Response:
        return Response(_deletion_data(deletion_get(organization=request_organization(request), job_id=deletion_id)))


class StepDetailApi(APIView):
    """One step with its usage, cost and outcome."""

    @extend_schema(operation_id="steps_retrieve", responses=s.StepWithMetricsSerializer)
    def get(self, request: Request, step_id: str) -> Response:
        _check_params(request, allowed=set())
        step = step_get(organization=request_organization(request), step_id=step_id)
        return Response(s.steps_data([step], with_metrics=True)[0])


class StepMessagesApi(APIView):
    """The step's messages as the typed message union, in sequence order, cursor paginated over those items."""

    @extend_schema(
        operation_id="steps_messages_list",
        parameters=[s.MessageListParamsSerializer],
        responses=s.MessagePageSerializer,
    )
    def get(self, request: Request, step_id: str) -> Response:
        _check_params(request, allowed=_PAGING)
        params = _validated(s.MessageListParamsSerializer, request.query_params)
        page = step_messages(
            organization=request_organization(request), step_id=step_id, order=params["order"],
            limit=params["limit"], cursor=params.get("cursor") or None,
        )  # fmt: skip
        return _page_response(page, page.items)


class StepMetricsApi(APIView):
    """The step's timings in nanoseconds (all null while it has none)."""

    @extend_schema(operation_id="steps_metrics_retrieve", responses=s.StepMetricsSerializer)
    def get(self, request: Request, step_id: str) -> Response:
        _check_params(request, allowed=set())
        metrics = step_metrics_get(organization=request_organization(request), step_id=step_id)
        return Response(s.STEP_METRICS.one(metrics))


class StepTraceParamsSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(
        min_value=1, max_value=1000, required=False, help_text="Attempt number (default: the last)."
    )


class StepTraceApi(APIView):
    """The provider's raw request and response for the step (the last attempt, or `attempt`)."""

    @extend_schema(
        operation_id="steps_trace_retrieve",
        parameters=[StepTraceParamsSerializer],
        responses=s.StepTraceSerializer,
    )
    def get(self, request: Request, step_id: str) -> Response:
        _check_params(request, allowed={"attempt"})
        params = _validated(StepTraceParamsSerializer, request.query_params)
        organization = request_organization(request)
        trace = provider_trace_get(organization=organization, step_id=step_id, attempt=params.get("attempt"))
        attempts = [t.attempt for t in provider_traces_for_step(organization=organization, step_id=step_id)]
        return Response({**s.PROVIDER_TRACE.one(trace), "attempts": attempts})


class StepFeedbackApi(APIView):
    """Set or clear feedback, add or remove tags (tags are never replaced wholesale)."""

    @extend_schema(operation_id="steps_feedback_update", request=s.FeedbackInSerializer, responses=s.StepSerializer)
    def patch(self, request: Request, step_id: str) -> Response:
        if not isinstance(request.data, dict):
            raise ValidationError({"non_field_errors": ["Expected a JSON object."]})
        data = _validated(s.FeedbackInSerializer, request.data)
        step = step_set_feedback(
            organization=request_organization(request), step_id=step_id, feedback=data.get("feedback"),
            set_feedback="feedback" in request.data, add_tags=data["add_tags"], remove_tags=data["remove_tags"],
        )  # fmt: skip
        return Response(s.STEP.one(step))


def _request_errors(record: Any) -> list[dict[str, Any]]:
    errors = []
    for run in record.runs:
        if run.error_data:
            message = run.error_data.get("message") if isinstance(run.error_data, dict) else None
            error_type = run.error_data.get("error_type") if isinstance(run.error_data, dict) else None
            errors.append(
                {"source": "run", "run_id": run.pk, "step_id": None, "error_type": error_type or run.stop_reason,
                 "message": message, "data": run.error_data, "created_at": run.completed_at}
            )  # fmt: skip
    for step in record.steps:
        if step.error_type:
            data = step.error_data or {}
            errors.append(
                {"source": "step", "run_id": step.run_id, "step_id": step.pk, "error_type": step.error_type,
                 "message": data.get("message"), "data": step.error_data, "created_at": step.completed_at}
            )  # fmt: skip
    for trace in record.provider_traces:
        if trace.error_type:
            errors.append(
                {"source": "provider_trace", "run_id": None, "step_id": trace.step_id, "error_type": trace.error_type,
                 "message": trace.error_message, "data": None, "created_at": trace.created_at}
            )  # fmt: skip
    return errors


class RequestDetailApi(APIView):
    """Everything recorded for one request id: runs, steps with metrics, messages, provider traces, errors."""

    @extend_schema(operation_id="requests_retrieve", responses=s.RequestSerializer)
    def get(self, request: Request, request_id: str) -> Response:
        _check_params(request, allowed=set())
        record = request_get(organization=request_organization(request), request_id=request_id)
        return Response(request_data(record))


def request_data(record: RequestRecord) -> dict[str, Any]:
    """The body of GET /v1/requests/{id} for a request-id join's record."""
    return {
        "request_id": record.request_id,
        "runs": s.REQUEST_RUN.many(record.runs),
        "steps": s.steps_data(record.steps, with_metrics=True),
        "messages": render_messages(record.messages),
        "provider_traces": s.PROVIDER_TRACE.many(record.provider_traces),
        "errors": s.REQUEST_ERROR.many(_request_errors(record)),
    }


class RunUsageApi(APIView):
    """The usage of every step of a run, with the run's totals."""

    @extend_schema(operation_id="runs_usage_retrieve", responses=s.RunUsageSerializer)
    def get(self, request: Request, run_id: str) -> Response:
        _check_params(request, allowed=set())
        usage = run_usage(organization=request_organization(request), run_id=run_id)
        return Response(s.RunUsageSerializer(usage).data)


class _ReportApi(APIView):
    """Reports answer JSON, or CSV with ?format=csv or Accept: text/csv (errors always JSON)."""

    renderer_classes = [JSONRenderer, CSVRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        from django.http import Http404

        try:
            return super().perform_content_negotiation(request, force=force)
        except Http404 as exc:  # an unknown ?format= value
            raise ApplicationError("Invalid query parameters.", extra={"format": ["Must be json or csv."]}) from exc

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        if response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        response = super().finalize_response(request, response, *args, **kwargs)
        if getattr(request, "accepted_renderer", None) and request.accepted_renderer.format == "csv":
            response["Content-Disposition"] = f'attachment; filename="{self.filename}"'
        return response

    filename = "report.csv"


def _report_response(report: Report, **extra: Any) -> Response:
    return Response(
        {
            "group_by": report.group_by,
            "source": report.source,
            "exact_percentiles": report.exact_percentiles,
            "truncated": report.truncated,
            **report.extra,
            **extra,
            "data": report.rows,
        }
    )


class UsageParamsSerializer(serializers.Serializer):
    exact = serializers.BooleanField(
        required=False, default=False, help_text="Scan the steps (exact percentiles, slower)."
    )
    limit = serializers.IntegerField(
        min_value=1, max_value=100_000, required=False, default=100_000, help_text="At most this many groups."
    )


_FORMAT = OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], description="csv for CSV output.")


class UsageReportApi(_ReportApi):
    """Usage grouped by any of model, model_handle, provider, agent, project, run, user, conversation, hour/day/week."""

    filename = "usage.csv"

    @extend_schema(
        operation_id="usage_report",
        parameters=[
            OpenApiParameter(
                "group_by",
                {"type": "string", "pattern": group_by_pattern(USAGE_GROUPS)},
                description=f"Comma-separated, at most one of hour, day, week: {', '.join(USAGE_GROUPS)}.",
            ),
            UsageParamsSerializer,
            _FORMAT,
            *FILTER_PARAMETERS,
        ],
        responses={(200, "application/json"): s.UsageReportSerializer, (200, "text/csv"): OpenApiTypes.STR},
    )
    def get(self, request: Request) -> Response:
        _check_params(request, allowed={"group_by", "exact", "limit", "format"}, filters=True)
        params = _validated(UsageParamsSerializer, request.query_params)
        report = usage_report(
            organization=request_organization(request), filters=_filters_only(request), exact=params["exact"],
            group_by=request.query_params.getlist("group_by"), limit=params["limit"],
        )  # fmt: skip
        return _report_response(report)


class ErrorsReportApi(_ReportApi):
    """Errors grouped by error_type (and provider, model, agent, day): count, share, first/last seen, example."""

    filename = "errors.csv"

    @extend_schema(
        operation_id="errors_report",
        parameters=[
            OpenApiParameter(
                "group_by",
                {"type": "string", "pattern": group_by_pattern(ERROR_GROUPS)},
                description=f"Comma-separated, besides error_type: {', '.join(ERROR_GROUPS)}.",
            ),
            _FORMAT,
            *FILTER_PARAMETERS,
        ],
        responses={(200, "application/json"): s.ErrorsReportSerializer, (200, "text/csv"): OpenApiTypes.STR},
    )
    def get(self, request: Request) -> Response:
        _check_params(request, allowed={"group_by", "format"}, filters=True)
        report = errors_report(
            organization=request_organization(request), filters=_filters_only(request),
            group_by=request.query_params.getlist("group_by"),
        )  # fmt: skip
        return _report_response(report)


def _filters_only(request: Request) -> Any:
    params = request.query_params.copy()
    for name in ("group_by", "exact", "limit", "format"):
        params.pop(name, None)
    return params
