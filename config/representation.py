"""Serializer output without DRF's per-call field machinery, for the hot read endpoints.

A DRF serializer builds its fields (deep copies, model-field introspection) every time it is
instantiated and walks them per row: about 1 ms per ModelSerializer instance and 0.2 ms per row,
most of a response that the database answers in well under a millisecond.
`Representation(SerializerClass)` reads the serializer's fields once and renders instances to
exactly what `SerializerClass(instance).data` gives; the serializer stays the one definition of the
shape (and of the OpenAPI schema).

Field types with a known plain rendering are rendered directly (a string column under a CharField
needs nothing at all); any other field falls back to its own `to_representation`, so the output
never differs from the serializer's.
"""

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from rest_framework import fields, serializers
from rest_framework.settings import api_settings

Converter = Callable[[Any], Any] | None
# Model fields whose Python values already are what the matching DRF field renders.
_STRING_COLUMNS = (models.CharField, models.TextField)
_INTEGER_COLUMNS = (models.IntegerField,)  # BigInteger, PositiveSmallInteger, ... are subclasses


def iso_datetime(value: datetime) -> str:
    """As DRF's DateTimeField renders it under USE_TZ with TIME_ZONE=UTC: ISO 8601 in UTC with a Z."""
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _column(model: type[models.Model] | None, attr: str) -> models.Field | None:
    """The concrete model field stored under `attr` (a foreign key's attname gives its target column)."""
    if model is None:
        return None
    try:
        field = model._meta.get_field(attr)
    except FieldDoesNotExist:
        return None
    if not getattr(field, "concrete", False):
        return None
    if field.is_relation:
        return field.target_field if field.attname == attr else None
    return field


def _converter(field: fields.Field, column: models.Field | None) -> Converter:
    """A function rendering a non-None attribute value the way `field` does; None when no conversion is needed."""
    kind = type(field)
    if kind is fields.CharField and isinstance(column, _STRING_COLUMNS):
        return None
    if issubclass(kind, fields.IntegerField) and isinstance(column, _INTEGER_COLUMNS):
        return None
    if kind is fields.BooleanField and isinstance(column, models.BooleanField):
        return None
    if kind in (fields.JSONField, fields.ReadOnlyField) and not getattr(field, "binary", False):
        return None
    if kind is fields.DateTimeField:
        iso = getattr(field, "format", api_settings.DATETIME_FORMAT) == fields.ISO_8601
        if iso and settings.USE_TZ and settings.TIME_ZONE == "UTC" and getattr(field, "timezone", None) is None:
            return iso_datetime
    if kind is fields.CharField:
        return str
    if kind is fields.ChoiceField:
        choices = field.choice_strings_to_values
        return lambda value: value if value == "" else choices.get(str(value), value)
    if kind is fields.DecimalField and not field.coerce_to_string:
        # A quantized Decimal, which the JSON renderer writes as a float.
        render = field.to_representation
        return lambda value: float(render(value)) if isinstance(value, Decimal | int | float) else render(value)
    return field.to_representation


def _is_char(field: fields.Field) -> bool:
    return type(field) is fields.CharField


def _display_of(model: type[models.Model] | None, attr: str) -> tuple[str, Callable[[Any], Any]] | None:
    """For a `get_<field>_display` source: the field's attname and its label lookup (as Django renders it)."""
    if model is None or not (attr.startswith("get_") and attr.endswith("_display")):
        return None
    column = _column(model, attr[4 : -len("_display")])
    if column is None or not column.choices:
        return None
    labels = dict(column.flatchoices)
    return column.attname, lambda value: str(labels.get(value, value))


class Representation:
    """Renders instances (model instances or dicts) as `serializer_class(instance).data` does."""

    def __init__(self, serializer_class: type[serializers.Serializer]) -> None:
        self.serializer_class = serializer_class
        self._plan: list[tuple[str, str | None, Converter]] | None = None

    def _build(self) -> list[tuple[str, str | None, Converter]]:
        """Per output key: the attribute to read and how to convert it, or (None, a function of the instance)."""
        serializer = self.serializer_class()
        model = getattr(getattr(serializer, "Meta", None), "model", None)
        plan: list[tuple[str, str | None, Converter]] = []
        for name, field in serializer.fields.items():
            if field.write_only:
                continue
            if isinstance(field, fields.SerializerMethodField):
                plan.append((name, None, getattr(serializer, field.method_name)))
            elif isinstance(field, serializers.BaseSerializer) or len(field.source_attrs) != 1:
                plan.append((name, None, _fallback(field)))
            else:
                attr = field.source_attrs[0]
                column = _column(model, attr)
                display = _display_of(model, attr) if _is_char(field) else None
                if display is not None:  # get_<field>_display, read from the choices once
                    plan.append((name, display[0], display[1]))
                elif model is not None and column is None:  # a method or property: DRF calls callables
                    plan.append((name, None, _called(attr, _converter(field, None) or _same)))
                else:
                    plan.append((name, attr, _converter(field, column)))
        return plan

    @property
    def plan(self) -> list[tuple[str, str | None, Converter]]:
        if self._plan is None:  # built lazily: the apps must be ready
            self._plan = self._build()
        return self._plan

    def one(self, instance: Any) -> dict[str, Any]:
        return self.many([instance])[0]

    def many(self, instances: Iterable[Any]) -> list[dict[str, Any]]:
        plan = self.plan
        rows = []
        for instance in instances:
            values = instance if isinstance(instance, dict) else instance.__dict__
            row = {}
            for name, attr, convert in plan:
                if attr is None:
                    row[name] = convert(instance)
                    continue
                value = values[attr] if attr in values else getattr(instance, attr)
                row[name] = value if convert is None or value is None else convert(value)
            rows.append(row)
        return rows


def _same(value: Any) -> Any:
    return value


def _called(attr: str, convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def render(instance: Any) -> Any:
        value = getattr(instance, attr)
        if callable(value):
            value = value()
        return None if value is None else convert(value)

    return render


def _fallback(field: fields.Field) -> Callable[[Any], Any]:
    def render(instance: Any) -> Any:
        value = field.get_attribute(instance)
        return None if value is None else field.to_representation(value)

    return render
