"""SSRF: a URL a user gives never reaches a private, loopback, link-local or metadata address, in
whatever form it is written, through a DNS name, or through redirects.

Only 127.0.0.0/8 is ever contacted: the servers here listen on 127.0.0.1 and 127.0.0.2, and
non-loopback addresses are only ever resolved and vetted (`net.vet`), never connected to.
"""

import ast
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.files.models import UserFile
from apps.handlers import net
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create, deliver
from tests.security.support import assert_error
from tests.support.http import HttpServer, http_server

S = TaskStatus
ROOT = Path(__file__).resolve().parents[2]

# Ways to write an address that is not public; each must be refused.
LOOPBACK_FORMS = [
    "127.0.0.1",
    "127.1",
    "2130706433",  # one decimal number
    "0x7f000001",  # hexadecimal
    "0x7f.0.0.1",
    "0177.0.0.1",  # octal
    "localhost",  # a DNS name that resolves to loopback
    "LOCALHOST",
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]",  # IPv4-compatible IPv6
    "0.0.0.0",  # "this host": Linux connects it to loopback
    "0",
]
OTHER_PRIVATE_FORMS = [
    "[::1]",
    "[::]",
    "169.254.169.254",  # cloud metadata (AWS, GCP, Azure)
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata (shared address space)
    "10.0.0.1",
    "172.16.0.1",
    "192.168.0.1",
    "[fd00::1]",
    "[fe80::1]",
    "[64:ff9b::a9fe:a9fe]",  # NAT64 around 169.254.169.254
    "[2002:a9fe:a9fe::]",  # 6to4 around 169.254.169.254
    "224.0.0.1",
    "255.255.255.255",
]
REFUSED = (net.BlockedAddress, net.InvalidUrl)


class _Counting(BaseHTTPRequestHandler):
    hits: Counter[str]

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        type(self).hits[self.path] += 1
        body = b"internal secret"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def internal_server() -> Iterator[tuple[int, Counter[str]]]:
    handler: type[_Counting] = type("Internal", (_Counting,), {"hits": Counter()})
    server = ThreadingHTTPServer(("127.0.0.2", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), handler.hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def internal(internal_server: tuple[int, Counter[str]]) -> tuple[int, Counter[str]]:
    """An "internal" server on 127.0.0.2, which nothing must reach: its port and its hits."""
    port, hits = internal_server
    hits.clear()
    return port, hits


@pytest.fixture(scope="module")
def loopback_server() -> Iterator[HttpServer]:
    with http_server() as server:
        yield server


@pytest.fixture
def loopback(loopback_server: HttpServer) -> HttpServer:
    """A server on 127.0.0.1 (its hits counted from the start of the test)."""
    loopback_server.hits.clear()
    return loopback_server


@pytest.fixture
def web(settings: Any, loopback: HttpServer) -> HttpServer:
    """The user's "public" server on 127.0.0.1, the only address the guard is told to allow."""
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    return loopback


def redirect(web: HttpServer, to: str, code: int = 302) -> str:
    """A URL of `web` that answers `code` with Location: `to`."""
    return web.url(str(httpx.URL("/redirect", params={"code": code, "to": to})))


def fetch(url: str) -> httpx.Response:
    with net.guarded_request("GET", url, timeout=5) as guarded:
        b"".join(net.read_body(guarded, max_bytes=10_000))
        return guarded.response


# --- The guard itself --------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
def test_every_form_of_loopback_is_refused_and_nothing_is_sent(settings, loopback, host):
    settings.SSRF_ALLOWED_NETWORKS = []  # production
    with pytest.raises(REFUSED):
        fetch(f"http://{host}:{loopback.port}/bytes/4")
    assert sum(loopback.hits.values()) == 0


@pytest.mark.parametrize("host", OTHER_PRIVATE_FORMS)
def test_every_other_private_address_is_refused_before_connecting(settings, host):
    """Vetted only (name resolution, no connection), so that no test traffic leaves loopback."""
    settings.SSRF_ALLOWED_NETWORKS = []
    with pytest.raises(REFUSED):
        net.vet(net.parse_url(f"http://{host}/latest/meta-data/"))


def test_an_allowed_network_opens_only_itself(web, internal):
    """127.0.0.1/32 allowed: 127.0.0.1 is reached, 127.0.0.2 (same /8) is not."""
    assert fetch(web.url("/bytes/4")).status_code == 200
    port, hits = internal
    with pytest.raises(net.BlockedAddress):
        fetch(f"http://127.0.0.2:{port}/")
    assert sum(hits.values()) == 0


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/admin",
        "http://[::ffff:127.0.0.2]:{port}/admin",
        "http://2130706434:{port}/admin",  # 127.0.0.2 as one number
        "http://0x7f000002:{port}/admin",
        "//127.0.0.2:{port}/admin",  # scheme-relative
    ],
)
def test_a_redirect_to_a_private_address_is_refused_and_not_followed(web, internal, target):
    port, hits = internal
    location = target.format(port=port)
    for code in (301, 302, 303, 307, 308):
        with pytest.raises(net.BlockedAddress):
            fetch(redirect(web, location, code))
    assert sum(hits.values()) == 0
    assert web.hits["/redirect"] == 5  # the first hop was allowed, and made


