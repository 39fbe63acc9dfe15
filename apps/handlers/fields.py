"""Payload fields shared by the built-in task types: strict numbers, booleans and strings
(TextField, from apps.core.api), http(s) URLs, email addresses. Each error names the rule it
enforces."""

import ipaddress
import math
import re
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator, validate_email
from rest_framework import serializers

from apps.core.api import TextField
from apps.handlers import net

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class NumberField(serializers.FloatField):
    """A JSON number (not a boolean or a string, not NaN or infinite); `positive=True` excludes
    0. Payloads are JSON, so a number comes as a number: DRF's FloatField takes `true` as 1.0
    and strings through float(), so "1_0" became 10.0."""

    def __init__(self, *, positive: bool = False, **kwargs: Any) -> None:
        self.positive = positive
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, str):
            raise serializers.ValidationError("Must be a number, not a string.", code="invalid")
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise serializers.ValidationError("Must be a number.", code="invalid")
        # Here, for a message that says why (FloatField's is "A valid number is required.").
        if isinstance(data, float) and not math.isfinite(data):
            raise serializers.ValidationError("Must be a finite number.", code="invalid")
        value = super().to_internal_value(data)
        if self.positive and value <= 0:
            raise serializers.ValidationError(
                "Must be positive (greater than 0).", code="not_positive"
            )
        return value


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError("Must be true or false.", code="invalid")
        return data


class SingleLineField(TextField):
    """Text that goes into a header: no line breaks or other control characters."""

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if _CONTROL.search(value.replace("\t", " ")):
            raise serializers.ValidationError(
                "Must be a single line (no line breaks or control characters).",
                code="control_characters",
            )
        return value


def is_single_line(value: str) -> bool:
    return not _CONTROL.search(value.replace("\t", " "))


class HttpUrlField(serializers.CharField):
    """An absolute http or https URL. A literal address the SSRF guard would refuse (e.g.
    127.0.0.1, 169.254.169.254) is refused here already; names are checked when the task runs,
    on every request and redirect."""

    _validator = URLValidator(schemes=["http", "https"])

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 2048)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a URL string.", code="invalid")
        value = super().to_internal_value(data)
        try:
            self._validator(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(
                f"Not a valid http or https URL: {value!r}.", code="invalid_url"
            ) from exc
        try:
            host = net.parse_url(value).host
        except net.InvalidUrl as exc:  # e.g. a port past 65535, which URLValidator lets by
            raise serializers.ValidationError(str(exc), code="invalid_url") from exc
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return value
        if not net.address_allowed(literal):
            raise serializers.ValidationError(
                f"{host} is not a public address; URLs must lead to the public internet.",
                code="address_not_allowed",
            )
        return value


class RecipientsField(serializers.Field):
    """One email address, or a list of them (at most `max_recipients`)."""

    def __init__(self, *, max_recipients: int = 50, **kwargs: Any) -> None:
        self.max_recipients = max_recipients
        kwargs.setdefault(
            "help_text", "An email address, or a list of addresses (bare, no display names)."
        )
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        single = isinstance(data, str)
        items = [data] if single else data
        if not isinstance(items, list) or not items:
            raise serializers.ValidationError(
                "Give an email address or a non-empty list of addresses.", code="invalid"
            )
        if len(items) > self.max_recipients:
            raise serializers.ValidationError(
                f"At most {self.max_recipients} recipients.", code="too_many"
            )
        errors: dict[int, list[str]] = {}
        addresses: list[str] = []
        for index, item in enumerate(items):
            message = _address_error(item)
            if message:
                errors[index] = [message]
            elif item.strip().lower() not in {a.lower() for a in addresses}:
                addresses.append(item.strip())
        if errors and single:
            raise serializers.ValidationError(errors[0])
        if errors:
            raise serializers.ValidationError({str(i): e for i, e in errors.items()})
        return addresses

    def to_representation(self, value: Any) -> Any:
        return value


def _address_error(item: Any) -> str:
    if not isinstance(item, str):
        return "Must be an email address (a string)."
    if not is_single_line(item):
        return "Must be a single email address (no line breaks or control characters)."
    try:
        validate_email(item.strip())
    except DjangoValidationError:
        return f"{item.strip()!r} is not a valid email address."
    return ""
