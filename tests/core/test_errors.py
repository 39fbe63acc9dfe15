"""One error shape everywhere: {"error": {"code", "message", "fields"}}, whatever went wrong.

Also the API's description: the OpenAPI schema generates without warnings and validates.
"""

import json
import uuid
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.management import call_command
from django.db import InterfaceError, OperationalError
from django.http import Http404, QueryDict
from django.test import RequestFactory
from django.urls import path
from drf_spectacular.drainage import GENERATOR_STATS
from rest_framework import exceptions, serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from apps.core.api import StrictInputSerializer
from apps.core.exceptions import ApplicationError, Conflict, NotFound, api_exception_handler
from apps.core.views import bad_request, not_found, server_error
from taskflow import urls as project_urls


def assert_error_shape(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "fields"} <= set(error), error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["fields"], dict)
    return error


# A URLconf for this module: the project's URLs and error handlers, plus a view that breaks.
class BrokenApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    def get(self, request: Request) -> Response:
        raise RuntimeError("a bug")


urlpatterns = [path("broken", BrokenApi.as_view()), *project_urls.urlpatterns]
handler400 = project_urls.handler400
handler404 = project_urls.handler404
handler500 = project_urls.handler500


# --- Through the test client -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/me"),
        ("get", "/api/tasks"),
        ("post", "/api/tasks"),
        ("get", f"/api/tasks/{uuid.uuid4()}"),
        ("patch", f"/api/tasks/{uuid.uuid4()}"),
        ("delete", f"/api/tasks/{uuid.uuid4()}"),
        ("get", f"/api/tasks/{uuid.uuid4()}/result"),
        ("post", f"/api/tasks/{uuid.uuid4()}/cancel"),
        ("post", f"/api/tasks/{uuid.uuid4()}/retry"),
        ("get", "/api/task-types"),
    ],
)
def test_unauthenticated_is_401_in_the_error_shape(method, url):
    response = getattr(APIClient(), method)(url)
    error = assert_error_shape(response, 401, "not_authenticated")
    assert error["fields"] == {}
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.django_db
def test_a_bad_token_is_401_in_the_error_shape():
    response = APIClient().get("/api/tasks", HTTP_AUTHORIZATION="Bearer nonsense")
    assert_error_shape(response, 401, "token_not_valid")


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/nope", "/api/nope", "/api/tasks/nope", "/api/tasks/1/result"])
def test_an_unknown_url_is_a_json_404(url):
    assert_error_shape(APIClient().get(url), 404, "not_found")


def test_a_validation_error_names_its_fields_and_sums_them_up(api):
    response = api.post("/api/tasks", {"payload": {}, "max_retries": "x"}, format="json")
    error = assert_error_shape(response, 400, "validation_error")
    assert set(error["fields"]) == {"type", "max_retries"}
    assert all(isinstance(m, str) for messages in error["fields"].values() for m in messages)
    assert error["message"].startswith("Invalid input: type: ")


def test_a_domain_error_keeps_its_code_and_extra_keys(api):
    response = api.post("/api/tasks", {"type": "nope", "payload": {}}, format="json")
    error = assert_error_shape(response, 400, "unknown_task_type")
    assert "type" in error["fields"]
    assert "echo" in error["valid_types"]


def test_a_conflict_is_409_in_the_error_shape(api):
    task_id = api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json").json()["id"]
    error = assert_error_shape(api.delete(f"/api/tasks/{task_id}"), 409, "task_not_finished")
    assert error["status"] == "queued"


def test_malformed_json_is_400_in_the_error_shape(api):
    response = api.post("/api/tasks", "{nope", content_type="application/json")
    assert_error_shape(response, 400, "malformed_request")


def test_an_unsupported_media_type_is_415_in_the_error_shape(api):
    response = api.post("/api/tasks", "<task/>", content_type="application/xml")
    assert_error_shape(response, 415, "unsupported_media_type")


def test_a_method_not_allowed_is_405_in_the_error_shape(api):
    assert_error_shape(api.put("/api/tasks", {}, format="json"), 405, "method_not_allowed")


