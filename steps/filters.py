"""The step filters: one django-filter FilterSet for the REST API, the reports and the admin (NetBox style).

`metadata.<key>=<value>` filters are dynamic (any key), so the FilterSet reads them from the data
itself; every other parameter is a declared filter. Invalid values never reach the database: the
form rejects them and `step_filter` raises a 400 naming each field.
"""

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import QueryDict
from django_filters.fields import IsoDateTimeField

from accounts.models import Organization
from accounts.selectors import project_scope, scoped_project_ids
from agents.models import StopReason
from config.errors import ApplicationError
from steps.models import Feedback, Step, StepStatus

METADATA_PREFIX = "metadata."
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-]{1,64}){0,4}$")
MAX_FILTER_VALUES = 100
# Largest min_ttft_ms / min_latency_ms: about 31 years, so the nanoseconds compared stay inside a 64-bit integer.
MAX_FILTER_NUMBER = 10**12


class StrictBooleanField(forms.Field):
    """true/false (also 1/0, yes/no); anything else is an error rather than silently ignored."""

    _VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

    def to_python(self, value: Any) -> bool | None:
        if value in (None, ""):
            return None
        if isinstance(value, bool):
            return value
        parsed = self._VALUES.get(str(value).strip().lower())
        if parsed is None:
            raise forms.ValidationError("Must be true or false.")
        return parsed


class MultiValueWidget(forms.TextInput):
    """Reads `?x=a,b`, `?x=a&x=b` and `?x[]=a` alike into one list of the comma-separated parts, as sent (empty
    parts included: they count towards the limit, and match nothing)."""

    def value_from_datadict(self, data: Any, files: Any, name: str) -> list[str] | None:
        raw = data.getlist(name) + data.getlist(f"{name}[]") if hasattr(data, "getlist") else [data.get(name)]
        values = [part for item in raw if item for part in str(item).split(",")]
        return values or None


def multi_value_pattern(*, choices: list[str] | None, max_length: int) -> str:
    """The regular expression of what a MultiValueField accepts (for the OpenAPI schema): up to MAX_FILTER_VALUES
    comma-separated parts, each empty or a choice (or any text without a comma, up to max_length characters)."""
    part = "(?:" + "|".join(re.escape(c) for c in choices) + ")?" if choices is not None else f"[^,]{{0,{max_length}}}"
    return f"^{part}(?:,{part}){{0,{MAX_FILTER_VALUES - 1}}}$"


class MultiValueField(forms.Field):
    widget = MultiValueWidget

    def __init__(self, *, choices: list[str] | None = None, max_length: int = 200, **kwargs: Any) -> None:
        self.allowed = choices
        self.max_length = max_length
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> list[str] | None:
        if not value:
            return None
        values = [value] if isinstance(value, str) else list(value)
        if len(values) > MAX_FILTER_VALUES:
            raise forms.ValidationError(f"At most {MAX_FILTER_VALUES} values.")
        for item in values:
            if len(item) > self.max_length:
                raise forms.ValidationError(f"Values are at most {self.max_length} characters.")
            if self.allowed is not None and item and item not in self.allowed:
                raise forms.ValidationError(f"'{item}' is not one of {', '.join(self.allowed)}.")
        return sorted({item for item in values if item}) or None


class MultiValueFilter(django_filters.Filter):
    """Matches any of the given values (`field__in`)."""

    field_class = MultiValueField

    def filter(self, qs: QuerySet, value: list[str] | None) -> QuerySet:
        if not value:
            return qs
        if len(value) == 1:
            return qs.filter(**{self.field_name: value[0]})
        return qs.filter(**{f"{self.field_name}__in": value})


class StrictBooleanFilter(django_filters.Filter):
    field_class = StrictBooleanField


def _is_postgres(qs: QuerySet) -> bool:
    from django.db import connections

    return connections[qs.db].vendor == "postgresql"


def _json_scalar_candidates(raw: str) -> list[Any]:
    """A query-string value as it may be stored: the string itself, and the number/boolean it spells."""
    candidates: list[Any] = [raw]
    if raw in {"true", "false", "null"} or re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", raw):
        parsed = json.loads(raw)
        if parsed is not None:
            candidates.append(parsed)
    return candidates


