"""A real HTTP service that receives webhook tasks, as a team's own service would, on 127.0.0.1.

Every request's X-TaskFlow-Signature is checked with `apps.handlers.signing.verify` (the code that
docs/handlers.md gives receivers); a request whose signature does not verify is answered 401.

POST /ok                 200 with JSON {"echo": <payload>, "attempt": n}
POST /status/N           status N, a short text body; ?retry_after=S adds Retry-After: S
POST /flaky/KEY/N        503 for the first N requests of KEY, then as /ok
POST /slow               answers only once the test ends (a timeout)
POST /text               200 with a text body (not JSON)
POST /empty              204 No Content
POST /redirect           302 to /ok
"""

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from apps.handlers.signing import SIGNATURE_HEADER, verify


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_valid: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _answer(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, document: Any) -> None:
        self._answer(status, json.dumps(document).encode(), "application/json")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        valid = verify(self.server.secret, self.headers.get(SIGNATURE_HEADER, ""), body)
        with self.server.lock:
            self.server.received.append(Received(url.path, dict(self.headers), body, valid))
        if not valid:
            self._json(401, {"error": "bad signature"})
            return
        parts = [p for p in url.path.split("/") if p]
        head = parts[0] if parts else ""
        try:
            if head == "ok":
                task = json.loads(body)
                self._json(200, {"echo": task["payload"], "attempt": task["attempt"]})
            elif head == "status":
                extra = {"Retry_After": query["retry_after"]} if "retry_after" in query else {}
                self._answer(int(parts[1]), f"status {parts[1]}".encode(), "text/plain", **extra)
            elif head == "flaky":
                key, fail_times = parts[1], int(parts[2])
                with self.server.lock:
                    self.server.flaky[key] += 1
                    count = self.server.flaky[key]
                if count <= fail_times:
                    self._answer(503, b"planned outage", "text/plain")
                else:
                    task = json.loads(body)
                    self._json(200, {"echo": task["payload"], "attempt": task["attempt"]})
            elif head == "slow":
                self.server.release.wait(timeout=30)
                self._json(200, {"late": True})
            elif head == "text":
                self._answer(200, b"<html>all good</html>", "text/html")
            elif head == "empty":
                self.send_response(204)
                self.end_headers()
            elif head == "redirect":
                self._answer(302, b"", "text/plain", Location="/ok")
            else:
                self._answer(404, b"no such path", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker gave up (its timeout)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secret: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secret = secret
        self.received: list[Received] = []
        self.flaky: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()


class WebhookReceiver:
    def __init__(self, secret: str) -> None:
        self._server = _Server(secret)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def received(self) -> list[Received]:
        with self._server.lock:
            return list(self._server.received)

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def webhook_receiver(secret: str) -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(secret).start()
    try:
        yield server
    finally:
        server.stop()
