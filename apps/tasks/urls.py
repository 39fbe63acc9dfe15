from django.urls import re_path

from apps.tasks import api

UUID = (
    r"(?P<task_id>[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})"
)

# Paths work with and without a trailing slash (the seeds' clients send none).
urlpatterns = [
    re_path(r"^tasks/?$", api.TaskListCreateApi.as_view(), name="task-list"),
    re_path(r"^tasks/bulk/?$", api.TaskBulkCreateApi.as_view(), name="task-bulk-create"),
    re_path(rf"^tasks/{UUID}/?$", api.TaskDetailApi.as_view(), name="task-detail"),
    re_path(rf"^tasks/{UUID}/result/?$", api.TaskResultApi.as_view(), name="task-result"),
    re_path(rf"^tasks/{UUID}/cancel/?$", api.TaskCancelApi.as_view(), name="task-cancel"),
    re_path(rf"^tasks/{UUID}/retry/?$", api.TaskRetryApi.as_view(), name="task-retry"),
    re_path(r"^task-types/?$", api.TaskTypeListApi.as_view(), name="task-type-list"),
]
