"""File writes: store an upload or a task's output, delete a file.

The bytes go through Django's storage API under a key we make up; the row is written after the
bytes are stored, so a row always has its bytes. A crash between the two leaves an object with no
row (an orphan to sweep), never a row without its object.
"""

import hashlib
import logging
import mimetypes
import re
import unicodedata
import uuid
from collections.abc import Iterator
from typing import IO, Any

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from apps.core.exceptions import ApplicationError
from apps.files.models import UserFile

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_CONTENT_TYPE = re.compile(
    r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+(\s*;\s*[\w.+-]+=(\"[^\"]*\"|[\w.+-]+))*$"
)


class FileTooLarge(ApplicationError):
    status_code = 413

    def __init__(self, limit: int, *, field: str = "file") -> None:
        super().__init__(
            f"The file is larger than the limit of {limit} bytes.",
            code="file_too_large",
            fields={field: [f"At most {limit} bytes."]},
            extra={"limit_bytes": limit},
        )


def clean_name(name: str, *, default: str = "file") -> str:
    """A display name: the last path component, no control characters, at most 255 characters.

    Only ever metadata (the storage key is ours), but a name like `../../etc/passwd` would still
    mislead whoever downloads it; it becomes `passwd`.
    """
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if not name or set(name) <= {"."}:
        return default
    if len(name) > 255:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem[: 254 - len(ext)]}.{ext}" if dot and len(ext) < 20 else name[:255]
    return name


def clean_content_type(declared: str | None, name: str) -> str:
    declared = (declared or "").strip()
    if declared and len(declared) <= 255 and _CONTENT_TYPE.match(declared):
        return declared
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or DEFAULT_CONTENT_TYPE


def _measure(content: IO[bytes], max_bytes: int | None) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    content.seek(0)
    while chunk := content.read(CHUNK_SIZE):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise FileTooLarge(max_bytes)
        digest.update(chunk)
    content.seek(0)
    return size, digest.hexdigest()


def file_create(
    *,
    owner_id: int,
    name: str,
    content: IO[bytes] | bytes,
    content_type: str | None = None,
    source_task_id: uuid.UUID | None = None,
    source_key: str = "",
    max_bytes: int | None = None,
) -> UserFile:
    """Store `content` as a new file of the owner.

    With a source task and key, storing the same output of the same task again returns the file
    stored the first time (a retried attempt does not make a second copy).
    """
    if source_task_id is not None and source_key:
        existing = UserFile.objects.filter(
            source_task_id=source_task_id, source_key=source_key
        ).first()
        if existing is not None:
            return existing
    stream: IO[bytes] = ContentFile(content) if isinstance(content, bytes) else content
    size, sha256 = _measure(stream, max_bytes)
    name = clean_name(name)
    file_id = uuid.uuid4()
    key = default_storage.save(f"files/{owner_id}/{file_id.hex}", File(stream))
    try:
        with transaction.atomic():
            return UserFile.objects.create(
                id=file_id,
                owner_id=owner_id,
                name=name,
                size=size,
                content_type=clean_content_type(content_type, name),
                storage_key=key,
                sha256=sha256,
                source_task_id=source_task_id,
                source_key=source_key,
            )
    except IntegrityError:
        default_storage.delete(key)
        if source_task_id is not None and source_key:
            # Another attempt of the same task stored this output first.
            return UserFile.objects.get(source_task_id=source_task_id, source_key=source_key)
        raise
    except BaseException:
        default_storage.delete(key)
        raise


def file_delete(*, file: UserFile) -> None:
    """Delete the row now and the bytes once the deletion has committed."""
    key = file.storage_key
    with transaction.atomic():
        UserFile.objects.filter(id=file.id).delete()
        transaction.on_commit(lambda: default_storage.delete(key))


def file_open(file: UserFile) -> IO[bytes]:
    """The file's bytes, to read (and close) by the caller."""
    return default_storage.open(file.storage_key, "rb")


def file_chunks(file: UserFile) -> Iterator[bytes]:
    with file_open(file) as handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


def file_summary(file: UserFile) -> dict[str, Any]:
    """How a task's result links a file."""
    return {
        "id": str(file.id),
        "name": file.name,
        "size": file.size,
        "content_type": file.content_type,
        "sha256": file.sha256,
        "download_url": file.download_path,
    }
