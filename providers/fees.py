"""Fees in minor units: basis points and fixed parts, rounded half up, never floats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog
from django.utils import timezone

from core.errors import NotFound
from core.money import Money
from providers.models import FeeRule

log = structlog.get_logger(__name__)


def percent_of(amount_minor: int, bps: int) -> int:
    """`bps` basis points of a non-negative amount, rounded half up to the minor unit."""
    if amount_minor < 0 or bps < 0:
        raise ValueError("fees are computed on non-negative amounts and rates")
    return (amount_minor * bps + 5_000) // 10_000


@dataclass(frozen=True)
class FeeQuote:
    provider: str
    method: str
    amount: Money
    provider_fee: Money
    platform_fee: Money
    rule_id: int

    @property
    def total_fee(self) -> Money:
        return self.provider_fee + self.platform_fee


def fee_rule_at(*, provider: str, method: str, currency: str, at: datetime | None = None) -> FeeRule:
    rule = (
        FeeRule.objects.filter(
            provider=provider, method=method, currency=currency, effective_from__lte=at or timezone.now()
        )
        .order_by("-effective_from")
        .first()
    )
    if rule is None:
        raise NotFound(
            f"no fee rule for {provider}/{method} in {currency}",
            user_message="This payment method has no price configured for this currency.",
            action_required="Add a fee rule for it in the admin, or choose another method.",
            details={"provider": provider, "method": method, "currency": currency},
        )
    return rule


def fee_quote(*, provider: str, method: str, amount: Money, at: datetime | None = None) -> FeeQuote:
    rule = fee_rule_at(provider=provider, method=method, currency=amount.currency, at=at)
    return FeeQuote(
        provider=provider,
        method=method,
        amount=amount,
        provider_fee=Money(percent_of(amount.minor, rule.percent_bps) + rule.fixed_minor, amount.currency),
        platform_fee=Money(
            percent_of(amount.minor, rule.platform_percent_bps) + rule.platform_fixed_minor, amount.currency
        ),
        rule_id=rule.pk,
    )


def processing_fee(*, provider: str, method: str, amount: Money) -> Money:
    """What the provider keeps from a captured amount, by our fee rules.

    Zero, with a warning, when no rule is configured: a capture is always recorded, and the daily
    reconciliation against the provider's report shows the fee it really took.
    """
    try:
        return fee_quote(provider=provider, method=method, amount=amount).provider_fee
    except NotFound:
        log.warning("fees.no_rule", provider=provider, method=method, currency=amount.currency)
        return Money(0, amount.currency)
