"""Every validation rule of the built-in task types, through POST /api/tasks: a 400 that names
the field and the rule, before anything is created or queued."""

from typing import Any

import pytest

from apps.tasks.models import Task
from tests.support.files import make_file

pytestmark = [pytest.mark.django_db]

MINE = "{mine}"  # replaced by the id of one of the caller's files
THEIRS = "{theirs}"  # ... of another user's file


def fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    return value


@pytest.fixture
def ids(user, other_user) -> dict[str, str]:
    return {
        MINE: str(make_file(user, "mine.png").id),
        THEIRS: str(make_file(other_user, "theirs.png").id),
    }


EMAIL = {"to": "ann@example.com", "subject": "hi"}
IMAGE = {"path": MINE, "blur": 1}

CASES = [
    # send_email
    ("send_email", {"subject": "hi"}, "payload.to", "required"),
    ("send_email", {**EMAIL, "to": "not-an-email"}, "payload.to", "not a valid email address"),
    ("send_email", {**EMAIL, "to": ["a@example.com", "nope"]}, "payload.to", "'nope' is not a"),
    ("send_email", {**EMAIL, "to": []}, "payload.to", "non-empty list"),
    ("send_email", {**EMAIL, "to": 42}, "payload.to", "non-empty list"),
    ("send_email", {**EMAIL, "to": [f"u{n}@example.com" for n in range(51)]}, "payload.to", "50"),
    (
        "send_email",
        {**EMAIL, "to": "ann@example.com\r\nBcc: all@example.com"},
        "payload.to",
        "single email address",
    ),
    ("send_email", {**EMAIL, "subject": "Hi\r\nBcc: x@example.com"}, "payload.subject", "line"),
    ("send_email", {**EMAIL, "subject": "x" * 999}, "payload.subject", "998"),
    # Numbers are not turned into text (DRF's CharField would store "42").
    ("send_email", {**EMAIL, "subject": 42}, "payload.subject", "Must be a string, not a number"),
    ("send_email", {**EMAIL, "body": 1.5}, "payload.body", "Must be a string, not a number"),
    ("send_email", {**EMAIL, "body": True}, "payload.body", "Must be a string, not a boolean"),
    ("send_email", {"to": "a@example.com"}, "payload", "at least one of subject, body"),
    (
        "send_email",
        {"to": "a@example.com", "subject": " ", "body": "", "attached_files": []},
        "payload",
        "at least one of subject, body",
    ),
    ("send_email", {**EMAIL, "attached_files": [THEIRS]}, "payload.attached_files", "No such"),
    ("send_email", {**EMAIL, "attached_files": ["nothing.pdf"]}, "payload.attached_files", "No "),
    ("send_email", {**EMAIL, "attached_files": "mine.png"}, "payload.attached_files", "list"),
    ("send_email", {**EMAIL, "attached_files": [MINE] * 11}, "payload.attached_files", "10"),
    # process_image
    ("process_image", {"blur": 1}, "payload.path", "required"),
    ("process_image", {**IMAGE, "path": THEIRS}, "payload.path", "No such file"),
    ("process_image", {**IMAGE, "path": "theirs.png"}, "payload.path", "No such file"),
    ("process_image", {**IMAGE, "path": "../../etc/passwd"}, "payload.path", "No such file"),
    ("process_image", {"path": MINE, "blur": 0}, "payload.blur", "positive"),
    ("process_image", {"path": MINE, "blur": -2}, "payload.blur", "positive"),
    ("process_image", {"path": MINE, "blur": 101}, "payload.blur", "100"),
    ("process_image", {"path": MINE, "blur": True}, "payload.blur", "number"),
    ("process_image", {"path": MINE, "blur": "much"}, "payload.blur", "number"),
    ("process_image", {"path": MINE, "blur": "2"}, "payload.blur", "not a string"),
    ("process_image", {"path": MINE, "sharpen": 0}, "payload.sharpen", "positive"),
    ("process_image", {"path": MINE, "gamma": 0}, "payload.gamma", "positive"),
    ("process_image", {"path": MINE, "gamma": 11}, "payload.gamma", "10"),
    ("process_image", {"path": MINE, "contrast": 101}, "payload.contrast", "100"),
    ("process_image", {"path": MINE, "contrast": -101}, "payload.contrast", "-100"),
    ("process_image", {"path": MINE, "brightness": 150}, "payload.brightness", "100"),
    ("process_image", {"path": MINE, "saturation": -200}, "payload.saturation", "-100"),
    ("process_image", {"path": MINE, "grayscale": "yes"}, "payload.grayscale", "true or false"),
    ("process_image", {"path": MINE, "invert": 1}, "payload.invert", "true or false"),
    ("process_image", {"path": MINE}, "payload", "at least one operation"),
    ("process_image", {"path": MINE, "contrast": 0, "invert": False}, "payload", "at least one"),
    # download_files
    ("download_files", {}, "payload.urls", "required"),
    ("download_files", {"urls": []}, "payload.urls", "at least 1 URL"),
    ("download_files", {"urls": "https://example.com/a"}, "payload.urls", "list"),
    (
        "download_files",
        {"urls": [f"https://example.com/{n}" for n in range(21)]},
        "payload.urls",
        "20",
    ),
    ("download_files", {"urls": ["ftp://example.com/a"]}, "payload.urls", "http or https"),
    ("download_files", {"urls": ["file:///etc/passwd"]}, "payload.urls", "http or https"),
    ("download_files", {"urls": ["not a url"]}, "payload.urls", "http or https"),
    ("download_files", {"urls": ["http://127.0.0.1/x"]}, "payload.urls", "not a public"),
    (
        "download_files",
        {"urls": ["http://169.254.169.254/latest/meta-data/"]},
        "payload.urls",
        "not a public",
    ),
    ("download_files", {"urls": ["http://[::1]:8000/"]}, "payload.urls", "not a public"),
    ("download_files", {"urls": ["http://10.0.0.5/"]}, "payload.urls", "not a public"),
    # URLValidator lets any 1-5 digits by as the port, and getaddrinfo() takes it modulo 65536.
    ("download_files", {"urls": ["http://example.com:70000/a.bin"]}, "payload.urls", "1 to 65535"),
    ("download_files", {"urls": ["http://[2001:db8::1]:65536/"]}, "payload.urls", "1 to 65535"),
    (
        "download_files",
        {"urls": ["https://example.com/a", "https://example.com/a"]},
        "payload.urls",
        "twice",
    ),
    # fetch_url
    ("fetch_url", {}, "payload.url", "required"),
    ("fetch_url", {"url": "gopher://example.com"}, "payload.url", "http or https"),
    ("fetch_url", {"url": "http://192.168.0.1/"}, "payload.url", "not a public"),
    ("fetch_url", {"url": "http://example.com:99999/"}, "payload.url", "port 99999, out of range"),
    ("fetch_url", {"url": "http://example.com:65536/"}, "payload.url", "1 to 65535"),
    ("fetch_url", {"url": "http://example.com:0/"}, "payload.url", "1 to 65535"),
    ("fetch_url", {"url": "https://example.com", "method": "POST"}, "payload.method", "only reads"),
    ("fetch_url", {"url": "https://example.com", "method": 7}, "payload.method", "not allowed"),
    # A list or an object was looked up in the choices: TypeError (unhashable), a 500.
    ("fetch_url", {"url": "https://example.com", "method": ["GET"]}, "payload.method", "list"),
    ("fetch_url", {"url": "https://example.com", "method": {"GET": 1}}, "payload.method", "object"),
    ("fetch_url", {"url": "https://example.com", "timeout": 0}, "payload.timeout", "positive"),
    ("fetch_url", {"url": "https://example.com", "timeout": 121}, "payload.timeout", "120"),
    # Strings went through float(): "1_0" was 10 seconds.
    ("fetch_url", {"url": "https://example.com", "timeout": "1_0"}, "payload.timeout", "string"),
    ("fetch_url", {"url": "https://example.com", "timeout": " 5 "}, "payload.timeout", "string"),
    ("fetch_url", {"url": "https://example.com", "timeout": "5"}, "payload.timeout", "string"),
    ("fetch_url", {"url": "https://example.com", "timeout": 10**400}, "payload.timeout", "large"),
    # long_computation
    ("long_computation", {}, "payload.duration", "required"),
    ("long_computation", {"duration": True}, "payload.duration", "Must be a number."),  # was 1 s
    ("long_computation", {"duration": "5"}, "payload.duration", "not a string"),
    ("long_computation", {"duration": -1}, "payload.duration", "greater than or equal to 0"),
    ("long_computation", {"duration": 601}, "payload.duration", "less than or equal to 600"),
    ("fetch_url", {"url": "https://example.com", "headers": []}, "payload.headers", "dictionary"),
    (
        "fetch_url",
        {"url": "https://example.com", "headers": {"X-Count": 5}},
        "payload.headers",
        "Must be a string, not a number",
    ),
    (
        "fetch_url",
        {"url": "https://example.com", "headers": {"Bad Name": "x"}},
        "payload.headers",
        "header name",
    ),
    (
        "fetch_url",
        {"url": "https://example.com", "headers": {"Host": "internal"}},
        "payload.headers",
        "cannot be given",
    ),
    (
        "fetch_url",
        {"url": "https://example.com", "headers": {"X-A": "1\r\nX-Injected: 1"}},
        "payload.headers",
        "single line",
    ),
    # Accepted, then the task failed with a bare UnicodeEncodeError (httpx sends ASCII).
    (
        "fetch_url",
        {"url": "https://example.com", "headers": {"X-A": "caf\u00e9"}},
        "payload.headers",
        "'X-A': [\"Must be ASCII text: '\u00e9' cannot be sent in a header",
    ),
    (
        "fetch_url",
        {"url": "https://example.com", "headers": {"X-A": "ok", "X-B": "\U0001f600"}},
        "payload.headers",
        "'X-B': [\"Must be ASCII text: '\U0001f600'",
    ),
    (
        "fetch_url",
        {"url": "https://example.com", "headers": {f"X-{n}": "v" for n in range(21)}},
        "payload.headers",
        "20",
    ),
]


