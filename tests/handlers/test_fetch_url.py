"""fetch_url against a real HTTP server on 127.0.0.1 (allowed through SSRF_ALLOWED_NETWORKS)."""

import json

import pytest

from apps.handlers.builtin.fetch_url import EXCERPT_BYTES
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create, deliver, result_of
from tests.support.http import body_of
from tests.support.processes import free_port

S = TaskStatus
pytestmark = [pytest.mark.django_db]


def fetch(user, url: str, **payload):
    task = create(user, "fetch_url", {"url": url, **payload}, max_retries=payload.pop("_r", 0))
    deliver(task)
    return task


def test_a_get_records_status_url_timing_size_type_headers_and_excerpt(user, web):
    task = fetch(user, web.url("/echo"), headers={"X-Trace": "abc"})
    assert task.status == S.SUCCEEDED, task.error
    result = result_of(task)
    assert result["status_code"] == 200
    assert result["reason"] == "OK"
    assert result["method"] == "GET"
    assert result["final_url"] == web.url("/echo")
    assert result["redirects"] == []
    assert isinstance(result["elapsed_ms"], int)
    assert result["elapsed_ms"] >= 0
    assert result["content_type"] == "application/json; charset=utf-8"
    assert result["headers"]["content-type"] == "application/json; charset=utf-8"
    assert int(result["headers"]["content-length"]) == result["size"]
    echoed = json.loads(result["body_excerpt"])
    assert echoed["headers"]["X-Trace"] == "abc"
    assert result["body_truncated"] is False
    assert result["size_complete"] is True


def test_redirects_end_at_the_final_url(user, web):
    start = web.url("/redirect?to=/echo")
    task = fetch(user, start)
    assert result_of(task)["final_url"] == web.url("/echo")
    assert result_of(task)["redirects"] == [start]


@pytest.mark.parametrize("status", [404, 500, 503])
def test_an_http_error_status_is_a_result(user, web, status):
    task = fetch(user, web.url(f"/status/{status}"))
    assert task.status == S.SUCCEEDED
    assert result_of(task)["status_code"] == status
    assert result_of(task)["body_excerpt"] is None  # application/octet-stream: no text excerpt


def test_head_reads_no_body(user, web):
    task = fetch(user, web.url("/bytes/500"), method="head")
    assert (result_of(task)["method"], result_of(task)["size"]) == ("HEAD", 0)
    assert result_of(task)["headers"]["content-length"] == "500"


def test_the_excerpt_is_bounded_and_the_size_counts_everything(user, web):
    task = fetch(user, web.url("/bytes/50000?type=text/plain"))
    result = result_of(task)
    assert result["size"] == 50000
    assert result["body_excerpt"] == body_of(50000)[:EXCERPT_BYTES].decode()
    assert result["body_truncated"] is True


def test_a_stalled_server_times_out_and_retries(user, web):
    task = fetch(user, web.url("/stall"), timeout=0.5, _r=2)
    assert task.status == S.RETRYING
    assert "timed out" in task.error


def test_a_refused_connection_retries(user, web):
    task = fetch(user, f"http://127.0.0.1:{free_port()}/", _r=1)
    assert task.status == S.RETRYING
    assert "ConnectError" in task.error


def test_a_redirect_to_a_private_address_fails_at_once(user, web):
    task = fetch(user, web.url("/redirect?to=http://[::1]/"), _r=3)
    assert task.status == S.FAILED
    assert task.attempts == 1
    assert "not a public address" in task.error


def test_a_redirect_to_a_port_past_65535_fails_at_once_and_is_not_followed(user, web):
    # getaddrinfo() takes the port modulo 65536: this redirect reached the test server itself.
    task = fetch(user, web.url(f"/redirect?to=http://127.0.0.1:{web.port + 65536}/bytes/5"), _r=3)
    assert task.status == S.FAILED
    assert task.attempts == 1
    assert "out of range: a port is 1 to 65535" in task.error
    assert web.hits["/bytes/5"] == 0
