from django.urls import re_path

from apps.schedules import api

UUID = (
    r"(?P<schedule_id>[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
    r"[0-9a-fA-F]{12})"
)

# Paths work with and without a trailing slash, as the task paths do.
urlpatterns = [
    re_path(r"^schedules/?$", api.ScheduleListCreateApi.as_view(), name="schedule-list"),
    re_path(rf"^schedules/{UUID}/?$", api.ScheduleDetailApi.as_view(), name="schedule-detail"),
    re_path(rf"^schedules/{UUID}/run/?$", api.ScheduleRunApi.as_view(), name="schedule-run"),
]