@pytest.mark.parametrize(
    ("type", "payload", "field", "rule"),
    CASES,
    ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)],
)
def test_an_invalid_payload_is_a_400_naming_the_field_and_the_rule(
    api, ids, type, payload, field, rule
):
    response = api.post("/api/tasks", {"type": type, "payload": fill(payload, ids)}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"], error
    assert rule in str(error["fields"][field]), error
    assert rule in error["message"] or field in error["message"], error
    assert Task.objects.count() == 0


def test_another_users_file_reads_exactly_like_a_missing_one(api, ids):
    def message(ref: str) -> Any:
        payload = {"to": "a@example.com", "attached_files": [ref]}
        body = api.post("/api/tasks", {"type": "send_email", "payload": payload}, format="json")
        return body.json()["error"]["fields"]["payload.attached_files"]

    missing = "00000000-0000-0000-0000-000000000000"
    assert message(ids[THEIRS]) == message(missing) == {"0": ["No such file."]}


def test_an_ambiguous_name_asks_for_the_id(api, user, ids):
    make_file(user, "mine.png")
    response = api.post(
        "/api/tasks",
        {"type": "process_image", "payload": {"path": "mine.png", "blur": 1}},
        format="json",
    )
    assert response.status_code == 400
    assert "give the file's id" in str(response.json()["error"]["fields"]["payload.path"])


VALID = [
    ("send_email", {"to": "ann@example.com", "body": "hello"}),
    ("send_email", {"to": ["a@example.com", "A@example.com"], "attached_files": [MINE]}),
    ("process_image", {"path": MINE, "gamma": 0.5, "contrast": -100, "grayscale": True}),
    ("process_image", {"path": "mine.png", "saturation": 100}),
    ("download_files", {"urls": ["https://example.com/a.zip", "http://example.org/b"]}),
    ("download_files", {"urls": ["http://example.com:1/a", "https://example.com:65535/b"]}),
    ("fetch_url", {"url": "https://example.com/", "method": "head", "headers": {"X-A": "1"}}),
]


@pytest.mark.parametrize(("type", "payload"), VALID)
def test_valid_payloads_are_accepted_and_normalised(api, ids, type, payload):
    response = api.post("/api/tasks", {"type": type, "payload": fill(payload, ids)}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["queue"] == ("cpu" if type == "process_image" else "io")
    stored = body["payload"]
    if type == "send_email":
        assert isinstance(stored["to"], list)
        assert len(stored["to"]) == 1 or stored["to"] == ["ann@example.com"]
    if type == "process_image":
        assert stored["path"] == ids[MINE]
    if type == "fetch_url":
        assert (stored["method"], stored["timeout"]) == ("HEAD", 10)


NUMBERS = [
    ("process_image", "blur", {"path": MINE}, (2, 2.5)),
    ("process_image", "sharpen", {"path": MINE}, (1, 0.5)),
    ("process_image", "gamma", {"path": MINE}, (2, 0.5)),
    ("process_image", "contrast", {"path": MINE}, (-100, 12.5)),
    ("process_image", "brightness", {"path": MINE}, (100, -0.5)),
    ("process_image", "saturation", {"path": MINE}, (50, 99.9)),
    ("fetch_url", "timeout", {"url": "https://example.com/"}, (5, 0.25)),
    ("long_computation", "duration", {}, (3, 0.5)),
]


@pytest.mark.parametrize(
    ("type", "field", "rest", "numbers"), NUMBERS, ids=[f"{n[0]}-{n[1]}" for n in NUMBERS]
)
def test_every_builtin_number_takes_json_numbers_only(api, ids, type, field, rest, numbers):
    """Payloads are JSON: true is not 1, and "5" or "1_0" are not numbers (docs/task-types.md)."""

    def post(value: Any) -> Any:
        payload = fill({**rest, field: value}, ids)
        return api.post("/api/tasks", {"type": type, "payload": payload}, format="json")

    for value in (True, False, "5", " 5 ", "1_0", "NaN", None, [1], {"n": 1}):
        response = post(value)
        assert response.status_code == 400, (value, response.content)
        assert f"payload.{field}" in response.json()["error"]["fields"], value
    assert not Task.objects.exists()
    for value in numbers:
        response = post(value)
        assert response.status_code == 201, (value, response.content)
        assert response.json()["payload"][field] == value


def test_the_task_types_list_shows_the_new_types_and_their_queues(api):
    types = {t["name"]: t for t in api.get("/api/task-types").json()}
    assert {n: types[n]["queue"] for n in ("send_email", "download_files", "fetch_url")} == {
        "send_email": "io",
        "download_files": "io",
        "fetch_url": "io",
    }
    assert types["process_image"]["queue"] == "cpu"
    assert types["long_computation"]["queue"] == "io"
    schema = types["process_image"]["payload_schema"]
    assert schema["required"] == ["path"]
    assert schema["properties"]["contrast"]["minimum"] == -100


def test_changing_a_payload_checks_files_against_the_owner_too(api, ids):
    created = api.post(
        "/api/tasks",
        {
            "type": "process_image",
            "payload": {"path": ids[MINE], "blur": 1},
            "run_at": "2099-01-01T00:00:00Z",
        },
        format="json",
    ).json()
    response = api.patch(
        f"/api/tasks/{created['id']}",
        {"payload": {"path": ids[THEIRS], "blur": 1}},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["payload.path"] == ["No such file."]
    assert Task.objects.get(id=created["id"]).payload["path"] == ids[MINE]


def test_a_fetch_url_method_of_a_list_is_a_400_in_a_bulk_create_and_a_change_too(api):
    bulk = api.post(
        "/api/tasks/bulk",
        {"tasks": [{"type": "fetch_url", "payload": {"url": "https://e.com/", "method": []}}]},
        format="json",
    )
    assert bulk.status_code == 400, bulk.content
    assert "tasks[0].payload.method" in bulk.json()["error"]["fields"], bulk.json()
    assert not Task.objects.exists()

    created = api.post(
        "/api/tasks",
        {
            "type": "fetch_url",
            "payload": {"url": "https://example.com/"},
            "run_at": "2099-01-01T00:00:00Z",
        },
        format="json",
    ).json()
    changed = api.patch(
        f"/api/tasks/{created['id']}",
        {"payload": {"url": "https://example.com/", "method": {"GET": 1}}},
        format="json",
    )
    assert changed.status_code == 400, changed.content
    assert "payload.method" in changed.json()["error"]["fields"]
    assert Task.objects.get(id=created["id"]).payload["method"] == "GET"
