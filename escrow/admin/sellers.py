"""Finance staff UI for seller accounts: link a seller to their Stripe connected account, see whether Stripe lets
it receive transfers, and read that state from Stripe again.

Adding a seller account looks the connected account up at Stripe through the provider client while the form is
checked (an id Stripe does not know is a form error, nothing saved), then calls escrow.sellers.seller_account_link,
which writes the row and its audit entry. The transfers capability is Stripe's: read-only here, kept current by
account.updated webhooks and by the "Refresh from Stripe" action. Only the commission tier is edited afterwards
(audited); seller accounts are never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from core.errors import AppError
from escrow.models import CommissionTier, SellerAccount
from escrow.sellers import ConnectedAccountState, connected_account_state, seller_account_link, seller_account_refresh
from providers.admin import AuditedConfigAdmin

NOT_ACTIVE = "Not active: Stripe does not let it receive transfers yet (the seller has not finished onboarding)"


class SellerAccountAddForm(forms.ModelForm):
    """The new seller's user, connected account id (checked at Stripe) and commission tier (active ones only)."""

    class Meta:
        model = SellerAccount
        fields = ("user", "stripe_account_id", "commission_tier")
        help_texts = {"stripe_account_id": "The seller's Stripe connected account, acct_...; looked up at Stripe."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["commission_tier"].queryset = CommissionTier.objects.filter(active=True)
        self.stripe_state: ConnectedAccountState | None = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        account_id = cleaned.get("stripe_account_id")
        if account_id and not self.errors:
            try:
                self.stripe_state = connected_account_state(account_id)
            except AppError as error:
                self.add_error("stripe_account_id", f"{error.user_message} {error.action_required}")
        return cleaned


def activation(seller: SellerAccount) -> str:
    return "Active: can receive transfers" if seller.can_receive_transfers else NOT_ACTIVE


@admin.register(SellerAccount)
class SellerAccountAdmin(AuditedConfigAdmin):
    list_display = ("stripe_account_id", "user", "commission_tier", "transfers", "account_updated_at")
    list_filter = ("can_receive_transfers", "commission_tier")
    search_fields = ("stripe_account_id", "user__username", "user__email")
    list_select_related = ("user", "commission_tier")
    raw_id_fields = ("user",)
    actions = ("refresh_from_stripe",)

    @admin.display(description="Transfers at Stripe", boolean=True, ordering="can_receive_transfers")
    def transfers(self, seller: SellerAccount) -> bool:
        return seller.can_receive_transfers

    @admin.display(description="Activation")
    def activation(self, seller: SellerAccount) -> str:
        return activation(seller)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = SellerAccountAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        if obj is None:
            return SellerAccountAddForm.Meta.fields
        return ("user", "stripe_account_id", "commission_tier", "activation", "account_updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        return () if obj is None else ("user", "stripe_account_id", "activation", "account_updated_at")

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """A service refusal while saving (e.g. the user became a seller meanwhile) is shown, not a server error:
        the admin's transaction was rolled back, nothing saved."""
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except AppError as error:
            self.message_user(request, f"{error.user_message} {error.action_required}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request: HttpRequest, obj: SellerAccount, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)  # the commission tier; audited
            return
        seller = seller_account_link(
            user=obj.user, stripe_account_id=obj.stripe_account_id, commission_tier=obj.commission_tier,
            actor=request.user, state=form.stripe_state,
        )  # fmt: skip
        obj.pk, obj.can_receive_transfers, obj.account_updated_at = (
            seller.pk, seller.can_receive_transfers, seller.account_updated_at
        )  # fmt: skip
        obj._state.adding = False

    def response_add(self, request: HttpRequest, obj: SellerAccount, post_url_continue: str | None = None) -> Any:
        self.message_user(request, f"{obj}: {activation(obj)}.", messages.SUCCESS if obj.can_receive_transfers
                          else messages.WARNING)  # fmt: skip
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Refresh from Stripe: read the selected accounts' transfers capability now")
    def refresh_from_stripe(self, request: HttpRequest, queryset: QuerySet[SellerAccount]) -> None:
        for seller in queryset.order_by("pk"):
            try:
                done = seller_account_refresh(seller_id=seller.pk, actor=request.user)
            except AppError as error:
                text = f"{seller}: {error.user_message} {error.action_required}"
                self.message_user(request, text, messages.ERROR)
                continue
            level = messages.SUCCESS if done.can_receive_transfers else messages.WARNING
            self.message_user(request, f"{done}: {activation(done)}.", level)
