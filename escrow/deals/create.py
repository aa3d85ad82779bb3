"""Opening a deal and holding the buyer's money (`escrow.hold`: a Stripe PaymentIntent).

- The deal row, its spend-limit reservation `escrow:{id}` and the hold's intent (key `escrow:{id}:hold`)
  commit in one transaction, once per (buyer, client key); the hold is sent after the commit.
- The commission is snapshotted at creation in basis points and minor units (rounded half up).
- A deal that may outlive the safe part of a card authorization is captured into escrow at once.
- The hold's outcome: `held` (posted), `failed` (declined: no money moved, the reservation is given back),
  or still `created` while Stripe waits on the buyer or its answer is unknown (the protocol's sweeper finds
  the PaymentIntent by our key, or a webhook tells).
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import IdempotencyMismatch, NotFound
from core.money import Money
from core.services import audit_record
from escrow.deals.common import HOLD, deal_get, invalid, snapshot
from escrow.limits import spend_reserve
from escrow.models import EscrowDeal, SellerAccount
from providers.fees import percent_of
from providers.protocol import movement_record, movement_run


def hold_mode_for(deadline: datetime, *, now: datetime | None = None) -> str:
    """A card authorization lapses after about 7 days: a deal that may outlive the safe part of that
    (ESCROW_AUTHORIZATION_WARN_AFTER) is captured at once into escrow instead."""
    settles_by = deadline + settings.ESCROW_TIMEOUT_GRACE
    if settles_by - (now or timezone.now()) > settings.ESCROW_AUTHORIZATION_WARN_AFTER:
        return EscrowDeal.HoldMode.CAPTURED
    return EscrowDeal.HoldMode.AUTHORIZATION


def _validate_create(amount: Money, deadline: datetime, timeout_policy: str, payment_method: str) -> None:
    if amount.minor <= 0:
        raise invalid("The amount must be more than zero.", "amount_minor", "Enter a positive amount in minor units.")
    if timezone.is_naive(deadline) or deadline <= timezone.now():
        raise invalid("The deadline must be a time in the future.", "deadline", "Give a future time with a zone.")
    if deadline - timezone.now() > settings.ESCROW_DEADLINE_MAX:
        days = settings.ESCROW_DEADLINE_MAX.days
        raise invalid(
            f"The deadline is more than {days} days ahead.", "deadline", f"Give a deadline within {days} days."
        )
    if timeout_policy not in EscrowDeal.TimeoutPolicy.values:
        raise invalid("Unknown timeout policy.", "timeout_policy", "Use 'refund' or 'release'.")
    if not payment_method:
        raise invalid("A payment method is required.", "payment_method", "Send the buyer's Stripe pm_... id.")


def _seller(stripe_account_id: str, buyer: AbstractBaseUser) -> SellerAccount:
    seller = SellerAccount.objects.select_related("commission_tier").filter(stripe_account_id=stripe_account_id).first()
    if seller is None:
        raise NotFound(
            f"no seller account {stripe_account_id}",
            user_message="This seller cannot take escrow deals.",
            action_required="Check the seller's account id (acct_...).",
            details={"seller_account": stripe_account_id},
        )
    if seller.user_id == buyer.pk:
        raise invalid("You cannot buy from yourself.", "seller_account", "Choose another seller.")
    return seller


def deal_create(
    *,
    buyer: AbstractBaseUser,
    seller_account: str,
    amount: Money,
    deadline: datetime,
    timeout_policy: str,
    payment_method: str,
    client_key: str,
) -> EscrowDeal:
    """Record the deal (and its spend reservation and hold intent), then hold the buyer's money; once per
    client key."""
    existing = EscrowDeal.objects.filter(buyer=buyer, client_key=client_key).first()
    if existing is not None:
        return _same_deal_or_mismatch(existing, seller_account, amount)
    _validate_create(amount, deadline, timeout_policy, payment_method)
    seller = _seller(seller_account, buyer)
    rate = seller.commission_tier.rate_bps
    try:
        with transaction.atomic():
            deal = EscrowDeal.objects.create(
                buyer=buyer, seller_account=seller, amount_minor=amount.minor, currency=amount.currency,
                commission_bps=rate, commission_minor=percent_of(amount.minor, rate), deadline=deadline,
                timeout_policy=timeout_policy, hold_mode=hold_mode_for(deadline), client_key=client_key,
                payment_method=payment_method,
            )  # fmt: skip
            deal.transfer_group = f"escrow-{deal.pk}"
            deal.save(update_fields=["transfer_group"])
            spend_reserve(user=buyer, amount=amount, reference=f"escrow:{deal.pk}")
            audit_record(actor=buyer, action="escrow.deal.create", obj=deal, after=snapshot(deal))
            hold = movement_record(operation=HOLD, subject_id=deal.pk, key=f"escrow:{deal.pk}:hold", amount=amount)
    except IntegrityError:  # the same client key raced us: one deal, the other request gets it
        existing = EscrowDeal.objects.filter(buyer=buyer, client_key=client_key).first()
        if existing is None:
            raise
        return _same_deal_or_mismatch(existing, seller_account, amount)
    movement_run(hold)
    return deal_get(deal_id=deal.pk)


def _same_deal_or_mismatch(existing: EscrowDeal, seller_account: str, amount: Money) -> EscrowDeal:
    same = (existing.amount_minor, existing.currency, existing.seller_account.stripe_account_id) == (
        amount.minor,
        amount.currency,
        seller_account,
    )
    if not same:
        raise IdempotencyMismatch(
            f"client key {existing.client_key!r} already made escrow deal {existing.pk} with other terms",
            details={"deal_id": existing.pk},
        )
    return existing
