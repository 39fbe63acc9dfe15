from pathlib import Path
from typing import Any

import pytest

from tests.support.files import use_media_root


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> Path:
    return use_media_root(settings, tmp_path)
