"""The steps changelist at millions of rows: list filters backed by the shared StepFilterSet, and a
paginator that never counts the whole table.

- Filters use the REST API's parameter names (`?status=failed&error_type=rate_limit_error&start=...`),
  so a link from the dashboard, the errors page or an API user's query opens the same steps.
- Choices for provider/model/error type come from the rollups and indexes, never a DISTINCT over steps.
- Counting stops at `COUNT_CAP` rows; above that the page shows the planner's estimate ("about N").
- Across all organizations the newest-first page is read per organization through the
  (organization, created_at, id) index, then merged: no sort of the whole table.
"""

from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, QueryDict
from django.utils import timezone

from agents.models import StopReason
from agents.selectors import agent_tags
from console.scoping import console_scope
from console.selectors import CountResult, capped_count
from steps.filters import METADATA_PREFIX, StepFilterSet, filter_errors
from steps.models import Feedback, StepStatus
from steps.selectors import step_dimension_values, step_error_types

COUNT_CAP = 10_000
# OFFSET pagination reads every row it skips: past this many, the list asks for a narrower date range instead.
MAX_OFFSET = 20_000
MERGE_MAX_ORGANIZATIONS = 50
ORGANIZATION_PARAM = "organization"


def apply_step_filters(queryset: QuerySet, params: dict[str, Any]) -> QuerySet:
    """Narrow `queryset` with the StepFilterSet; invalid values make the admin show its 'bad lookup' page."""
    data = QueryDict(mutable=True)
    for key, value in params.items():
        if value not in (None, ""):
            data[key] = value
    if not data:
        return queryset
    filterset = StepFilterSet(data=data, queryset=queryset)
    if not filterset.is_valid():
        raise IncorrectLookupParameters(filter_errors(filterset))
    return filterset.qs


class FilterSetListFilter(admin.ListFilter):
    """A sidebar filter whose parameters are StepFilterSet parameters, applied by the FilterSet itself."""

    parameter_name = ""
    extra_parameters: tuple[str, ...] = ()

    def __init__(self, request: HttpRequest, params: dict[str, list[str]], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        for name in self.expected_parameters():
            if name in params:
                self.used_parameters[name] = params.pop(name)[-1]
        self.organization_id = request.GET.get(ORGANIZATION_PARAM) or console_scope(request).current_id
        # A person limited to some projects is offered only those projects' names.
        self.project_ids = console_scope(request).project_ids(self.organization_id)
        self.lookup_choices = list(self.lookups(request, model_admin))

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def value(self) -> str | None:
        return self.used_parameters.get(self.parameter_name)

    def expected_parameters(self) -> list[str]:
        return [self.parameter_name, *self.extra_parameters]

    def has_output(self) -> bool:
        return bool(self.lookup_choices) or self.value() is not None

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return apply_step_filters(queryset, self.used_parameters)

    def choices(self, changelist: Any):
        remove = self.expected_parameters()
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=remove),
            "display": "All",
        }
        values = {str(v) for v, _ in self.lookup_choices}
        current = self.value()
        if current is not None and current not in values:
            yield {
                "selected": True,
                "query_string": changelist.get_query_string({self.parameter_name: current}),
                "display": current,
            }
        for value, label in self.lookup_choices:
            yield {
                "selected": current == str(value),
                "query_string": changelist.get_query_string({self.parameter_name: value}, remove=remove),
                "display": label,
            }


class OrganizationFilter(admin.SimpleListFilter):
    """Which organization's steps (superusers see every organization, members theirs)."""

    title = "organization"
    parameter_name = ORGANIZATION_PARAM

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(console_scope(request).organizations().values_list("pk", "name")[:500])

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(organization_id=self.value()) if self.value() else queryset


class StatusFilter(FilterSetListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(value, value) for value in StepStatus.values]


class ProviderFilter(FilterSetListFilter):
    title = "provider"
    parameter_name = "provider"

    def lookups(self, request, model_admin):
        values = step_dimension_values(
            column="provider_name", organization_id=self.organization_id, project_ids=self.project_ids
        )
        return [(v, v) for v in values]


