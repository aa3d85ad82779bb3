"""Funding a payout cycle's prize pool from the admin: the "Fund prize pool" action on the cycles' changelist.

The first click shows the cycle's winners, what was funded for it before and what the pool has available, and
asks for the amount (major units, e.g. 1234.50, in an ISO 4217 currency); nothing moves until that page is
submitted. The page carries a once-only funding key, so submitting it twice posts once. The service
(payouts.services.prize_pool_fund) checks the permission and the bounds, posts through the ledger and writes
the audit row; this module only parses the form and reports the result.
"""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from core.admin import action_confirmed, action_page
from core.errors import AppError
from core.money import Money, MoneyError, money_in_bounds, validate_currency
from payouts.models import PayoutCycle
from payouts.selectors import cycle_pools, funded_by_currency, pool_available
from payouts.services import PrizePoolFunding, cycle_funding_key_prefix, prize_pool_fund

FUND_TITLE = "Fund prize pool"


class PrizePoolFundForm(forms.Form):
    amount = forms.CharField(max_length=40, help_text="In major units, e.g. 10000.00 (no separators).")
    currency = forms.CharField(max_length=3, help_text="ISO 4217 code in capitals, e.g. USD.")
    funding_key = forms.CharField(widget=forms.HiddenInput)

    def clean_currency(self) -> str:
        try:
            return validate_currency(self.cleaned_data["currency"].strip())
        except MoneyError as error:
            raise forms.ValidationError(str(error)) from error

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "amount" in cleaned and "currency" in cleaned:
            try:
                cleaned["money"] = _amount(cleaned["amount"], cleaned["currency"])
            except MoneyError as error:
                self.add_error("amount", str(error))
        return cleaned


def _amount(text: str, currency: str) -> Money:
    """Parsed exactly, then held to the bounds of core.money; a negative or zero amount is named as typed."""
    amount = Money.parse(text, currency)
    if amount.minor <= 0:
        raise MoneyError(f"the amount must be more than zero, got {text.strip()}")
    return money_in_bounds(amount.minor, amount.currency)


def _initial(cycle: PayoutCycle) -> dict[str, str]:
    """A new once-only key; the currency and total of the winners when they are all in one currency."""
    initial = {"funding_key": uuid.uuid4().hex}
    pools = cycle_pools(cycle.pk)
    if len(pools) == 1:
        initial |= {"currency": pools[0].currency, "amount": pools[0].owed.decimal_string()}
    return initial


def _lines(cycle: PayoutCycle) -> list[str]:
    pools = cycle_pools(cycle.pk)
    lines = [
        f"{cycle}: {pool.winners} winner(s), {pool.owed} in {pool.currency}; prize pool available now "
        f"{pool.available} (shared by every cycle's batches)"
        for pool in pools
    ] or [f"{cycle}: no winners yet"]
    funded = funded_by_currency(cycle_funding_key_prefix(cycle.pk))
    lines.append("Funded for this cycle before: " + (", ".join(str(m) for m in funded.values()) or "nothing"))
    return lines


class PrizePoolFundingMixin(admin.ModelAdmin):
    """The "Fund prize pool" action for PayoutCycleAdmin (list it in `actions`)."""

    @admin.action(description="Fund prize pool: set money aside for the selected cycle's winners")
    def fund_prize_pool(self, request: HttpRequest, queryset: QuerySet[PayoutCycle]) -> TemplateResponse | None:
        cycles = list(queryset.order_by("pk")[:2])
        if len(cycles) != 1:
            self.message_user(request, "Select exactly one payout cycle to fund its prize pool.", messages.ERROR)
            return None
        cycle = cycles[0]
        if not action_confirmed(request):
            return self._fund_page(request, cycle, PrizePoolFundForm(initial=_initial(cycle)))
        form = PrizePoolFundForm(request.POST)
        if not form.is_valid():
            return self._fund_page(request, cycle, form)  # nothing written: the page again, with the errors
        data = form.cleaned_data
        try:
            funding = prize_pool_fund(
                cycle_id=cycle.pk, amount=data["money"], funding_key=data["funding_key"], actor=request.user
            )
        except AppError as error:
            self.message_user(request, f"{cycle}: {error.user_message} {error.action_required}", messages.ERROR)
            return None
        self._report(request, funding)
        return None

    def _fund_page(self, request: HttpRequest, cycle: PayoutCycle, form: PrizePoolFundForm) -> TemplateResponse:
        return action_page(
            self, request, action="fund_prize_pool", title=FUND_TITLE, objects=[cycle], lines=_lines(cycle), form=form
        )

    def _report(self, request: HttpRequest, funding: PrizePoolFunding) -> None:
        available = pool_available(funding.amount.currency)
        if funding.posted:
            text = (
                f"{funding.cycle}: prize pool funded with {funding.amount} (ledger transaction "
                f"#{funding.transaction.pk}); {available} available for batches."
            )
            self.message_user(request, text, messages.SUCCESS)
        else:
            text = (
                f"{funding.cycle}: this funding of {funding.amount} was posted already (ledger transaction "
                f"#{funding.transaction.pk}); nothing was posted again."
            )
            self.message_user(request, text, messages.WARNING)
