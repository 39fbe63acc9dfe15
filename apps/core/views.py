"""Error pages for non-API failures, in the API's error shape."""

from django.http import HttpRequest, JsonResponse

from apps.core.exceptions import error_body


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)


def not_found(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def bad_request(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)
