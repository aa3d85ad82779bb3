from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import ReadOnlyAdmin
from core.errors import AppError
from providers.models import WebhookEvent
from providers.webhooks import webhook_reprocess


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "provider", "event_type", "event_id", "signature_valid", "status", "attempts", "created_at")
    list_filter = ("provider", "status", "signature_valid", "event_type")
    search_fields = ("=event_id", "event_type")
    show_full_result_count = False
    actions = ("reprocess",)

    def has_reprocess_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("providers.reprocess_webhookevent")

    @admin.action(description="Reprocess selected events", permissions=["reprocess"])
    def reprocess(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        for event in queryset[:100]:
            try:
                result = webhook_reprocess(event_pk=event.pk, actor=request.user)
            except AppError as error:
                self.message_user(
                    request, f"Event {event.pk}: {error.user_message} {error.action_required}", messages.ERROR
                )
                continue
            self.message_user(request, f"Event {event.pk} reprocessed: {result.status}.", messages.SUCCESS)
