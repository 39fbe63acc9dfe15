"""Request middleware: a request id on every request and log line, one log line per request, and
the HTTP metrics."""

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject, empty

from apps.core.logging import bind_log_context, clear_log_context
from apps.monitoring.metrics import HTTP_LATENCY, HTTP_REQUESTS

logger = logging.getLogger("taskflow.http")

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept if it looks like an id (a proxy's, a client's); anything else is replaced.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _user_id(request: HttpRequest) -> int | None:
    """The authenticated user's id, if authentication already ran (never runs it itself)."""
    user: Any = request.__dict__.get("user")
    if user is None or (isinstance(user, SimpleLazyObject) and user._wrapped is empty):
        return None
    return user.pk if getattr(user, "is_authenticated", False) else None


class RequestIdMiddleware:
    """X-Request-ID in (kept if sane) and out; request_id and user_id on every log line; one line
    per request with its route, status and duration."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        clear_log_context()  # threads are reused from one request to the next
        bind_log_context(request_id=request_id, user_id=lambda: _user_id(request))
        started = time.perf_counter()
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        duration = time.perf_counter() - started
        match = getattr(request, "resolver_match", None)
        logger.info(
            "%s %s %s %.1fms",
            request.method,
            request.get_full_path(),
            response.status_code,
            duration * 1000,
            extra={
                "method": request.method,
                "path": request.path,
                "route": match.view_name if match is not None else None,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
            },
        )
        # The context stays until the response is closed (request_finished below), so that the
        # lines Django logs after the middleware (django.request's 4xx and 5xx) carry it too.
        return response


@receiver(request_finished)
def clear_request_log_context(**kwargs: Any) -> None:
    clear_log_context()


class MetricsMiddleware:
    """Counts and times every request, labelled by its Django URL name (not its path, so that ids
    do not make a new time series each)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.view_name or match.route) if match is not None else "<unmatched>"
        labels = (route, request.method or "", str(response.status_code))
        HTTP_REQUESTS.labels(*labels).inc()
        HTTP_LATENCY.labels(*labels).observe(time.perf_counter() - started)
        return response
