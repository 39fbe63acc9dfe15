"""A payload field that names one of the owner's files, checked when the task is created."""

from typing import Any

from rest_framework import serializers

from apps.core.exceptions import ApplicationError
from apps.files.selectors import file_resolve


class FileRefField(serializers.CharField):
    """The id of one of the owner's files, or the name it was uploaded under if unambiguous.

    Validated against the serializer's `context["owner"]`; the validated value is always the
    file's id, so the task keeps pointing at the file it was created with. Another user's file is
    "no such file", exactly like a missing one.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 255)
        kwargs.setdefault("help_text", "A file id from /api/files (or its name, if unambiguous).")
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        ref = super().to_internal_value(data)
        owner = self.context.get("owner")
        if owner is None:
            raise serializers.ValidationError("No such file.", code="file_not_found")
        try:
            found = file_resolve(owner_id=owner.id, ref=ref)
        except ApplicationError as exc:
            raise serializers.ValidationError(exc.message, code=exc.code) from exc
        return str(found.id)
