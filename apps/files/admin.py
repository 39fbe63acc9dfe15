"""Staff's view of users' files (metadata; the bytes stay behind the owner's API)."""

from django.contrib import admin
from django.http import HttpRequest

from apps.files.models import UserFile


@admin.register(UserFile)
class UserFileAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "size", "content_type", "source_task", "created_at")
    list_select_related = ("owner",)
    list_filter = ("content_type",)
    search_fields = ("name", "owner__email", "sha256", "=id")
    readonly_fields = (
        "id",
        "owner",
        "name",
        "size",
        "content_type",
        "storage_key",
        "sha256",
        "created_at",
        "source_task",
        "source_key",
    )
    raw_id_fields = ("owner", "source_task")
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
