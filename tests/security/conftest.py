from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.files import use_media_root


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """PBKDF2 with few iterations: a hash that any TaskFlow process verifies, made in no time."""
    settings.PASSWORD_HASHERS = ["tests.security.support.FastPBKDF2PasswordHasher"]


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> Path:
    return use_media_root(settings, tmp_path)


@pytest.fixture
def rates(settings: Any) -> Callable[..., None]:
    """Set rate limits for this test only: rates(login_account="3/min", user=None)."""

    def set_rates(**scopes: str | None) -> None:
        framework = settings.REST_FRAMEWORK
        settings.REST_FRAMEWORK = {
            **framework,
            "DEFAULT_THROTTLE_RATES": {**framework["DEFAULT_THROTTLE_RATES"], **scopes},
        }

    return set_rates
