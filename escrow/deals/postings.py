"""The ledger legs of an escrow deal. Every posting is keyed by the deal and its step (`escrow:{id}:<step>`),
so a step posts once however often its outcome is recorded; every posting that touches
`provider:stripe:clearing:{cur}` names the Stripe id that moved the money. They are posted by the outcome
recorders (escrow.deals.recorders), i.e. inside the protocol's outcome hooks or a verified webhook.

Ledger postings (all platform accounts, per currency; debit = left, credit = right):
  authorize  (authorization mode, hold placed)     escrow:authorized          / escrow:buyer-funds-held
  capture    (authorization mode, at release)      provider:stripe:clearing   / escrow:authorized         pi_
  capture    (captured mode, hold placed)          provider:stripe:clearing   / escrow:buyer-funds-held   pi_
             + Stripe's fee (by our fee rules)     platform:provider-fees:stripe / provider:stripe:clearing
  release    (split)                               escrow:buyer-funds-held    / escrow:seller-payable (net)
                                                                              + platform:revenue:escrow-commission
  transfer   (seller paid)                         escrow:seller-payable      / provider:stripe:clearing   tr_
  void       (authorization voided or lapsed)      escrow:buyer-funds-held    / escrow:authorized
  refund     (captured, refunded)                  escrow:buyer-funds-held    / provider:stripe:clearing   re_
  reversal   (transfer reversed, per reversal)     provider:stripe:clearing   / escrow:seller-payable      trr_
  transfer-failed (after transferred)              provider:stripe:clearing   / escrow:seller-payable      tr_
A reversed transfer leaves the money in seller payable and the deal `reversed`: a person decides what next.
"""

from __future__ import annotations

from typing import Any

from core.money import Money
from escrow.deals.common import PROVIDER
from escrow.models import EscrowDeal
from ledger.services import credit, debit, transaction_post
from providers.accounts import chart_accounts
from providers.fees import processing_fee

Leg = tuple[str, str, int]  # (debit role, credit role, minor units)


# the legs' roles -> the chart of accounts' roles
ROLES = {
    "authorized": "escrow_authorized",
    "held": "escrow_held",
    "payable": "escrow_payable",
    "commission": "escrow_commission",
    "clearing": "clearing",
    "fees": "fees",
}


def ledger_accounts(currency: str) -> dict[str, str]:
    """The escrow accounts of one currency (providers.accounts); platform accounts, hot, so never locked."""
    codes = chart_accounts(currency, *ROLES.values(), provider=PROVIDER)
    return {role: codes[chart_role] for role, chart_role in ROLES.items()}


def post_step(deal: EscrowDeal, step: str, legs: list[Leg], provider_reference: str = "") -> None:
    """Post one keyed step; zero legs are left out. Clearing postings name the Stripe id."""
    accounts = ledger_accounts(deal.currency)
    postings = []
    for debit_role, credit_role, minor in legs:
        if minor:
            amount = Money(minor, deal.currency)
            postings += [debit(accounts[debit_role], amount), credit(accounts[credit_role], amount)]
    if not postings:
        return
    metadata: dict[str, Any] = {"escrow_deal": deal.pk}
    if provider_reference:
        metadata |= {"provider": PROVIDER, "provider_reference": provider_reference}
    transaction_post(
        idempotency_key=f"escrow:{deal.pk}:{step}",
        kind=f"escrow_{step.split(':')[0].replace('-', '_')}",
        legs=postings,
        description=f"Escrow deal {deal.pk}: {step}",
        metadata=metadata,
    )


def stripe_fee_minor(deal: EscrowDeal) -> int:
    """Stripe's processing fee on the captured amount; the platform bears it (its commission covers it)."""
    return processing_fee(provider=PROVIDER, method="card", amount=Money(deal.amount_minor, deal.currency)).minor


def post_authorize(deal: EscrowDeal) -> None:
    post_step(deal, "authorize", [("authorized", "held", deal.amount_minor)])


def post_capture(deal: EscrowDeal, payment_intent_id: str, *, at_hold: bool) -> None:
    """Captured into escrow at once (`at_hold`: out of buyer funds held) or at release (out of authorized)."""
    source = "held" if at_hold else "authorized"
    legs = [("clearing", source, deal.amount_minor), ("fees", "clearing", stripe_fee_minor(deal))]
    post_step(deal, "capture", legs, payment_intent_id)


def post_release(deal: EscrowDeal) -> None:
    legs = [("held", "payable", deal.seller_net_minor), ("held", "commission", deal.commission_minor)]
    post_step(deal, "release", legs)


def post_transfer(deal: EscrowDeal, transfer_id: str) -> None:
    post_step(deal, "transfer", [("payable", "clearing", deal.seller_net_minor)], transfer_id)


def post_void(deal: EscrowDeal) -> None:
    post_step(deal, "void", [("held", "authorized", deal.amount_minor)])


def post_refund(deal: EscrowDeal, refund_id: str) -> None:
    post_step(deal, "refund", [("held", "clearing", deal.amount_minor)], refund_id)


def post_transfer_reversal(deal: EscrowDeal, reversal_id: str, amount_minor: int) -> None:
    post_step(deal, f"transfer-reversal:{reversal_id}", [("clearing", "payable", amount_minor)], reversal_id)


def post_transfer_failed(deal: EscrowDeal, transfer_id: str) -> None:
    post_step(deal, "transfer-failed", [("clearing", "payable", deal.seller_net_minor)], transfer_id)
