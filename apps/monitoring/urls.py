from django.urls import re_path

from apps.monitoring import api, views

UUID = (
    r"(?P<task_id>[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})"
)

# Mounted at the root. API paths work with and without a trailing slash, like the others.
urlpatterns = [
    re_path(r"^api/stats/?$", api.StatsApi.as_view(), name="stats"),
    re_path(
        rf"^api/monitoring/tasks/{UUID}/?$",
        api.StaffTaskDetailApi.as_view(),
        name="monitoring-task-detail",
    ),
    re_path(
        rf"^api/monitoring/tasks/{UUID}/retry/?$",
        api.StaffTaskRetryApi.as_view(),
        name="monitoring-task-retry",
    ),
    re_path(r"^metrics/?$", views.metrics, name="metrics"),
    re_path(r"^admin/dashboard/$", views.dashboard, name="dashboard"),
    re_path(r"^admin/dashboard/dashboard\.js$", views.dashboard_script, name="dashboard-script"),
]
