"""A real HTTP server for tests, on 127.0.0.1, with the behaviours downloads and fetches meet:

/bytes/N           N bytes (see `body_of`), with Content-Length; ?name= sets Content-Disposition,
                   ?type= the Content-Type
/redirect?to=URL   302 (or ?code=) to URL
/loop              302 to itself
/status/N          status N with a short body
/flaky/KEY/N       500 for the first N requests of KEY, then 200 with `body_of(KEY)`
/stall             headers, then nothing until the test ends
/trickle           one byte every 0.2 s (server pacing), for a few minutes
/declared-huge     declares Content-Length of 10**12 bytes
/endless           no Content-Length; streams until the client hangs up
/echo              JSON: the request's method, path and headers
/gzip-trickle      a gzip stream whose header's file name never ends, a few bytes every 0.1 s
                   (it inflates to nothing)
/encoded/ENC/N     `body_of(N)` compressed as ENC (Content-Encoding: ENC): gzip, deflate (zlib),
                   raw-deflate (marked deflate), gzip,gzip (two layers), corrupt-gzip, or br
                   (marked br, not really compressed)
"""

import functools
import json
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

CHUNK = b"0123456789abcdef" * 4096  # 64 KiB


def body_of(key: str | int, size: int | None = None) -> bytes:
    """Deterministic bytes for a path, so tests can compare what was stored."""
    if isinstance(key, int) or size is not None:
        n = size if size is not None else int(key)
        pattern = b"taskflow-download-"
        return (pattern * (n // len(pattern) + 1))[:n]
    return f"content of {key}\n".encode()


def _compress(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


@functools.lru_cache(maxsize=8)
def encoded(encoding: str, size: int) -> tuple[str, bytes]:
    """(the Content-Encoding header, the body) for /encoded/ENC/N; kept, so that a test can make
    it before it measures what the client allocates."""
    data = body_of(size)
    gzip, deflate = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS
    if encoding == "gzip":
        return "gzip", _compress(data, gzip)
    if encoding == "deflate":
        return "deflate", _compress(data, deflate)
    if encoding == "raw-deflate":
        return "deflate", _compress(data, -zlib.MAX_WBITS)
    if encoding == "gzip,gzip":
        return "gzip, gzip", _compress(_compress(data, gzip), gzip)
    if encoding == "corrupt-gzip":
        packed = bytearray(_compress(data, gzip))
        packed[20:40] = b"\xff" * 20
        return "gzip", bytes(packed)
    return encoding, data


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self.send_header("Allow", "GET, HEAD, OPTIONS")
        self.end_headers()

    def _send(self, status: int, body: bytes, send_body: bool, **headers: str) -> None:
        self.send_response(status)
        named = {name.replace("_", "-"): value for name, value in headers.items()}
        named.setdefault("Content-Type", "application/octet-stream")
        for name, value in named.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _route(self, send_body: bool) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        self.server.hits[url.path] += 1
        head = parts[0] if parts else ""
        try:
            if head == "bytes":
                extra = {}
                if "name" in query:
                    extra["Content_Disposition"] = f'attachment; filename="{query["name"]}"'
                self._send(
                    200,
                    body_of(int(parts[1])),
                    send_body,
                    Content_Type=query.get("type", "application/octet-stream"),
                    **extra,
                )
            elif head == "redirect":
                self.send_response(int(query.get("code", "302")))
                self.send_header("Location", query["to"])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif head == "loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif head == "status":
                self._send(int(parts[1]), f"status {parts[1]}\n".encode(), send_body)
            elif head == "flaky":
                key, fail_times = parts[1], int(parts[2])
                self.server.flaky[key] += 1
                if self.server.flaky[key] <= fail_times:
                    self._send(500, b"planned failure\n", send_body)
                else:
                    self._send(200, body_of(key), send_body, Content_Type="text/plain")
            elif head == "stall":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.flush()
                self.server.release.wait(timeout=60)
            elif head == "trickle":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                for _ in range(900):
                    self.wfile.write(b".")
                    self.wfile.flush()
                    if self.server.release.wait(timeout=0.2):
                        break
            elif head == "declared-huge":
                self.send_response(200)
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                if send_body:
                    self.wfile.write(CHUNK)
            elif head == "endless":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                for _ in range(64 * 1024):  # 4 GiB at most, long after any test's limit
                    if self.server.release.is_set():
                        break
                    self.wfile.write(CHUNK)
            elif head == "gzip-trickle":
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.end_headers()
                # Magic, deflate, FNAME flag, mtime, xfl, os; then the name, never terminated.
                self.wfile.write(b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff")
                for _ in range(900):
                    self.wfile.write(b"name" * 64)
                    self.wfile.flush()
                    if self.server.release.wait(timeout=0.1):
                        break
            elif head == "encoded":
                header, body = encoded(parts[1], int(parts[2]))
                self._send(200, body, send_body, Content_Encoding=header)
            elif head == "echo":
                body = json.dumps(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers)}
                ).encode()
                self._send(200, body, send_body, Content_Type="application/json; charset=utf-8")
            else:
                self._send(404, b"no such path\n", send_body, Content_Type="text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up, as it should past a limit


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.flaky: Counter[str] = Counter()
        self.release = threading.Event()


class HttpServer:
    def __init__(self) -> None:
        self._server = _Server()
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def hits(self) -> Counter[str]:
        return self._server.hits

    def start(self) -> "HttpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def http_server() -> Iterator[HttpServer]:
    server = HttpServer().start()
    try:
        yield server
    finally:
        server.stop()
