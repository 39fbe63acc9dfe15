"""A receiver of completion callbacks: a real HTTP server on 127.0.0.1, which the SSRF guard is
told to allow (as tests/handlers' `web` fixture does), answering as each path says."""

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    """/ok: 200. /status/N: N (3xx: to /ok). /flaky/N: 500 for the first N POSTs to the path,
    then 200."""

    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        parts = [p for p in self.path.split("/") if p]
        with self.server.lock:
            self.server.posts.append(Post(self.path, dict(self.headers), body))
            self.server.seen[self.path] += 1
            seen = self.server.seen[self.path]
        status = 200
        if parts and parts[0] == "status":
            status = int(parts[1])
        elif parts and parts[0] == "flaky" and seen <= int(parts[1]):
            status = 500
        answer = b"x" * 5000 if status >= 300 else b"thanks"  # an error body longer than kept
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[Post] = []
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()


class Receiver:
    def __init__(self) -> None:
        self._server = _Server()
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def posts(self) -> list[Post]:
        with self._server.lock:
            return list(self._server.posts)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def receiver_unallowed() -> Iterator[Receiver]:
    """The receiver, with the SSRF guard as in production (loopback refused)."""
    server = Receiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def receiver(settings: Any, receiver_unallowed: Receiver) -> Receiver:
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    return receiver_unallowed


@pytest.fixture(autouse=True)
def fast_callback_retries(settings: Any) -> None:
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 0.01
    settings.CALLBACK_BACKOFF_CAP_SECONDS = 0.05
