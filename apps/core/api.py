"""Shared API building blocks."""

import json
from typing import Any, NoReturn

from rest_framework import serializers

from apps.core.parsers import MAX_JSON_DEPTH, DuplicateKeyError, json_problem, unique_keys

# Fields that take a form field's repeated values as their list.
_MANY_VALUED = (
    serializers.ListField,
    serializers.ListSerializer,
    serializers.ManyRelatedField,
    serializers.MultipleChoiceField,
)


class StrictInputSerializer(serializers.Serializer):
    """An input serializer that names unknown fields instead of silently ignoring them, and (in
    form input) fields sent more than once, of which DRF would keep the last value."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["Expected a JSON object."]}, code="invalid"
            )
        known = [name for name, field in self.fields.items() if not field.read_only]
        unknown = f"Unknown field. Known fields: {', '.join(known)}." if known else None
        errors = {
            name: [unknown or "Unknown field. This takes no fields."]
            for name in sorted(set(data) - set(known))
        }
        if hasattr(data, "getlist"):  # a QueryDict: form or multipart input
            errors |= self._repeated(data)
        if errors:
            raise serializers.ValidationError(errors)
        return super().to_internal_value(data)

    def _repeated(self, data: Any) -> dict[str, list[str]]:
        errors: dict[str, list[str]] = {}
        for name, field in self.fields.items():
            count = len(data.getlist(name))
            if count > 1 and not isinstance(field, _MANY_VALUED):
                errors[name] = [
                    f"Sent {count} files: send one file per request."
                    if isinstance(field, serializers.FileField)
                    else f"Sent {count} times: send one value."
                ]
        return errors


class TextField(serializers.CharField):
    """A JSON string. DRF's CharField turns numbers into text (`"subject": 42` became "42"), so a
    client's mistake was stored and run as if it meant it."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError(
                f"Must be a string, not {json_type_name(data)}.", code="invalid"
            )
        return str(super().to_internal_value(data))


def json_type_name(value: Any) -> str:
    """What a JSON value is, with its article, for messages: "a number", "an object"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


class JSONValueField(serializers.JSONField):
    """Any JSON value the database can store, from a JSON body or a form field alike.

    DRF's JSONField parses a form field with json.loads as it is: NaN and Infinity (which jsonb
    refuses), NUL and lone surrogates, and nesting deep enough to exhaust the stack all got
    through to a 500, and of a key given twice the last value was kept. (A JSON body is checked
    by apps.core.parsers.JSONParser already.)
    """

    default_error_messages = {
        "invalid": "Value must be valid JSON.",
        "too_deep": f"Nested more than {MAX_JSON_DEPTH} levels deep.",
    }

    def to_internal_value(self, data: Any) -> Any:
        if getattr(data, "is_json_string", False):
            try:
                data = json.loads(
                    str(data), parse_constant=_refuse_constant, object_pairs_hook=unique_keys
                )
            except RecursionError:
                self.fail("too_deep")
            except DuplicateKeyError as exc:
                raise serializers.ValidationError(str(exc), code="invalid") from None
            except ValueError:
                self.fail("invalid")
        problem = json_problem(data)
        if problem is not None:
            raise serializers.ValidationError(problem, code="invalid")
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError):
            self.fail("invalid")
        return data
