from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.core.api_root import ApiRootApi
from apps.monitoring.api import HealthApi, ReadyApi

handler400 = "apps.core.views.bad_request"
handler404 = "apps.core.views.not_found"
handler500 = "apps.core.views.server_error"

urlpatterns = [
    re_path(r"^health/?$", HealthApi.as_view(), name="health"),
    re_path(r"^ready/?$", ReadyApi.as_view(), name="ready"),
    path("api/", ApiRootApi.as_view(), name="api-root"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include("apps.accounts.urls")),
    path("api/", include("apps.tasks.urls")),
    path("api/", include("apps.files.urls")),
    path("api/", include("apps.schedules.urls")),
    path("api/", include("apps.callbacks.urls")),
    # /api/stats, /metrics and the staff dashboard at /admin/dashboard/ (before the admin's own).
    path("", include("apps.monitoring.urls")),
    path("admin/", admin.site.urls),
]
