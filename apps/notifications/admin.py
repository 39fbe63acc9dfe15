from django.contrib import admin

from apps.notifications.models import SentEmail


@admin.register(SentEmail)
class SentEmailAdmin(admin.ModelAdmin):
    list_display = ("task", "message_id", "attempt", "sent_at")
    search_fields = ("message_id", "=task__id")
    readonly_fields = ("task", "message_id", "recipients", "refused", "attempt", "sent_at")
    raw_id_fields = ("task",)
