"""Finance staff UI for escrow deals, seller accounts and commission tiers.

Money, statuses and provider references are read-only. Changes to deals are actions that call one
escrow.deals service per deal with request.user (which checks the permission itself) and report each
outcome, or the AppError's user_message and action_required. A deal's page lists its money movements (what
Stripe was asked, under which key, and what is known of it), each linked to its page with 'Sync now'.
Tiers are configuration: editable, every change audited, never deleted. Seller accounts: escrow.admin.sellers.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from core.admin import ReadOnlyAdmin, action_confirmed, action_page
from core.errors import AppError
from core.exports import CsvExportMixin
from core.labels import help_column, status_column
from core.money import Money
from escrow.deals import deal_cancel, deal_release, deal_release_approve, deal_transfer_retry
from escrow.models import CommissionTier, EscrowDeal
from escrow.resources import EscrowDealResource
from providers.admin import AuditedConfigAdmin
from providers.models import MoneyMovement


@admin.register(CommissionTier)
class CommissionTierAdmin(AuditedConfigAdmin):
    list_display = ("name", "rate_bps", "rate_percent", "active", "updated_at")
    list_filter = ("active",)
    search_fields = ("name",)

    @admin.display(description="Rate")
    def rate_percent(self, tier: CommissionTier) -> str:
        return f"{tier.rate_bps / 100:g}%"


@admin.register(EscrowDeal)
class EscrowDealAdmin(CsvExportMixin, ReadOnlyAdmin):
    resource_classes = (EscrowDealResource,)
    list_display = ("id", status_column, "buyer", "seller_account", "amount", "commission", "deadline", "hold_mode",
                    "transfer_attempts", "next_transfer_at", "updated_at", help_column)  # fmt: skip
    list_filter = ("status", "hold_mode", "timeout_policy", "currency")
    search_fields = (
        "=id",
        "=payment_intent_id",
        "=transfer_id",
        "=transfer_group",
        "seller_account__stripe_account_id",
    )
    list_select_related = ("buyer", "seller_account")
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ("release", "approve_release", "refund", "retry_transfer")
    readonly_fields = ("money_movements",)

    @admin.display(description="Amount")
    def amount(self, deal: EscrowDeal) -> str:
        return Money(deal.amount_minor, deal.currency).format()

    @admin.display(description="Commission")
    def commission(self, deal: EscrowDeal) -> str:
        return f"{Money(deal.commission_minor, deal.currency).format()} ({deal.commission_bps / 100:g}%)"

    @admin.display(description="Money movements")
    def money_movements(self, deal: EscrowDeal) -> str:
        movements = MoneyMovement.objects.filter(operation__startswith="escrow.", subject_id=deal.pk).order_by("id")
        rows = (
            (reverse("admin:providers_moneymovement_change", args=[m.pk]), m.operation, m.key, m.get_status_display())
            for m in movements
        )
        return format_html_join(mark_safe("<br>"), '<a href="{}">{}</a> {}: {}', rows) or "-"

    def _each(self, request: HttpRequest, queryset: QuerySet[EscrowDeal], verb: str, call: Callable) -> None:
        for deal in queryset.order_by("pk"):
            try:
                after = call(deal)
            except AppError as error:
                self.message_user(
                    request, f"Deal {deal.pk}: {error.user_message} {error.action_required}", messages.ERROR
                )
                continue
            level = messages.WARNING if after.status == EscrowDeal.Status.TRANSFER_FAILED else messages.SUCCESS
            detail = f" ({after.failure_reason})" if after.failure_reason else ""
            self.message_user(request, f"Deal {deal.pk}: {verb}; now {after.status.replace('_', ' ')}{detail}.", level)

    def _confirm_then(
        self, request: HttpRequest, queryset: QuerySet[EscrowDeal], action: str, title: str, verb: str, call: Callable
    ) -> TemplateResponse | None:
        """Money moves only from the confirmation page (post=yes), never on the first click."""
        deals = list(queryset.select_related("buyer", "seller_account__user").order_by("pk"))
        if not action_confirmed(request):
            lines = [
                f"Deal {d.pk}: {self.amount(d)} from {d.buyer} to {d.seller_account.user}, {d.status.replace('_', ' ')}"
                f"; seller gets {Money(d.seller_net_minor, d.currency).format()} after {self.commission(d)}"
                for d in deals
            ]
            return action_page(self, request, action=action, title=title, objects=deals, lines=lines)
        self._each(request, queryset, verb, call)
        return None

    @admin.action(description="Release to the seller (capture and transfer)")
    def release(self, request: HttpRequest, queryset: QuerySet[EscrowDeal]) -> TemplateResponse | None:
        release = lambda d: deal_release(deal_id=d.pk, actor=request.user)  # noqa: E731
        return self._confirm_then(request, queryset, "release", "Release to the seller", "release asked", release)

    @admin.action(description="Approve release (a second person)")
    def approve_release(self, request: HttpRequest, queryset: QuerySet[EscrowDeal]) -> TemplateResponse | None:
        approve = lambda d: deal_release_approve(deal_id=d.pk, approver=request.user)  # noqa: E731
        return self._confirm_then(request, queryset, "approve_release", "Approve the release", "approved", approve)

    @admin.action(description="Cancel and refund the buyer")
    def refund(self, request: HttpRequest, queryset: QuerySet[EscrowDeal]) -> TemplateResponse | None:
        cancel = lambda d: deal_cancel(deal_id=d.pk, actor=request.user)  # noqa: E731
        return self._confirm_then(request, queryset, "refund", "Cancel and refund the buyer", "refund asked", cancel)

    @admin.action(description="Retry transfer now (looks it up first; a new key only after a decline)")
    def retry_transfer(self, request: HttpRequest, queryset: QuerySet[EscrowDeal]) -> TemplateResponse | None:
        retry = lambda d: deal_transfer_retry(deal_id=d.pk, actor=request.user)  # noqa: E731
        return self._confirm_then(request, queryset, "retry_transfer", "Retry the transfer", "transfer retried", retry)
