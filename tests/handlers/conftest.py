from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.handlers import limits
from tests.support.files import use_media_root
from tests.support.http import HttpServer, http_server
from tests.support.smtp import SmtpServer


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # The users these tests make need no real password hashing (it costs ~0.5 s per user).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def type_limits_enforced() -> Iterator[None]:
    """A test that stopped Redis does not leave the task types' rate limits off for the next."""
    limits.fail_open.reset()
    yield
    limits.fail_open.reset()


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> Path:
    return use_media_root(settings, tmp_path)


@pytest.fixture
def smtp(settings: Any) -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1, and the settings pointing at it."""
    server = SmtpServer().start()
    settings.EMAIL_HOST = server.host
    settings.EMAIL_PORT = server.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    settings.DEFAULT_FROM_EMAIL = "TaskFlow <tasks@taskflow.test>"
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def web(settings: Any) -> Iterator[HttpServer]:
    """A real HTTP server on 127.0.0.1, which the SSRF guard is told to allow (loopback only)."""
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with http_server() as server:
        yield server
