"""Finance staff UI for purchases: the catalogue, purchases with their refunds, refund rows.

Money and statuses are read-only. Changes are actions that call escrow.purchases services with
request.user (which check the permissions themselves) and report each result, or the error's
user_message and action_required. Actions that move money show a confirmation page first; the partial
refund page carries a one-time key, so submitting it twice refunds once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from core.admin import AmountsInBoundsForm, ReadOnlyAdmin, ReadOnlyInline, action_confirmed, action_page
from core.errors import AppError
from core.exports import CsvExportMixin
from core.labels import help_column, status_column
from core.money import Money, MoneyError, money_parse_in_bounds
from core.services import audit_record
from escrow.models import PurchasableService, Purchase, PurchaseRefund, ServicePrice
from escrow.purchases import purchase_cancel, purchase_refund, purchase_sync
from escrow.purchases.common import purchase_movements
from escrow.resources import PurchaseRefundResource, PurchaseResource
from providers.admin import AuditedConfigAdmin

T = TypeVar("T")


def _money(minor: int, currency: str) -> str:
    return Money(minor, currency).format()


class RefundPartForm(forms.Form):
    amount = forms.CharField(max_length=40, help_text="In major units, e.g. 12.50, in the purchase's currency.")
    reason = forms.CharField(max_length=255, required=False)
    refund_key = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, currency: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.currency = currency

    def clean_amount(self) -> Money:
        try:
            return money_parse_in_bounds(self.cleaned_data["amount"], self.currency)
        except MoneyError as error:
            raise forms.ValidationError(str(error)) from error


class ServicePriceForm(AmountsInBoundsForm):
    amount_fields = {"amount_minor": "currency"}


class ServicePriceInline(admin.TabularInline):
    model = ServicePrice
    form = ServicePriceForm
    extra = 1
    fields = ("currency", "amount_minor")


@admin.register(PurchasableService)
class PurchasableServiceAdmin(AuditedConfigAdmin):
    list_display = ("code", "name", "delivery_timeout", "active", "prices")
    list_filter = ("active",)
    search_fields = ("code", "name")
    inlines = (ServicePriceInline,)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        """Price changes are staff actions too: each one goes to the audit log."""
        before = {f.instance.pk: (f.initial.get("currency"), f.initial.get("amount_minor")) for f in formset.forms}
        super().save_formset(request, form, formset, change)
        for price in formset.new_objects + [obj for obj, _ in formset.changed_objects]:
            audit_record(
                actor=request.user,
                action="escrow.serviceprice.change",
                obj=price,
                before={"price": str(before.get(price.pk))},
                after={"currency": price.currency, "amount_minor": price.amount_minor},
            )

    @admin.display(description="Prices")
    def prices(self, service: PurchasableService) -> str:
        return ", ".join(_money(p.amount_minor, p.currency) for p in service.prices.all()) or "-"


class PurchaseRefundInline(ReadOnlyInline):
    model = PurchaseRefund
    fields = ("id", "amount", "status", "provider_reference", "reason", "requested_by", "failure_reason", "created_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PurchaseRefund]:
        return super().get_queryset(request).select_related("purchase", "requested_by")

    @admin.display(description="Amount")
    def amount(self, refund: PurchaseRefund) -> str:
        return _money(refund.amount_minor, refund.purchase.currency)


@admin.register(Purchase)
class PurchaseAdmin(CsvExportMixin, ReadOnlyAdmin):
    resource_classes = (PurchaseResource,)
    list_display = ("id", "buyer", "service", "amount", status_column, "outcome", "captured", "refunded", "deliver_by",
                    "created_at", help_column)  # fmt: skip
    list_filter = ("status", "outcome", "currency", "service")
    search_fields = ("=id", "buyer__username", "payment_intent_id", "client_key")
    date_hierarchy = "created_at"
    list_select_related = ("buyer", "service")
    show_full_result_count = False
    inlines = (PurchaseRefundInline,)
    actions = ("cancel_and_refund", "refund_part", "sync_unknown")
    fields = ("buyer", "service", "amount", "status", "outcome", "outcome_detail", "outcome_at", "captured",
              "refunded", "refund_reserved", "payment_intent_id", "intent_keys", "money_movements", "deliver_by",
              "failure_reason", "client_key", "created_at", "updated_at")  # fmt: skip
    readonly_fields = fields

    @admin.display(description="Amount", ordering="amount_minor")
    def amount(self, purchase: Purchase) -> str:
        return _money(purchase.amount_minor, purchase.currency)

    @admin.display(description="Captured")
    def captured(self, purchase: Purchase) -> str:
        return _money(purchase.captured_minor, purchase.currency)

    @admin.display(description="Refunded")
    def refunded(self, purchase: Purchase) -> str:
        return _money(purchase.refunded_minor, purchase.currency)

    @admin.display(description="Refunds reserved (succeeded and in flight)")
    def refund_reserved(self, purchase: Purchase) -> str:
        return _money(purchase.refund_reserved_minor, purchase.currency)

    @admin.display(description="Provider keys")
    def intent_keys(self, purchase: Purchase) -> str:
        return ", ".join((purchase.authorize_key, purchase.capture_key, purchase.void_key))

    @admin.display(description="Money movements (the truth about Stripe)")
    def money_movements(self, purchase: Purchase) -> str:
        rows = [
            format_html(
                '<a href="{}">{}</a> {}{}',
                reverse("admin:providers_moneymovement_change", args=[movement.pk]),
                movement.key,
                movement.get_status_display(),
                f" (next look {movement.next_sync_at:%Y-%m-%d %H:%M} UTC)" if movement.next_sync_at else "",
            )
            for movement in purchase_movements(purchase.pk)
        ]
        return format_html_join(mark_safe("<br>"), "{}", ((row,) for row in rows)) or "-"

    # --- actions
    def _attempt(self, request: HttpRequest, label: str, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except AppError as error:
            self.message_user(request, f"{label}: {error.user_message} {error.action_required}", messages.ERROR)
            return None

    def _page(
        self, request: HttpRequest, *, action: str, title: str, objects: list[Purchase], form: forms.Form | None = None
    ) -> HttpResponse:
        lines = [
            f"Purchase {p.pk} by {p.buyer}: {self.amount(p)}, {p.status}, captured {self.captured(p)}, "
            f"refunded {self.refunded(p)}"
            for p in objects
        ]
        return action_page(self, request, action=action, title=title, objects=objects, lines=lines, form=form)

    def _report(self, request: HttpRequest, purchase: Purchase) -> None:
        level = messages.WARNING if purchase.status in Purchase.UNKNOWN else messages.SUCCESS
        text = f"Purchase {purchase.pk}: {purchase.status}"
        if purchase.outcome:
            text += f" ({purchase.outcome})"
        if purchase.status in Purchase.UNKNOWN:
            text += "; Stripe's answer was lost: its money movement is looked up on schedule, never sent anew."
        self.message_user(request, f"{text}, refunded {self.refunded(purchase)}.", level)

    @admin.action(description="Cancel and refund the selected purchases")
    def cancel_and_refund(self, request: HttpRequest, queryset: QuerySet[Purchase]) -> HttpResponse | None:
        purchases = list(queryset.select_related("buyer").order_by("pk"))
        if not action_confirmed(request):
            return self._page(request, action="cancel_and_refund", title="Cancel and refund", objects=purchases)
        for purchase in purchases:
            done = self._attempt(
                request,
                f"Purchase {purchase.pk}",
                lambda p=purchase: purchase_cancel(purchase_id=p.pk, actor=request.user),
            )
            if done is not None:
                self._report(request, done)
        return None

    @admin.action(description="Refund part of the selected purchase")
    def refund_part(self, request: HttpRequest, queryset: QuerySet[Purchase]) -> HttpResponse | None:
        purchases = list(queryset.select_related("buyer")[:2])
        if len(purchases) != 1:
            self.message_user(request, "Select exactly one purchase to refund part of it.", messages.ERROR)
            return None
        purchase = purchases[0]
        if not action_confirmed(request):
            form = RefundPartForm(currency=purchase.currency, initial={"refund_key": uuid.uuid4().hex})
            return self._page(request, action="refund_part", title="Refund part", objects=purchases, form=form)
        form = RefundPartForm(request.POST, currency=purchase.currency)
        if not form.is_valid():
            return self._page(request, action="refund_part", title="Refund part", objects=purchases, form=form)
        data = form.cleaned_data
        refund = self._attempt(
            request,
            f"Purchase {purchase.pk}",
            lambda: purchase_refund(
                purchase_id=purchase.pk,
                amount=data["amount"],
                actor=request.user,
                client_key=f"admin:{data['refund_key']}",
                reason=data["reason"],
            ),
        )
        if refund is not None:
            level = messages.SUCCESS if refund.status == PurchaseRefund.Status.SUCCEEDED else messages.WARNING
            text = f"Purchase {purchase.pk}: refund of {data['amount']} {refund.status}"
            self.message_user(request, text + (f": {refund.failure_reason}" if refund.failure_reason else "."), level)
        return None

    @admin.action(description="Sync: look the selected purchases' open money movements up at Stripe now; finish them")
    def sync_unknown(self, request: HttpRequest, queryset: QuerySet[Purchase]) -> None:
        for purchase in queryset.order_by("pk"):
            done = self._attempt(
                request,
                f"Purchase {purchase.pk}",
                lambda p=purchase: purchase_sync(purchase_id=p.pk, actor=request.user),
            )
            if done is not None:
                self._report(request, done)


@admin.register(PurchaseRefund)
class PurchaseRefundAdmin(CsvExportMixin, ReadOnlyAdmin):
    resource_classes = (PurchaseRefundResource,)
    list_display = ("id", "purchase_link", "amount", status_column, "provider_reference", "requested_by", "created_at",
                    help_column)  # fmt: skip
    list_filter = ("status",)
    search_fields = ("=purchase__id", "provider_reference")
    list_select_related = ("purchase", "requested_by")

    @admin.display(description="Purchase")
    def purchase_link(self, refund: PurchaseRefund) -> str:
        url = reverse("admin:escrow_purchase_change", args=[refund.purchase_id])
        return format_html('<a href="{}">{}</a>', url, refund.purchase_id)

    @admin.display(description="Amount")
    def amount(self, refund: PurchaseRefund) -> str:
        return _money(refund.amount_minor, refund.purchase.currency)
