"""callback_url at create: stored when given, refused field by field when unusable."""

import pytest

from apps.tasks.models import Task
from tests.security.support import assert_error

GOOD = "https://hooks.example.com/taskflow?x=1"

BAD = {
    "scheme": "ftp://hooks.example.com/x",
    "no-host": "http:///path-only",
    "not-a-url": "hooks.example.com/x",
    "credentials": "https://user:secret@hooks.example.com/x",
    "loopback": "http://127.0.0.1:8000/x",
    "private": "http://10.1.2.3/x",
    "link-local": "http://169.254.169.254/latest/meta-data",
    "ipv6-loopback": "http://[::1]/x",
    "too-long": "https://hooks.example.com/" + "a" * 2000,
}


def test_a_task_is_created_with_its_callback_url(api):
    response = api.post("/api/tasks", {"type": "echo", "callback_url": GOOD}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["callback_url"] == GOOD
    assert Task.objects.get(id=response.json()["id"]).callback_url == GOOD
    detail = api.get(f"/api/tasks/{response.json()['id']}").json()
    assert (detail["callback_url"], detail["callback"]) == (GOOD, None)  # nothing owed yet


def test_a_task_without_a_callback_has_none(api):
    response = api.post("/api/tasks", {"type": "echo"}, format="json")
    assert response.json()["callback_url"] == ""
    assert Task.objects.get(id=response.json()["id"]).callback_url == ""


@pytest.mark.parametrize("url", BAD.values(), ids=BAD.keys())
def test_an_unusable_callback_url_is_a_400_on_the_field(api, url):
    response = api.post("/api/tasks", {"type": "echo", "callback_url": url}, format="json")
    assert_error(response, 400, "validation_error", fields=("callback_url",))
    assert not Task.objects.exists()


def test_a_callback_url_that_is_not_a_string_is_a_400_on_the_field(api):
    response = api.post("/api/tasks", {"type": "echo", "callback_url": 5}, format="json")
    assert_error(response, 400, "validation_error", fields=("callback_url",))


@pytest.mark.parametrize("url", BAD.values(), ids=BAD.keys())
def test_a_bulk_item_with_an_unusable_callback_url_names_its_index(api, url):
    items = [{"type": "echo"}, {"type": "echo", "callback_url": url}]
    response = api.post("/api/tasks/bulk", {"tasks": items}, format="json")
    assert_error(response, 400, "validation_error", fields=("tasks[1].callback_url",))
    assert not Task.objects.exists()


def test_bulk_items_keep_their_own_callback_urls(api):
    items = [
        {"type": "echo", "callback_url": GOOD},
        {"type": "echo"},
        # A backslash, which COPY's text format escapes.
        {"type": "echo", "callback_url": "http://hooks.example.com/b\\c"},
    ]
    response = api.post("/api/tasks/bulk", {"tasks": items}, format="json")
    assert response.status_code == 201, response.content
    ids = response.json()["ids"]
    urls = {str(k): v for k, v in Task.objects.values_list("id", "callback_url")}
    assert [urls[i] for i in ids] == [
        GOOD,
        "",
        "http://hooks.example.com/b\\c",
    ]


def test_an_idempotent_repeat_with_another_callback_is_a_conflict(api):
    body = {"type": "echo", "callback_url": GOOD}
    first = api.post("/api/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    again = api.post("/api/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    other = api.post(
        "/api/tasks",
        {**body, "callback_url": "https://elsewhere.example.com/"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)


@pytest.mark.parametrize("url", ["http://xn--/x", "http://xn--a.com/x"])
def test_a_malformed_idna_host_is_a_400_on_the_field_not_a_500(api, url):
    response = api.post("/api/tasks", {"type": "echo", "callback_url": url}, format="json")
    assert_error(response, 400, "validation_error", fields=("callback_url",))
    bulk = api.post(
        "/api/tasks/bulk", {"tasks": [{"type": "echo", "callback_url": url}]}, format="json"
    )
    assert bulk.status_code == 400, bulk.content
    assert not Task.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/x",
        "http://0x7f.1/x",
        "http://017700000001/x",
        "http://127.1/x",
        "http://0/x",
        "http://0xa9fea9fe/latest/meta-data",
    ],
)
def test_a_loopback_or_private_address_in_another_ipv4_form_is_a_400_on_the_field(api, url):
    """What getaddrinfo (and so the delivery) reads as 127.0.0.1, 0.0.0.0 or 169.254.169.254 is
    the literal address the docs say is refused at create."""
    response = api.post("/api/tasks", {"type": "echo", "callback_url": url}, format="json")
    assert_error(response, 400, "validation_error", fields=("callback_url",))
