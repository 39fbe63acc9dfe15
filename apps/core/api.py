"""Shared API building blocks."""

from typing import Any

from rest_framework import serializers


class StrictInputSerializer(serializers.Serializer):
    """An input serializer that names unknown fields instead of silently ignoring them."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["Expected a JSON object."]}, code="invalid"
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {
                    name: [f"Unknown field. Known fields: {', '.join(self.fields)}."]
                    for name in unknown
                }
            )
        return super().to_internal_value(data)
