from django.urls import re_path

from apps.callbacks import api

# With and without a trailing slash, as the task paths are.
urlpatterns = [
    re_path(r"^callbacks/secret/?$", api.CallbackSecretApi.as_view(), name="callback-secret"),
]
