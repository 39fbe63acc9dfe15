"""File reads. A user sees only their own files; anyone else's file is a 404, everywhere."""

import uuid
from typing import Any

import django_filters
from django.db.models import QuerySet

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError, NotFound, validation_summary
from apps.files.models import UserFile


class FileFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(field_name="name")
    source_task = django_filters.UUIDFilter(field_name="source_task_id")

    class Meta:
        model = UserFile
        fields = ["name", "source_task"]


def file_list(*, user: User, filters: dict[str, Any] | None = None) -> QuerySet[UserFile]:
    queryset = UserFile.objects.filter(owner=user)
    filterset = FileFilter(filters or {}, queryset=queryset)
    if not filterset.is_valid():
        fields = {name: [str(m) for m in messages] for name, messages in filterset.errors.items()}
        raise ApplicationError(
            f"Invalid filter: {validation_summary(fields)}", code="validation_error", fields=fields
        )
    return filterset.qs


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def file_get(*, user: User | int, file_id: uuid.UUID | str) -> UserFile:
    owner_id = user if isinstance(user, int) else user.id
    file_uuid = _as_uuid(str(file_id))
    found = UserFile.objects.filter(owner_id=owner_id, id=file_uuid).first() if file_uuid else None
    if found is None:
        raise NotFound("No such file.", code="file_not_found")
    return found


def file_resolve(*, owner_id: int, ref: str) -> UserFile:
    """The owner's file named by `ref`: its id, or the name it was uploaded under if only one
    of the owner's files has that name. Someone else's file is "no such file", like a missing one.
    """
    ref = str(ref).strip()
    file_uuid = _as_uuid(ref)
    if file_uuid is not None:
        return file_get(user=owner_id, file_id=file_uuid)
    matches = list(UserFile.objects.filter(owner_id=owner_id, name=ref).order_by("-created_at")[:2])
    if not matches:
        raise NotFound(f"No such file: {ref!r}.", code="file_not_found")
    if len(matches) > 1:
        raise ApplicationError(
            f"Several of your files are named {ref!r}; give the file's id instead.",
            code="ambiguous_file_name",
        )
    return matches[0]