FORM = "application/x-www-form-urlencoded"
BOUNDARY = "b0undary"


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """A multipart/form-data body of these fields, their values as raw bytes."""
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"type=echo&payload=%7B%22a%22%3A%22%FF%22%7D", FORM),
        (b'type=echo&payload={"a":"\xff"}', FORM),
        (b"type=ech%C3&payload=%7B%7D", FORM),
        (
            multipart(("type", b"echo"), ("payload", b'{"a": "\xff"}')),
            f"multipart/form-data; boundary={BOUNDARY}",
        ),
    ],
    ids=["percent-escaped-0xff", "raw-0xff", "cut-sequence", "multipart-raw-0xff"],
)
def test_a_form_body_that_is_not_utf8_is_400_not_replaced(api, body, content_type):
    """Regression: a JSON body with such bytes was a 400 already; in a form body they were
    stored as U+FFFD (percent-escaped, multipart) or the whole body read as Latin-1 (raw)."""
    from apps.tasks.models import Task

    response = api.post("/api/tasks", body, content_type=content_type)
    error = assert_error_shape(response, 400, "malformed_request")
    assert "not valid utf-8" in error["message"], error
    assert not Task.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"type=echo&payload=%7B%22a%22%3A%22%C3%A9%E2%82%AC%22%7D", FORM),
        ('type=echo&payload={"a":"é€"}'.encode(), FORM),
        (
            multipart(("type", b"echo"), ("payload", '{"a": "é€"}'.encode())),
            f"multipart/form-data; boundary={BOUNDARY}",
        ),
    ],
    ids=["percent-escaped", "raw", "multipart"],
)
def test_a_form_body_in_utf8_keeps_its_text(api, body, content_type):
    response = api.post("/api/tasks", body, content_type=content_type)
    assert response.status_code == 201, response.content
    assert response.json()["payload"] == {"a": "é€"}


def test_a_form_body_in_its_declared_charset_is_read_in_it(api):
    body = 'type=echo&payload={"a":"\xe9"}'.encode("latin-1")
    response = api.post("/api/tasks", body, content_type=f"{FORM}; charset=latin-1")
    assert response.status_code == 201, response.content
    assert response.json()["payload"] == {"a": "é"}


@pytest.mark.django_db
def test_a_disallowed_host_is_a_json_400():
    response = APIClient().get("/health", HTTP_HOST="evil.example.com")
    assert_error_shape(response, 400, "bad_request")


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_bug_is_a_json_500_without_details():
    client = APIClient(raise_request_exception=False)
    response = client.get("/broken")
    error = assert_error_shape(response, 500, "server_error")
    assert "a bug" not in response.content.decode()
    assert error["message"] == "Internal server error."


def test_the_project_wires_the_json_error_handlers():
    assert project_urls.handler400 == "apps.core.views.bad_request"
    assert project_urls.handler404 == "apps.core.views.not_found"
    assert project_urls.handler500 == "apps.core.views.server_error"


# --- The handler and the error views, directly -----------------------------------------------


def handle(exc: Exception) -> Any:
    return api_exception_handler(exc, {})


