from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from core.admin import AmountsInBoundsForm, ReadOnlyAdmin
from core.errors import AppError
from core.exports import CsvExportMixin
from core.labels import help_column, status_column
from core.list_filters import IndexedValuesFilter
from core.money import Money
from core.paginators import LargeTableAdminMixin
from core.services import audit_record
from providers.models import (
    FeeRule,
    MoneyMovement,
    Payment,
    PaymentAttempt,
    PaymentMethod,
    Refund,
    RoutingDecision,
    WebhookEvent,
)
from providers.protocol import movement_sync_by_staff
from providers.resources import PaymentResource, RefundResource
from providers.webhooks import webhook_reprocess


@admin.register(WebhookEvent)
class WebhookEventAdmin(LargeTableAdminMixin, ReadOnlyAdmin):
    list_display = ("id", "provider", "event_type", "event_id", "signature_valid", "status", "attempts", "created_at")
    list_filter = (("provider", IndexedValuesFilter), "status", "signature_valid", ("event_type", IndexedValuesFilter))
    search_fields = ("event_id__exact",)  # indexed (providers/0010); the event type is a filter
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


class AuditedConfigAdmin(admin.ModelAdmin):
    """Configuration staff may edit; every change is written to the audit log."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = {name: form.initial.get(name) for name in form.changed_data} if change else None
        super().save_model(request, obj, form, change)
        after = {name: form.cleaned_data.get(name) for name in form.changed_data}
        action = f"{obj._meta.label_lower}.{'change' if change else 'add'}"
        audit_record(actor=request.user, action=action, obj=obj, before=_plain(before), after=_plain(after))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # disable instead; rules that priced past payments stay on record


def _plain(values: dict[str, Any] | None) -> dict[str, str] | None:
    return None if values is None else {name: str(value) for name, value in values.items()}


class PaymentMethodForm(AmountsInBoundsForm):
    amount_fields = {"min_minor": "currency", "max_minor": "currency"}


class FeeRuleForm(AmountsInBoundsForm):
    amount_fields = {"fixed_minor": "currency", "platform_fixed_minor": "currency"}
    zero_allowed = True  # a rule without a fixed part


@admin.register(PaymentMethod)
class PaymentMethodAdmin(AuditedConfigAdmin):
    form = PaymentMethodForm
    list_display = ("provider", "method", "currency", "min_minor", "max_minor", "priority", "enabled")
    list_filter = ("provider", "currency", "enabled")


@admin.register(FeeRule)
class FeeRuleAdmin(AuditedConfigAdmin):
    form = FeeRuleForm
    list_display = ("provider", "method", "currency", "percent_bps", "fixed_minor", "platform_percent_bps",
                    "platform_fixed_minor", "effective_from")  # fmt: skip
    list_filter = ("provider", "currency")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # A rule that already took effect priced real payments: add a new rule instead of editing it.
        if obj is not None and obj.effective_from <= timezone.now():
            return tuple(field.name for field in obj._meta.fields)
        return ()


class AttemptInline(admin.TabularInline):
    model = PaymentAttempt
    extra = 0
    can_delete = False
    fields = ("provider", "method", "status", "idempotency_key", "provider_reference", "reason", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RefundInline(AttemptInline):
    model = Refund
    fields = ("amount", "status", "idempotency_key", "provider_reference", "failure_reason", "created_at")
    readonly_fields = fields

    @admin.display(description="Amount")
    def amount(self, refund: Refund) -> str:
        return Money(refund.amount_minor, refund.payment.currency).format()


@admin.register(Payment)
class PaymentAdmin(CsvExportMixin, LargeTableAdminMixin, ReadOnlyAdmin):
    resource_classes = (PaymentResource,)
    list_display = ("reference", status_column, "amount", "provider", "method", "refunded", "user", "created_at",
                    help_column)  # fmt: skip
    list_filter = ("status", ("provider", IndexedValuesFilter), ("currency", IndexedValuesFilter))
    search_fields = ("reference__exact", "provider_reference__exact")  # the identifiers finance has, indexed
    list_select_related = ("user",)
    inlines = (AttemptInline, RefundInline)
    readonly_fields = ("amount", "refunded", "routing", "redirect_url")
    exclude = ("amount_minor", "refunded_minor", "routing_decision")

    @admin.display(description="Amount", ordering="amount_minor")
    def amount(self, payment: Payment) -> str:
        return Money(payment.amount_minor, payment.currency).format()

    @admin.display(description="Refunded")
    def refunded(self, payment: Payment) -> str:
        return Money(payment.refunded_minor, payment.currency).format() if payment.refunded_minor else "-"

    @admin.display(description="Routing")
    def routing(self, payment: Payment) -> str:
        decision = payment.routing_decision
        if decision is None:
            return "-"
        tried = ", ".join(f"{c['provider']}/{c['method']}" for c in decision.candidates) or "none"
        skipped = "; ".join(f"{s['provider']}: {s['reason']}" for s in decision.skipped) or "none"
        return f"{decision.source}: candidates {tried}; skipped {skipped}"


@admin.register(Refund)
class RefundAdmin(CsvExportMixin, ReadOnlyAdmin):
    """Refunds of payments, for finance to list, filter and export (made from the API or the payment)."""

    resource_classes = (RefundResource,)
    list_display = ("id", "payment", "amount", status_column, "provider_reference", help_column, "created_at")
    list_filter = ("status", "payment__provider", "payment__currency")
    search_fields = ("=payment__reference", "=provider_reference")
    list_select_related = ("payment",)
    show_full_result_count = False

    @admin.display(description="Amount", ordering="amount_minor")
    def amount(self, refund: Refund) -> str:
        return Money(refund.amount_minor, refund.payment.currency).format()


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "reference", "amount_minor", "currency", "source")
    list_filter = ("source", "currency")
    search_fields = ("=reference",)
    show_full_result_count = False


@admin.register(MoneyMovement)
class MoneyMovementAdmin(ReadOnlyAdmin):
    """Every call that moved (or may have moved) money at a provider, with what the protocol knows of it."""

    list_display = (
        "id", "operation", "provider", "amount", status_column, "provider_reference", "sync_attempts", "next_sync_at",
        "escalated_at", "created_at", help_column,
    )  # fmt: skip
    list_filter = ("status", "operation", "provider")
    search_fields = ("=key", "=provider_reference", "=subject_id")
    show_full_result_count = False
    actions = ("sync_now",)

    @admin.display(description="Amount", ordering="amount_minor")
    def amount(self, movement: MoneyMovement) -> str:
        return str(Money(movement.amount_minor, movement.currency)) if movement.currency else "-"

    def has_sync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("providers.sync_moneymovement")

    @admin.action(description="Sync now: ask the provider about the selected open movements", permissions=["sync"])
    def sync_now(self, request: HttpRequest, queryset: QuerySet[MoneyMovement]) -> None:
        for movement in queryset.filter(status__in=MoneyMovement.OPEN)[:50]:
            try:
                after = movement_sync_by_staff(movement_id=movement.pk, actor=request.user)
            except AppError as error:
                self.message_user(
                    request, f"{movement.key}: {error.user_message} {error.action_required}", messages.ERROR
                )
                continue
            level = messages.SUCCESS if after.status in MoneyMovement.FINAL else messages.WARNING
            self.message_user(request, f"{movement.key}: {after.get_status_display()}.", level)
