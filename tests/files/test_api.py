"""The files API through DRF's test client: upload, list, metadata, download, delete, and the
errors a user can hit. Storage is the real file system, under a temporary MEDIA_ROOT."""

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from apps.files.models import UserFile
from tests.support.files import make_file
from tests.tasks.factories import create_task

pytestmark = [pytest.mark.django_db]


def upload(api: APIClient, filename: str, content: bytes, content_type: str = "", **extra: Any):
    data: dict[str, Any] = {"file": SimpleUploadedFile(filename, content, content_type or None)}  # type: ignore[arg-type]
    data.update(extra)
    return api.post("/api/files", data, format="multipart")


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if field:
        assert field in error["fields"], error
    return error


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_stores_the_bytes_under_a_key_of_ours(api, user, media_root):
    content = b"a,b\n1,2\n"
    response = upload(api, "report.csv", content, "text/csv")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "report.csv"
    assert body["size"] == len(content)
    assert body["content_type"] == "text/csv"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["source_task"] is None
    assert body["download_url"] == f"/api/files/{body['id']}/download"
    assert response["Location"] == f"/api/files/{body['id']}"

    row = UserFile.objects.get(id=body["id"])
    assert row.owner == user
    assert row.storage_key == f"files/{user.id}/{row.id.hex}"
    [path] = stored_files(media_root)
    assert path == media_root / row.storage_key
    assert path.read_bytes() == content
    assert "report" not in str(path)


def test_a_path_in_the_uploaded_name_never_reaches_the_file_system(api, media_root):
    response = upload(api, "../../etc/passwd", b"root:x:0:0")
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "passwd"
    [path] = stored_files(media_root)
    assert path.is_relative_to(media_root)
    assert path.name != "passwd"


def test_an_explicit_name_wins_and_is_cleaned(api):
    response = upload(api, "upload.bin", b"x", name="..\\..\\evil\r\nname.txt")
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "evilname.txt"


def test_the_content_type_is_guessed_from_the_name_when_not_given(api):
    response = upload(api, "photo.png", b"\x89PNG", content_type="not a type")
    assert response.json()["content_type"] == "image/png"


def test_an_empty_file_is_accepted(api):
    response = upload(api, "empty.txt", b"")
    assert response.status_code == 201, response.content
    assert response.json()["size"] == 0


def test_upload_without_a_file_names_the_field(api):
    response = api.post("/api/files", {"name": "x"}, format="multipart")
    assert_error(response, 400, "validation_error", "file")


def test_upload_with_an_unknown_field_names_it(api):
    response = upload(api, "a.txt", b"a", owner="someone-else")
    assert_error(response, 400, "validation_error", "owner")