def test_a_redirect_chain_is_vetted_at_every_hop(web, internal):
    port, hits = internal
    chain = redirect(web, redirect(web, f"http://127.0.0.2:{port}/deep"))
    with pytest.raises(net.BlockedAddress):
        fetch(chain)
    assert web.hits["/redirect"] == 2
    assert sum(hits.values()) == 0


@pytest.mark.parametrize("scheme", ["file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://x/"])
def test_a_redirect_to_another_scheme_is_refused(web, scheme):
    with pytest.raises(net.InvalidUrl):
        fetch(redirect(web, scheme))


# --- When the user gives the URL ---------------------------------------------------------------


@pytest.mark.parametrize("host", [*LOOPBACK_FORMS, *OTHER_PRIVATE_FORMS])
@pytest.mark.parametrize(
    ("type", "field"), [("fetch_url", "payload.url"), ("download_files", "payload.urls")]
)
def test_a_task_with_a_private_address_is_refused_or_fails_without_a_request(
    api, settings, loopback, type, field, host
):
    """Literal addresses are refused when the task is created (400 naming the field). A name
    (localhost) passes, and the guard refuses it when the task runs."""
    settings.SSRF_ALLOWED_NETWORKS = []
    port = loopback.port if host in LOOPBACK_FORMS else 80
    url = f"http://{host}:{port}/bytes/4"
    payload = {"url": url} if type == "fetch_url" else {"urls": [url]}
    response = api.post(
        "/api/tasks", {"type": type, "payload": payload, "max_retries": 0}, format="json"
    )
    if response.status_code == 400:
        assert_error(response, 400, "validation_error", (field,))
    else:
        assert response.status_code == 201, response.content
        assert host.lower() == "localhost", f"{host} was accepted"
        task = Task.objects.get(id=response.json()["id"])
        deliver(task)
        assert task.status == S.FAILED
        assert "not a public address" in task.error
    assert sum(loopback.hits.values()) == 0


@pytest.mark.parametrize("type", ["fetch_url", "download_files"])
def test_a_task_redirected_to_an_internal_server_fails_at_once(user, web, internal, type):
    port, hits = internal
    url = redirect(web, f"http://127.0.0.2:{port}/secret")
    task = create(user, type, {"url": url} if type == "fetch_url" else {"urls": [url]})
    deliver(task)
    assert task.status == S.FAILED  # permanently: not retried against the internal server
    assert task.attempts == 1
    assert "not a public address" in task.error
    assert "internal secret" not in (task.error + str(task.result))
    assert sum(hits.values()) == 0
    assert not UserFile.objects.filter(owner=user).exists()


def test_only_the_guard_makes_http_requests_from_the_server():
    """Every outgoing HTTP request of the server's code (handlers now, webhooks later) goes
    through apps.handlers.net: no other module of apps/ calls an HTTP client."""
    clients = {"httpx", "requests", "urllib3", "aiohttp", "urllib.request", "http.client"}
    offenders = []
    for path in sorted((ROOT / "apps").rglob("*.py")):
        if path == ROOT / "apps" / "handlers" / "net.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                module = called.rsplit(".", 1)[0]
                if module in clients and called not in {"httpx.URL", "httpx.QueryParams"}:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {called}")
    assert offenders == []