class ModelFilter(FilterSetListFilter):
    title = "model"
    parameter_name = "model_handle"

    def lookups(self, request, model_admin):
        values = step_dimension_values(
            column="model_handle", organization_id=self.organization_id, project_ids=self.project_ids
        )
        return [(v, v) for v in values]


class StopReasonFilter(FilterSetListFilter):
    title = "stop reason"
    parameter_name = "stop_reason"

    def lookups(self, request, model_admin):
        return [(value, value) for value in StopReason.values]


class ErrorTypeFilter(FilterSetListFilter):
    title = "error type"
    parameter_name = "error_type"

    def lookups(self, request, model_admin):
        return [(v, v) for v in step_error_types(organization_id=self.organization_id, project_ids=self.project_ids)]


class FeedbackFilter(FilterSetListFilter):
    title = "feedback"
    parameter_name = "feedback"
    extra_parameters = ("has_feedback",)

    def lookups(self, request, model_admin):
        return Feedback.choices

    def choices(self, changelist: Any):
        yield from super().choices(changelist)
        yield {
            "selected": self.used_parameters.get("has_feedback") == "false",
            "query_string": changelist.get_query_string({"has_feedback": "false"}, remove=["feedback"]),
            "display": "None given",
        }


class TagsFilter(FilterSetListFilter):
    """Tags: agents' tags as links, and a box for any tag (comma-separated: any of them)."""

    title = "tags"
    parameter_name = "tags"
    extra_parameters = ("tags_match",)
    template = "admin/steps/step/text_filter.html"

    def lookups(self, request, model_admin):
        return [(v, v) for v in agent_tags(organization_id=self.organization_id, project_ids=self.project_ids)]

    def has_output(self) -> bool:
        return True

    def choices(self, changelist: Any):
        self.hidden_params = [
            (key, value)
            for key, values in changelist.params.items()
            if key not in self.expected_parameters() and key != "p"
            for value in (values if isinstance(values, list) else [values])
        ]
        yield from super().choices(changelist)


PERIOD_CHOICES = {
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}


class CreatedFilter(FilterSetListFilter):
    """When: a recent period, or the `start`/`end` range the dashboard and errors pages link with."""

    title = "date"
    parameter_name = "period"
    extra_parameters = ("start", "end")

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in PERIOD_CHOICES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        params = {k: v for k, v in self.used_parameters.items() if k != "period"}
        period = self.used_parameters.get("period")
        if period:
            if period not in PERIOD_CHOICES:
                raise IncorrectLookupParameters({"period": [f"Choose one of {', '.join(PERIOD_CHOICES)}."]})
            params["start"] = (timezone.now() - PERIOD_CHOICES[period][1]).astimezone(UTC).isoformat()
        return apply_step_filters(queryset, params)

    def choices(self, changelist: Any):
        remove = self.expected_parameters()
        any_value = not self.used_parameters
        yield {"selected": any_value, "query_string": changelist.get_query_string(remove=remove), "display": "Any time"}
        start, end = self.used_parameters.get("start"), self.used_parameters.get("end")
        if start or end:
            yield {"selected": True, "query_string": changelist.get_query_string(), "display": _range_label(start, end)}
        for value, label in self.lookup_choices:
            yield {
                "selected": self.value() == value,
                "query_string": changelist.get_query_string({"period": value}, remove=remove),
                "display": label,
            }


def _range_label(start: str | None, end: str | None) -> str:
    def short(moment: str | None) -> str:
        if not moment:
            return "…"
        try:
            return datetime.fromisoformat(moment).astimezone(UTC).strftime("%b %d %H:%M")
        except ValueError:
            return moment

    return f"{short(start)} → {short(end)} UTC"


# Parameters the other pages link with that have no sidebar entry of their own.
HIDDEN_FILTERS = (
    "agent_id",
    "run_id",
    "request_id",
    "trace_id",
    "user_id",
    "conversation_id",
    "project_id",
    "model",
    "min_ttft_ms",
    "min_latency_ms",
)


