from django.urls import re_path

from apps.files import api

UUID = (
    r"(?P<file_id>[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})"
)

urlpatterns = [
    re_path(r"^files/?$", api.FileListCreateApi.as_view(), name="file-list"),
    re_path(rf"^files/{UUID}/?$", api.FileDetailApi.as_view(), name="file-detail"),
    re_path(rf"^files/{UUID}/download/?$", api.FileDownloadApi.as_view(), name="file-download"),
]
