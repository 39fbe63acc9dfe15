"""The admin's (and the staff dashboard's) guard against query strings and selections PostgreSQL or
the model cannot take, which reached the database as they were: a 500 each.

- A NUL character anywhere in the query string of an /admin/ page (a list filter's value, the
  search, a parameter's name) is a 400: PostgreSQL cannot hold NUL, and Django's own list filters
  pass the value to the database as it is (`?status__exact=%00`, `?content_type=%00`).
- An admin action's selected ids (`_selected_action`) that are no primary key of the model ("not-a-
  uuid" for a task) are dropped before the action runs: the rest are acted on, and with none left
  Django answers "Items must be selected".
"""

from collections.abc import Callable
from typing import Any

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.core.exceptions import error_body

# Where taskflow/urls.py mounts the admin and the staff dashboard.
ADMIN_PREFIX = "/admin/"


class AdminInputMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(ADMIN_PREFIX) and _has_nul(request):
            return JsonResponse(
                error_body("bad_request", "The query string holds a NUL character."), status=400
            )
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        # The admin's views carry their ModelAdmin (ModelAdmin.get_urls); a changelist's POST
        # with selected ids is an action.
        model_admin = getattr(view_func, "model_admin", None)
        if model_admin is None or request.method != "POST":
            return
        selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
        if not selected:
            return
        pk = model_admin.model._meta.pk
        kept = [value for value in selected if _is_pk(pk, value)]
        if len(kept) != len(selected):
            post = request.POST.copy()
            post.setlist(ACTION_CHECKBOX_NAME, kept)
            post._mutable = False  # immutable, as Django's own (the stubs want that type)
            request.POST = post  # type: ignore[assignment]


def _has_nul(request: HttpRequest) -> bool:
    return any(
        "\x00" in key or any("\x00" in value for value in values)
        for key, values in request.GET.lists()
    )


def _is_pk(field: Any, value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        field.run_validators(field.to_python(value))  # the type, and an integer column's range
    except (ValidationError, ValueError, TypeError):
        return False
    return True