class LinkedFilter(FilterSetListFilter):
    """agent/run/request/trace/user/conversation and `metadata.<key>` filters from links; shown only when set."""

    title = "also filtered by"
    parameter_name = "agent_id"
    extra_parameters = HIDDEN_FILTERS[1:]

    def __init__(self, request: HttpRequest, params: dict[str, list[str]], model: Any, model_admin: Any) -> None:
        self.metadata_keys = [key for key in params if key.startswith(METADATA_PREFIX)]
        super().__init__(request, params, model, model_admin)

    def expected_parameters(self) -> list[str]:
        return [*HIDDEN_FILTERS, *self.metadata_keys]

    def has_output(self) -> bool:
        return bool(self.used_parameters)

    def choices(self, changelist: Any):
        yield {
            "selected": False,
            "query_string": changelist.get_query_string(remove=self.expected_parameters()),
            "display": "Clear these",
        }
        for key, value in self.used_parameters.items():
            yield {
                "selected": True,
                "query_string": changelist.get_query_string(remove=[key]),
                "display": f"{key} = {value}  ✕",
            }


class StepPaginator(Paginator):
    """Counts at most COUNT_CAP rows (then estimates), and pages across organizations without a global sort.

    `merge_organizations`: the ids to merge per organization when no organization is chosen (None: one
    organization is already selected, or the order is not the default newest first).
    """

    def __init__(self, *args: Any, merge_organizations: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.merge_organizations = merge_organizations
        self.too_deep = False

    @cached_property
    def counted(self) -> CountResult:
        return capped_count(self.object_list, cap=COUNT_CAP)

    @cached_property
    def count(self) -> int:
        return self.counted.value

    @property
    def count_is_estimate(self) -> bool:
        return not self.counted.exact

    def get_elided_page_range(self, number: Any = 1, *, on_each_side: int = 3, on_ends: int = 2):
        """Estimated count: the pages around this one and an ellipsis, never a 'last page' that may not exist."""
        if not self.count_is_estimate:
            yield from super().get_elided_page_range(number, on_each_side=on_each_side, on_ends=on_ends)
            return
        number = int(number)
        if number > on_each_side + 2:
            yield 1
            yield self.ELLIPSIS
        last = MAX_OFFSET // self.per_page
        yield from range(max(1, number - on_each_side), min(number + on_each_side, last) + 1)
        if number + on_each_side < last:
            yield self.ELLIPSIS

    def validate_number(self, number: Any) -> int:
        # An estimated count may promise a page that turns out empty: show it empty rather than an error.
        if self.count_is_estimate:
            number = int(number)
            if number < 1:
                return super().validate_number(number)
            return number
        return super().validate_number(number)

    def page(self, number: Any) -> Page:
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        self.too_deep = bottom >= MAX_OFFSET
        if self.too_deep:
            return self._get_page([], number, self)
        return self._get_page(list(self._narrowed(top)[bottom:top]), number, self)

    def _narrowed(self, top: int) -> QuerySet:
        """The same rows for positions [0, top): across organizations, only rows at or after the merged threshold."""
        queryset = self.object_list
        if not self.merge_organizations or len(self.merge_organizations) > MERGE_MAX_ORGANIZATIONS:
            return queryset
        thresholds = []
        for organization_id in self.merge_organizations:
            # The top-th newest of one organization, through the (organization, created_at, id) index.
            nth = (
                queryset.filter(organization_id=organization_id)
                .order_by("-created_at", "-id")
                .values_list("created_at", flat=True)[top - 1 : top]
            )
            thresholds.extend(nth)
        if not thresholds:
            # No organization has `top` rows: the whole (small) result fits.
            return queryset.filter(organization_id__in=self.merge_organizations)
        # Each organization reaching `top` rows proves the global top-th row is at least as new as its own.
        return queryset.filter(organization_id__in=self.merge_organizations, created_at__gte=max(thresholds))
