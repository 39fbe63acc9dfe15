"""Non-API pages: the staff dashboard and its script, and the Prometheus endpoint."""

import hmac
from pathlib import Path

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.core.exceptions import error_body
from apps.monitoring.metrics import metrics_response

DASHBOARD_SCRIPT = Path(__file__).parent / "static" / "monitoring" / "dashboard.js"
REFRESH_SECONDS = 3


@require_GET
@never_cache
@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The staff dashboard; `?refresh=N` refreshes every N seconds (1..60) instead of 3."""
    try:
        refresh = min(60, max(1, int(request.GET.get("refresh", REFRESH_SECONDS))))
    except ValueError:
        refresh = REFRESH_SECONDS
    return render(
        request,
        "monitoring/dashboard.html",
        {"refresh_seconds": refresh, "title": "TaskFlow dashboard"},
    )


@require_GET
def dashboard_script(request: HttpRequest) -> HttpResponse:
    # Served by the project itself, so the dashboard needs no static file server.
    response = HttpResponse(
        DASHBOARD_SCRIPT.read_bytes(), content_type="text/javascript; charset=utf-8"
    )
    response["Cache-Control"] = "public, max-age=300"
    return response


def _bearer_token_ok(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), expected.encode())
    )


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format, for `Authorization: Bearer $METRICS_TOKEN` or a staff session."""
    if _bearer_token_ok(request) or (request.user.is_authenticated and request.user.is_staff):
        return metrics_response()
    if request.user.is_authenticated:
        return JsonResponse(
            error_body("permission_denied", "Metrics are for staff or the metrics token."),
            status=403,
        )
    response = JsonResponse(
        error_body(
            "not_authenticated",
            "Send Authorization: Bearer <METRICS_TOKEN>, or log in as staff.",
        ),
        status=401,
    )
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response
