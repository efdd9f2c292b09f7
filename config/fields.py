"""Request fields that mean what the OpenAPI schema says they mean.

DRF's CharField turns a number or a boolean into its text and trims whitespace before checking blankness, so
`{"name": 0}` and `{"name": " "}` would be read differently from what a JSON schema ({"type": "string"},
{"minLength": 1}) says about them. These fields accept strings only, keep them as sent, and state "not blank"
as a pattern both Python and the ECMAScript regular expressions of OpenAPI read the same way.
"""

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

# A character that is not whitespace, spelled out: Python's and ECMAScript's \s differ on a few characters.
NOT_WHITESPACE = "[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


class StrictCharField(serializers.CharField):
    """A JSON string, kept as sent; with allow_blank=False (the default) it must hold a non-space character."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        validators = list(kwargs.pop("validators", []))
        if not kwargs.get("allow_blank", False):
            validators.append(RegexValidator(NOT_WHITESPACE, "This field may not be blank."))
        super().__init__(validators=validators, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only (DRF would also take "5" and 5.0)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number only (DRF would also take "1.5")."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false only (DRF would also take "yes", 1 and "on")."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data