def test_handler_application_error():
    response = handle(
        ApplicationError("Nope.", code="nope", fields={"f": ["bad"]}, extra={"hint": 1})
    )
    assert response.status_code == 400
    assert response.data == {
        "error": {"code": "nope", "message": "Nope.", "fields": {"f": ["bad"]}, "hint": 1}
    }


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (NotFound(), 404, "not_found"),
        (NotFound("No such task.", code="task_not_found"), 404, "task_not_found"),
        (Conflict("Busy.", code="busy"), 409, "busy"),
        (ApplicationError("Big.", code="too_big", status_code=413), 413, "too_big"),
        (Http404(), 404, "not_found"),
        (DjangoPermissionDenied(), 403, "permission_denied"),
        (exceptions.PermissionDenied(), 403, "permission_denied"),
        (exceptions.NotAuthenticated(), 401, "not_authenticated"),
        (exceptions.Throttled(wait=3), 429, "throttled"),
        (exceptions.ParseError("bad json"), 400, "malformed_request"),
        (TooManyFieldsSent(), 400, "malformed_request"),
        (TooManyFilesSent(), 400, "malformed_request"),
        (exceptions.APIException(), 500, "error"),
        (exceptions.APIException("Custom.", code="custom"), 500, "custom"),
        (OperationalError("server closed the connection"), 503, "database_unavailable"),
        (InterfaceError("connection already closed"), 503, "database_unavailable"),
    ],
)
def test_handler_gives_every_error_the_one_shape(exc, status, code):
    response = handle(exc)
    assert response.status_code == status
    assert set(response.data) == {"error"}
    error = response.data["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["fields"], dict)


def test_handler_django_validation_error_with_fields():
    response = handle(DjangoValidationError({"email": ["Taken."], "name": ["Too long."]}))
    assert response.status_code == 400
    error = response.data["error"]
    assert error["code"] == "validation_error"
    assert error["fields"] == {"email": ["Taken."], "name": ["Too long."]}
    assert error["message"] == "Invalid input: email: Taken."


def test_handler_django_validation_error_without_fields():
    error = handle(DjangoValidationError("Broken.")).data["error"]
    assert error["fields"] == {"non_field_errors": ["Broken."]}
    assert error["message"] == "Invalid input: Broken."


def test_handler_nested_and_list_validation_errors():
    nested = handle(exceptions.ValidationError({"payload": {"duration": ["Too big."]}}))
    assert nested.data["error"]["fields"] == {"payload": {"duration": ["Too big."]}}
    assert nested.data["error"]["message"] == "Invalid input: payload: Too big."
    flat = handle(exceptions.ValidationError(["One.", "Two."]))
    assert flat.data["error"]["fields"] == {"non_field_errors": ["One.", "Two."]}


def test_handler_names_the_limit_of_fields_and_files(settings):
    """Regression: Django's handler400 answered them with a bare "Bad request."."""
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 12
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    assert "more than 12 fields" in handle(TooManyFieldsSent()).data["error"]["message"]
    assert "more than 3 files" in handle(TooManyFilesSent()).data["error"]["message"]
    error = json.loads(bad_request(RequestFactory().get("/x"), TooManyFieldsSent()).content)
    assert "more than 12 fields" in error["error"]["message"]


def test_handler_leaves_a_bug_to_djangos_500():
    assert handle(RuntimeError("bug")) is None


@pytest.mark.parametrize(
    ("view", "status", "code"),
    [
        (lambda r: server_error(r), 500, "server_error"),
        (lambda r: not_found(r, Http404()), 404, "not_found"),
        (lambda r: bad_request(r, Exception()), 400, "bad_request"),
    ],
)
def test_error_views_answer_in_the_error_shape(view, status, code):
    assert_error_shape(view(RequestFactory().get("/x")), status, code)


# --- Strict input ----------------------------------------------------------------------------


class Sample(StrictInputSerializer):
    name = serializers.CharField()


def test_strict_input_names_unknown_fields():
    serializer = Sample(data={"name": "x", "colour": "red", "size": 1})
    assert not serializer.is_valid()
    assert set(serializer.errors) == {"colour", "size"}
    assert "Known fields: name" in str(serializer.errors["colour"][0])


@pytest.mark.parametrize("data", [[1], "text", 3])
def test_strict_input_wants_an_object(data):
    serializer = Sample(data=data)
    assert not serializer.is_valid()
    assert "non_field_errors" in serializer.errors


def test_strict_input_names_a_form_field_sent_twice():
    """Regression: DRF reads a QueryDict's last value: "x" was dropped without a word."""
    serializer = Sample(data=QueryDict("name=x&name=y&name=z"))
    assert not serializer.is_valid()
    assert serializer.errors == {"name": ["Sent 3 times: send one value."]}


def test_strict_input_takes_a_form_fields_values_as_a_list_where_it_is_one():
    class Tags(StrictInputSerializer):
        name = serializers.CharField()
        tags = serializers.ListField(child=serializers.CharField())

    serializer = Tags(data=QueryDict("name=x&tags=a&tags=b"))
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data == {"name": "x", "tags": ["a", "b"]}


def test_strict_input_accepts_known_fields():
    serializer = Sample(data={"name": "x"})
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data == {"name": "x"}


# --- The API's description -------------------------------------------------------------------


@pytest.mark.django_db
def test_the_openapi_schema_is_served():
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    for expected in [
        "/api/register",
        "/api/login",
        "/api/token/refresh",
        "/api/me",
        "/api/tasks/",
        "/api/tasks/{task_id}/",
        "/api/tasks/{task_id}/result/",
        "/api/tasks/{task_id}/cancel/",
        "/api/tasks/{task_id}/retry/",
        "/api/task-types/",
    ]:
        assert expected in paths, sorted(paths)
    listing = schema["paths"]["/api/tasks/"]["get"]
    assert {"status", "type", "created_after", "created_before", "cursor", "page_size"} <= {
        p["name"] for p in listing["parameters"]
    }
    assert "jwtAuth" in schema["components"]["securitySchemes"]


@pytest.mark.django_db
def test_the_openapi_schema_generates_without_warnings_and_validates(tmp_path):
    """`manage.py spectacular --validate --fail-on-warn`: any warning or invalid schema fails."""
    GENERATOR_STATS.reset()
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.read_text().startswith("openapi: 3.")


@pytest.mark.django_db
def test_the_api_docs_page_is_served():
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
