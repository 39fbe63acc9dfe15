"""Error pages for non-API failures, in the API's error shape."""

from django.http import HttpRequest, JsonResponse

from apps.core.exceptions import error_body, too_many_message


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)


def not_found(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def bad_request(request: HttpRequest, exception: Exception) -> JsonResponse:
    # Too many fields or files also when Django reads a form outside the API (the admin's).
    message = too_many_message(exception) or "Bad request."
    return JsonResponse(error_body("bad_request", message), status=400)