# The window a start/end may name. The reports round a bound out to whole hours, days and weeks; a week of
# margin inside what a datetime can hold keeps that arithmetic from overflowing at year 1 or 9999.
EARLIEST = datetime(1, 1, 8, tzinfo=UTC)
LATEST = datetime(9999, 12, 24, tzinfo=UTC)


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, converted to UTC.

    Any offset Python can parse (up to +-23:59) is accepted and normalized here, once: PostgreSQL refuses
    offsets beyond +-15:59 in a timestamp, and every later use (SQL, rollup arithmetic) sees plain UTC."""

    def to_python(self, value: Any) -> datetime | None:
        moment = super().to_python(value)
        if moment is None:
            return None
        message = f"Must be between {EARLIEST.isoformat()} and {LATEST.isoformat()}."
        try:
            moment = moment.astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01T00:00+05:00 is in year 0 in UTC
            raise ValidationError(message, code="invalid") from exc
        if not EARLIEST <= moment <= LATEST:
            raise ValidationError(message, code="invalid")
        return moment


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


class StepFilterSet(django_filters.FilterSet):
    """Every step filter of `GET /v1/steps`, the usage and errors reports, and the admin."""

    agent_id = MultiValueFilter(field_name="agent_id", help_text="Agent id.")
    run_id = MultiValueFilter(field_name="run_id", help_text="Run id.")
    project_id = MultiValueFilter(field_name="project_id", help_text="Project id.")
    model = MultiValueFilter(field_name="model", help_text="Model name as reported, e.g. gpt-4o-mini.")
    model_handle = MultiValueFilter(field_name="model_handle", help_text="provider/model, e.g. openai/gpt-4o-mini.")
    provider = MultiValueFilter(field_name="provider_name", help_text="Provider name, e.g. openai.")
    status = MultiValueFilter(field_name="status", choices=StepStatus.values, help_text="Step status.")
    stop_reason = MultiValueFilter(field_name="stop_reason", choices=StopReason.values, help_text="Stop reason.")
    error_type = MultiValueFilter(field_name="error_type", help_text="Error type, e.g. rate_limit_error.")
    feedback = MultiValueFilter(field_name="feedback", choices=Feedback.values, help_text="positive or negative.")
    has_feedback = StrictBooleanFilter(method="filter_has_feedback", help_text="true: any feedback; false: none.")
    tags = MultiValueFilter(method="filter_tags", help_text="Tags; any of them match unless tags_match=all.")
    tags_match = django_filters.ChoiceFilter(
        choices=[("any", "any"), ("all", "all")], method="filter_noop", help_text="any (default) or all."
    )
    request_id = MultiValueFilter(field_name="request_id", max_length=128, help_text="Request id (X-Request-ID).")
    trace_id = MultiValueFilter(field_name="trace_id", max_length=32, help_text="OpenTelemetry trace id (32 hex).")
    user_id = MultiValueFilter(field_name="user_id", help_text="End user id (X-User-ID).")
    conversation_id = MultiValueFilter(field_name="conversation_id", help_text="Conversation or session id.")
    start = UtcDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="ISO 8601; steps created at or after (inclusive)."
    )
    end = UtcDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="ISO 8601; steps created before (exclusive)."
    )
    min_ttft_ms = django_filters.NumberFilter(
        method="filter_min_ns", min_value=0, max_value=MAX_FILTER_NUMBER, help_text="Time to first token at least (ms)."
    )
    min_latency_ms = django_filters.NumberFilter(
        method="filter_min_ns", min_value=0, max_value=MAX_FILTER_NUMBER, help_text="Latency at least (ms)."
    )

    class Meta:
        model = Step
        fields: list[str] = []

    # Parameters whose values a filter reads but that are not filters of their own.
    NON_FILTERS = frozenset({"tags_match"})

    def get_form_class(self) -> type[forms.Form]:
        """Built once per class: the form fields depend on the declared filters only, and building them
        (labels, widgets) took longer than running the query of a step list page."""
        form_class = type(self).__dict__.get("_form_class")
        if form_class is None:
            form_class = super().get_form_class()
            type(self)._form_class = form_class
        return form_class

    def filter_noop(self, qs: QuerySet, name: str, value: Any) -> QuerySet:
        return qs

    def filter_has_feedback(self, qs: QuerySet, name: str, value: bool | None) -> QuerySet:
        if value is None:
            return qs
        return qs.filter(feedback__isnull=not value)

    def filter_min_ns(self, qs: QuerySet, name: str, value: Decimal | None) -> QuerySet:
        if value is None:
            return qs
        column = "ttft_ns" if name == "min_ttft_ms" else "latency_ns"
        return qs.filter(**{f"{column}__gte": int(value * 1_000_000)})

    def filter_tags(self, qs: QuerySet, name: str, value: list[str] | None) -> QuerySet:
        if not value:
            return qs
        match_all = self.form.cleaned_data.get("tags_match") == "all"
        if _is_postgres(qs):
            # jsonb @> / ?| use the GIN index on tags.
            return qs.filter(tags__contains=value) if match_all else qs.filter(tags__has_any_keys=value)
        # SQLite keeps JSON as text: match each tag as a quoted JSON string inside the list.
        qs = qs.annotate(_tags_text=Cast("tags", TextField()))
        conditions = [Q(_tags_text__contains=json.dumps(tag)) for tag in value]
        combined = conditions[0]
        for condition in conditions[1:]:
            combined = (combined & condition) if match_all else (combined | condition)
        return qs.filter(combined)

    def clean_metadata(self) -> dict[str, str]:
        """The `metadata.<key>=<value>` pairs of the data; malformed ones land in `metadata_errors`."""
        pairs: dict[str, str] = {}
        self.metadata_errors: dict[str, list[str]] = {}
        for key in self.data:
            if not key.startswith(METADATA_PREFIX):
                continue
            path = key[len(METADATA_PREFIX) :]
            value = self.data.get(key)
            if not _METADATA_KEY.match(path):
                self.metadata_errors[key] = ["Metadata keys are letters, digits, _ and - (dots for nesting)."]
            elif len(value) > 500:
                self.metadata_errors[key] = ["At most 500 characters."]
            else:
                pairs[path] = value
        return pairs

    def is_valid(self) -> bool:
        valid = super().is_valid()
        self.metadata = self.clean_metadata()
        return valid and not self.metadata_errors

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = super().filter_queryset(queryset)
        postgres = _is_postgres(queryset)
        for path, raw in self.metadata.items():
            keys = path.split(".")
            condition = Q()
            for candidate in _json_scalar_candidates(raw):
                if postgres:
                    nested: Any = candidate
                    for key in reversed(keys):
                        nested = {key: nested}
                    condition |= Q(metadata__contains=nested)  # @> uses the GIN index
                else:
                    condition |= Q(**{"metadata__" + "__".join(keys): candidate})
            queryset = queryset.filter(condition)
        return queryset

    def active_filters(self) -> set[str]:
        """The names of the filters that constrain the result (after validation)."""
        active = {name for name, value in self.form.cleaned_data.items() if value not in (None, "", [])}
        active -= self.NON_FILTERS
        active |= {METADATA_PREFIX + key for key in self.metadata}
        return active


def _as_querydict(params: Mapping[str, Any] | QueryDict) -> QueryDict:
    if isinstance(params, QueryDict):
        return params
    data = QueryDict(mutable=True)
    for key, value in params.items():
        if isinstance(value, list | tuple):
            data.setlist(key, [_as_param(v) for v in value])
        elif value is not None:
            data[key] = _as_param(value)
    return data


def _as_param(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def filter_errors(filterset: StepFilterSet) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {field: list(messages) for field, messages in filterset.form.errors.items()}
    errors.update(getattr(filterset, "metadata_errors", {}))
    return errors


def step_filterset(
    *, organization: Organization, params: Mapping[str, Any] | QueryDict, queryset: QuerySet | None = None
) -> StepFilterSet:
    """A validated StepFilterSet over `organization`'s steps; invalid values raise a 400 naming each field."""
    base = queryset if queryset is not None else Step.objects.all()
    data, scoped = _as_querydict(params), project_scope(organization)
    if scoped:
        # A project-limited API key (or console member): the asked projects among its own, else all its own,
        # never another (so the rollup path narrows too).
        allowed = scoped_project_ids(organization) or []
        raw = data.getlist("project_id") + data.getlist("project_id[]")
        asked = {value for item in raw for value in str(item).split(",") if value}
        data = data.copy()
        data.pop("project_id[]", None)
        data.setlist("project_id", sorted(asked & set(allowed)) or allowed)
    filterset = StepFilterSet(data=data, queryset=base.filter(organization=organization, **scoped))
    if not filterset.is_valid():
        raise ApplicationError("Invalid query parameters.", extra=filter_errors(filterset))
    return filterset


FILTER_NAMES = frozenset(StepFilterSet.base_filters)


def is_filter_param(name: str) -> bool:
    """Whether a query parameter is a step filter (declared, or metadata.<key>)."""
    return name in FILTER_NAMES or name.rstrip("[]") in FILTER_NAMES or name.startswith(METADATA_PREFIX)
