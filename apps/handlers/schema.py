"""A JSON Schema for a handler's payload serializer, for GET /api/task-types."""

from typing import Any

from rest_framework import serializers

from apps.handlers.registry import AnyPayload

_NOT_DECLARED = object()

_TYPES: list[tuple[type[serializers.Field], dict[str, Any]]] = [
    (serializers.BooleanField, {"type": "boolean"}),
    (serializers.IntegerField, {"type": "integer"}),
    (serializers.FloatField, {"type": "number"}),
    (serializers.DecimalField, {"type": "number"}),
    (serializers.EmailField, {"type": "string", "format": "email"}),
    (serializers.URLField, {"type": "string", "format": "uri"}),
    (serializers.UUIDField, {"type": "string", "format": "uuid"}),
    (serializers.DateTimeField, {"type": "string", "format": "date-time"}),
    (serializers.ChoiceField, {"type": "string"}),
    (serializers.CharField, {"type": "string"}),
    (serializers.DictField, {"type": "object"}),
    (serializers.JSONField, {}),
]


def field_schema(field: serializers.Field) -> dict[str, Any]:
    if isinstance(field, serializers.ListField):
        schema: dict[str, Any] = {"type": "array", "items": field_schema(field.child)}
        if field.min_length is not None:
            schema["minItems"] = field.min_length
        if field.max_length is not None:
            schema["maxItems"] = field.max_length
    elif isinstance(field, serializers.Serializer):
        schema = serializer_schema(type(field))
    else:
        schema = next((dict(s) for cls, s in _TYPES if isinstance(field, cls)), {})
    if isinstance(field, serializers.ChoiceField):
        schema["enum"] = list(field.choices)
    for attr, key in (("min_value", "minimum"), ("max_value", "maximum")):
        value = getattr(field, attr, None)
        if value is not None:
            schema[key] = value
    if isinstance(field, serializers.CharField) and field.max_length is not None:
        schema["maxLength"] = field.max_length
    if field.help_text:
        schema["description"] = str(field.help_text)
    if field.default is not serializers.empty:
        default = field.default() if callable(field.default) else field.default
        schema["default"] = default
    return schema


def serializer_schema(serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    if issubclass(serializer_class, AnyPayload):
        return {"type": "object"}
    declared: Any = getattr(serializer_class, "json_schema", _NOT_DECLARED)
    if declared is not _NOT_DECLARED:  # a webhook type's payload: its JSON Schema as staff gave it
        return dict(declared) if declared else {"type": "object"}
    serializer = serializer_class()
    properties = {name: field_schema(field) for name, field in serializer.fields.items()}
    required = [name for name, field in serializer.fields.items() if field.required]
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if serializer_class.__doc__:
        schema["description"] = serializer_class.__doc__.strip()
    return schema


def payload_json_schema(serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    return serializer_schema(serializer_class)
