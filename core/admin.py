from django.contrib import admin
from django.http import HttpRequest

from core.models import AuditLog


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only services write: visible, never edited or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor_repr", "action", "object_type", "object_id", "ip", "request_id")
    list_filter = ("action", "object_type")
    search_fields = ("actor_repr", "object_id", "request_id", "action")
    date_hierarchy = "created_at"
    show_full_result_count = False