def test_an_upload_whose_name_field_is_not_utf8_is_400_and_stores_nothing(api, media_root):
    """Regression: the name was stored with U+FFFD in place of the bytes sent."""
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n'.encode()
        + b"r\xe9sum\xe9.txt\r\n"
        + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + b"\xff\xfe binary is fine\r\n"
        + f"--{boundary}--\r\n".encode()
    )
    response = api.post(
        "/api/files", body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    error = assert_error(response, 400, "malformed_request")
    assert "not valid utf-8" in error["message"]
    assert UserFile.objects.count() == 0
    assert stored_files(media_root) == []


def test_an_upload_of_bytes_that_are_no_text_is_accepted(api):
    response = upload(api, "r\u00e9sum\u00e9.bin", b"\xff\xfe\x00\xc3", name="r\u00e9sum\u00e9.bin")
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "r\u00e9sum\u00e9.bin"
    assert response.json()["size"] == 4


def test_an_upload_with_two_file_parts_is_400_not_the_last_one_kept(api, media_root):
    """Regression: request.data["file"] was the last part: a.txt was dropped without a word
    and the answer a 201 for b.txt only."""
    response = api.post(
        "/api/files",
        {"file": [SimpleUploadedFile("a.txt", b"A"), SimpleUploadedFile("b.txt", b"B")]},
        format="multipart",
    )
    error = assert_error(response, 400, "validation_error", "file")
    assert error["fields"]["file"] == ["Sent 2 files: send one file per request."]
    assert UserFile.objects.count() == 0
    assert stored_files(media_root) == []


def test_an_upload_with_two_names_is_400_not_the_last_one_kept(api):
    response = upload(api, "a.txt", b"A", name=["first.txt", "second.txt"])
    error = assert_error(response, 400, "validation_error", "name")
    assert error["fields"]["name"] == ["Sent 2 times: send one value."]
    assert UserFile.objects.count() == 0


def test_upload_over_the_limit_is_a_413_and_stores_nothing(api, settings, media_root):
    settings.FILE_UPLOAD_MAX_BYTES = 1000
    response = upload(api, "big.bin", b"x" * 5000)
    error = assert_error(response, 413, "file_too_large", "file")
    assert error["limit_bytes"] == 1000
    assert "1000 bytes" in error["message"]
    assert UserFile.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_declared_length_far_over_the_limit_is_refused_unread(api, settings, media_root):
    settings.FILE_UPLOAD_MAX_BYTES = 1000
    response = upload(api, "huge.bin", b"x" * 200_000)
    assert_error(response, 413, "file_too_large")
    assert UserFile.objects.count() == 0


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", " 12", "\u0661\u0662"])
def test_a_content_length_that_is_no_number_is_400(api, length, media_root):
    """Regression: int() of the header was a 500 (the test client passes it on as it is)."""
    api.raise_request_exception = False
    response = api.post(
        "/api/files",
        {"file": SimpleUploadedFile("a.txt", b"A")},
        format="multipart",
        CONTENT_LENGTH=length,
    )
    assert_error(response, 400, "malformed_request", "Content-Length")
    assert UserFile.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_file_exactly_at_the_limit_is_accepted(api, settings):
    settings.FILE_UPLOAD_MAX_BYTES = 1000
    assert upload(api, "edge.bin", b"x" * 1000).status_code == 201


def test_uploading_needs_a_login(anon):
    assert_error(upload(anon, "a.txt", b"a"), 401, "not_authenticated")


def test_list_shows_only_my_files_newest_first_paginated(
    api, user, other_user, django_assert_max_num_queries
):
    for n in range(5):
        make_file(user, f"mine-{n}.txt")
    make_file(other_user, "theirs.txt")
    with django_assert_max_num_queries(3):
        first = api.get("/api/files?page_size=3").json()
    assert [f["name"] for f in first["results"]] == ["mine-4.txt", "mine-3.txt", "mine-2.txt"]
    second = api.get(first["next"]).json()
    assert [f["name"] for f in second["results"]] == ["mine-1.txt", "mine-0.txt"]
    assert second["next"] is None


def test_list_filters_by_name_and_by_producing_task(api, user):
    task = create_task(user)
    make_file(user, "a.txt")
    make_file(user, "b.txt")
    from apps.files.services import file_create

    output = file_create(owner_id=user.id, name="out.txt", content=b"o", source_task_id=task.id)
    assert [f["name"] for f in api.get("/api/files?name=a.txt").json()["results"]] == ["a.txt"]
    by_task = api.get(f"/api/files?source_task={task.id}").json()["results"]
    assert [(f["id"], f["source_task"]) for f in by_task] == [(str(output.id), str(task.id))]


def test_an_invalid_filter_is_a_400(api):
    assert_error(api.get("/api/files?source_task=nope"), 400, "validation_error", "source_task")


@pytest.mark.parametrize("value", ["0", "abc", "201"])
def test_a_page_size_outside_1_to_200_is_a_400(api, user, value):
    """Regression: the task list's pagination answered these with 50 files, or 200."""
    make_file(user, "a.txt")
    assert_error(api.get(f"/api/files?page_size={value}"), 400, "validation_error", "page_size")


@pytest.mark.parametrize("cursor", ["!!!!", "cD1nYXJiYWdl"])  # "", "p=garbage"
def test_a_cursor_not_of_ours_is_invalid_cursor(api, user, cursor):
    """Regression: the first page (a 200), or Django's "invalid format" on non_field_errors."""
    make_file(user, "a.txt")
    assert_error(api.get(f"/api/files?cursor={cursor}"), 400, "invalid_cursor", "cursor")


def test_metadata_of_my_file(api, user):
    file = make_file(user, "notes.txt", b"hello\n")
    body = api.get(f"/api/files/{file.id}").json()
    assert body["id"] == str(file.id)
    assert (body["name"], body["size"], body["content_type"]) == ("notes.txt", 6, "text/plain")


@pytest.mark.parametrize("suffix", ["", "/download"])
@pytest.mark.parametrize("method", ["get", "delete"])
def test_someone_elses_file_is_a_404_everywhere(api, other_user, method, suffix, media_root):
    if method == "delete" and suffix:
        return  # there is no DELETE on /download
    theirs = make_file(other_user, "secret.txt", b"secret")
    response = getattr(api, method)(f"/api/files/{theirs.id}{suffix}")
    assert_error(response, 404, "file_not_found")
    assert UserFile.objects.filter(id=theirs.id).exists()
    assert len(stored_files(media_root)) == 1


def test_a_missing_file_is_a_404(api):
    assert_error(api.get("/api/files/00000000-0000-0000-0000-000000000000"), 404, "file_not_found")


def test_download_returns_the_bytes_as_an_attachment(api, user):
    content = bytes(range(256)) * 10
    file = make_file(user, "data ünï.bin", content, "application/x-thing")
    response = api.get(f"/api/files/{file.id}/download", HTTP_ACCEPT="image/png")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content
    assert response["Content-Type"] == "application/x-thing"
    assert response["Content-Length"] == str(len(content))
    assert response["Content-Disposition"].startswith("attachment;")
    assert "filename*=utf-8''data%20%C3%BCn%C3%AF.bin" in response["Content-Disposition"]
    assert response["X-Content-Type-Options"] == "nosniff"


def test_delete_removes_the_row_and_the_bytes(
    api, user, media_root, django_capture_on_commit_callbacks
):
    file = make_file(user, "gone.txt")
    assert len(stored_files(media_root)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/api/files/{file.id}")
    assert response.status_code == 204
    assert not UserFile.objects.filter(id=file.id).exists()
    assert stored_files(media_root) == []
    assert_error(api.get(f"/api/files/{file.id}"), 404, "file_not_found")
