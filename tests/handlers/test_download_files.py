"""download_files against a real HTTP server on 127.0.0.1 (allowed by SSRF_ALLOWED_NETWORKS)."""

import pytest

from apps.files.models import UserFile
from apps.files.services import file_open
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create, deliver, release, result_of
from tests.support.http import body_of

S = TaskStatus
pytestmark = [pytest.mark.django_db]


def stored(file_id: str) -> bytes:
    with file_open(UserFile.objects.get(id=file_id)) as handle:
        return handle.read()


def download(user, *urls: str, **kwargs):
    task = create(user, "download_files", {"urls": list(urls)}, **kwargs)
    deliver(task)
    return task


def test_each_url_becomes_a_file_of_the_owner_linked_from_the_result(user, web):
    named = web.url("/bytes/1000?name=report.csv&type=text/csv")
    plain = web.url("/bytes/200000")
    task = download(user, named, plain)
    assert task.status == S.SUCCEEDED, task.error
    result = result_of(task)
    assert (result["downloaded"], result["failed"], result["total_bytes"]) == (2, 0, 201000)
    first, second = result["urls"]
    assert (first["url"], first["status"]) == (named, "downloaded")
    assert (first["file"]["name"], first["file"]["content_type"]) == ("report.csv", "text/csv")
    assert second["file"]["name"] == "200000"
    assert stored(first["file"]["id"]) == body_of(1000)
    assert stored(second["file"]["id"]) == body_of(200000)
    files = UserFile.objects.filter(source_task=task)
    assert {f.owner_id for f in files} == {user.id}
    assert [f["id"] for f in result["files"]] == [first["file"]["id"], second["file"]["id"]]
    assert result["files"][0]["download_url"] == f"/api/files/{first['file']['id']}/download"


def test_redirects_are_followed(user, web):
    task = download(user, web.url("/redirect?to=/bytes/10"))
    assert task.status == S.SUCCEEDED, task.error
    assert result_of(task)["files"][0]["name"] == "10"


def test_a_404_is_reported_and_does_not_retry(user, web):
    task = download(user, web.url("/bytes/5"), web.url("/status/404"), max_retries=3)
    assert task.status == S.SUCCEEDED, task.error
    assert task.attempts == 1
    failed = result_of(task)["urls"][1]
    assert (failed["status"], failed["http_status"], failed["retryable"]) == ("failed", 404, False)
    assert failed["error"] == "HTTP 404 Not Found"
    assert result_of(task)["failed"] == 1


def test_nothing_downloadable_fails_permanently(user, web):
    task = download(user, web.url("/status/404"), web.url("/status/410"), max_retries=3)
    assert task.status == S.FAILED
    assert task.attempts == 1
    assert "No URL could be downloaded" in task.error
    assert "HTTP 410" in task.error


def test_a_retry_downloads_only_the_urls_that_failed(user, web):
    task = download(user, web.url("/bytes/100"), web.url("/flaky/k1/1"), max_retries=2)
    assert task.status == S.RETRYING
    assert "1 of 2 URL(s) failed for now" in task.error
    assert "HTTP 500" in task.error
    release(task)
    deliver(task)
    assert task.status == S.SUCCEEDED, task.error
    assert web.hits["/bytes/100"] == 1  # not downloaded again
    assert web.hits["/flaky/k1/1"] == 2
    assert UserFile.objects.filter(source_task=task).count() == 2
    assert stored(result_of(task)["urls"][1]["file"]["id"]) == body_of("k1")


def test_a_url_that_keeps_failing_uses_up_the_retries(user, web):
    task = download(user, web.url("/status/503"), max_retries=1)
    assert task.status == S.RETRYING
    release(task)
    deliver(task)
    assert task.status == S.FAILED
    assert "HTTP 503" in task.error


def test_the_per_file_limit(user, web, settings, media_root):
    settings.DOWNLOAD_MAX_FILE_BYTES = 100_000
    task = download(
        user,
        web.url("/bytes/10"),
        web.url("/bytes/200000"),  # declares its length: refused before reading
        web.url("/endless"),  # does not: stopped at the limit
        web.url("/declared-huge"),
    )
    assert task.status == S.SUCCEEDED, task.error
    outcomes = [o["status"] for o in result_of(task)["urls"]]
    assert outcomes == ["downloaded", "failed", "failed", "failed"]
    for failed in result_of(task)["urls"][1:]:
        assert "over the limit of 100000" in failed["error"] or "limit of 100000" in failed["error"]
        assert failed["retryable"] is False
    assert UserFile.objects.filter(source_task=task).count() == 1
    assert len([p for p in media_root.rglob("*") if p.is_file()]) == 1


def test_the_total_limit(user, web, settings):
    settings.DOWNLOAD_MAX_TOTAL_BYTES = 1500
    task = download(user, web.url("/bytes/800"), web.url("/bytes/801"), web.url("/bytes/1"))
    assert task.status == S.SUCCEEDED, task.error
    first, second, third = result_of(task)["urls"]
    assert first["status"] == "downloaded"
    assert second["status"] == "failed"
    assert "total limit of 1500 bytes" in second["error"]
    assert third["status"] == "downloaded"  # 1 byte still fits
    assert result_of(task)["total_bytes"] == 801


def test_a_stalled_server_times_out_and_retries(user, web, settings):
    settings.DOWNLOAD_TIMEOUT_SECONDS = 0.5
    task = download(user, web.url("/stall"), max_retries=1)
    assert task.status == S.RETRYING
    assert "timed out" in task.error


def test_a_trickling_server_is_cut_off_at_the_timeout(user, web, settings):
    settings.DOWNLOAD_TIMEOUT_SECONDS = 1  # each byte comes within it, the whole body does not
    task = download(user, web.url("/trickle"), max_retries=0)
    assert task.status == S.FAILED
    assert "took too long" in task.error


def test_a_redirect_to_a_private_address_is_stopped(user, web):
    task = download(user, web.url("/redirect?to=http://169.254.169.254/latest/meta-data/"))
    assert task.status == S.FAILED
    assert task.attempts == 1
    assert "169.254.169.254" in task.error
    assert "not a public address" in task.error


def test_the_guard_runs_when_the_task_runs(user, web, settings):
    task = create(user, "download_files", {"urls": [web.url("/bytes/3")]})
    settings.SSRF_ALLOWED_NETWORKS = []  # as in production: loopback is not allowed
    deliver(task)
    assert task.status == S.FAILED
    assert "not a public address" in task.error
    assert web.hits["/bytes/3"] == 0
