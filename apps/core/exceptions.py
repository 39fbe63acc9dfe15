"""One error type for the domain, one JSON error shape for the API.

Every error answer looks like ``{"error": {"code": ..., "message": ..., "fields": {...}}}``.
"""

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

logger = logging.getLogger(__name__)

# Seconds a client is asked to wait when the database did not answer (Retry-After).
DATABASE_RETRY_AFTER_SECONDS = 1


class ApplicationError(Exception):
    """A domain error the caller can act on; `code` is machine-readable."""

    status_code: int = status.HTTP_400_BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        fields: dict[str, Any] | None = None,
        status_code: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.fields = fields or {}
        self.extra = extra or {}
        if status_code is not None:
            self.status_code = status_code


class NotFound(ApplicationError):
    status_code: int = status.HTTP_404_NOT_FOUND

    def __init__(self, message: str = "Not found.", *, code: str = "not_found") -> None:
        super().__init__(message, code=code)


class Conflict(ApplicationError):
    status_code: int = status.HTTP_409_CONFLICT


def error_body(
    code: str, message: str, fields: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}, **extra}}


def flatten_detail(detail: Any) -> Any:
    """DRF's ErrorDetail tree, as plain strings and lists."""
    if isinstance(detail, dict):
        return {str(key): flatten_detail(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [flatten_detail(item) for item in detail]
    return str(detail)


def validation_summary(fields: dict[str, Any]) -> str:
    first_field, first_errors = next(iter(fields.items()))
    first = first_errors
    while isinstance(first, (list, dict)) and first:
        first = first[0] if isinstance(first, list) else next(iter(first.values()))
    if first_field == "non_field_errors":
        return str(first)
    return f"{first_field}: {first}"


def too_many_message(exc: Exception) -> str | None:
    """What Django's TooManyFieldsSent / TooManyFilesSent mean, naming the limit (else None).

    Django's own answer to them (handler400) is a bare "Bad request.".
    """
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return f"Malformed request: more than {limit} fields in the form or the query string."
    if isinstance(exc, TooManyFilesSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        return f"Malformed request body: more than {limit} files in one request."
    return None


_CODE_BY_EXCEPTION: dict[type[exceptions.APIException], str] = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    exceptions.ParseError: "malformed_request",
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(
            error_body(exc.code, exc.message, exc.fields, **exc.extra), status=exc.status_code
        )
    if isinstance(exc, RequestDataTooBig):
        # Django's own limit (DATA_UPLOAD_MAX_MEMORY_SIZE), before any payload check: a 413 as well.
        return Response(
            error_body("payload_too_large", "The request body is too large."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    too_many = too_many_message(exc)
    if too_many is not None:
        return Response(
            error_body("malformed_request", too_many), status=status.HTTP_400_BAD_REQUEST
        )
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database is away, restarting, or cut this thread's connection (no ping before a
        # reused connection's first query: CONN_HEALTH_CHECKS). Django closes the broken
        # connection when the request ends, so asking again gets a new one: a 503, not a 500.
        logger.warning("Database unavailable: %s", exc)
        set_rollback()
        return Response(
            error_body("database_unavailable", "The database is unavailable; try again."),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a real bug: Django's 500 handler (which logs it) takes over
    assert isinstance(exc, exceptions.APIException)

    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        fields = (
            flatten_detail(detail)
            if isinstance(detail, dict)
            else {"non_field_errors": flatten_detail(detail)}
        )
        body = error_body(
            "validation_error", f"Invalid input: {validation_summary(fields)}", fields
        )
    elif isinstance(exc, exceptions.ParseError):
        body = error_body("malformed_request", f"Malformed request body: {exc.detail}")
    else:
        code = _CODE_BY_EXCEPTION.get(type(exc))
        if code is None:
            codes = exc.get_codes()
            code = codes if isinstance(codes, str) else "error"
        raw_detail: Any = exc.detail
        if isinstance(raw_detail, dict):
            # simplejwt answers {"detail": ..., "code": ..., "messages": [...]}
            message = str(raw_detail.get("detail", "Request failed."))
            code = str(raw_detail.get("code", code))
        else:
            message = str(raw_detail)
        body = error_body(code, message)
        wait = getattr(exc, "wait", None) if isinstance(exc, exceptions.Throttled) else None
        if wait is not None:
            body["error"]["retry_after"] = int(wait)  # also in the Retry-After header
    response.data = body
    return response
