"""Users' files for tests, made through the service (as uploads make them)."""

from pathlib import Path
from typing import Any

from apps.accounts.models import User
from apps.files.models import UserFile
from apps.files.services import file_create


def use_media_root(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    settings.MEDIA_ROOT = str(root)
    return root


def make_file(
    owner: User, name: str = "notes.txt", content: bytes = b"hello\n", content_type: str = ""
) -> UserFile:
    return file_create(owner_id=owner.id, name=name, content=content, content_type=content_type)
