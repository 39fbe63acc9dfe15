from pathlib import Path
from typing import Any

import pytest

from tests.support.files import use_media_root


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # The users these tests make need no real password hashing (it costs ~0.5 s per user).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> Path:
    return use_media_root(settings, tmp_path)
