"""Funding a cycle's prize pool: staff set money aside for winners, once per funding request.

Invariants kept:
- every amount is held to core.money's bounds (money_in_bounds) before anything is written;
- a funding posts through `winnings_fund` (the one posting of prize money) under the key
  `winnings-fund:cycle-{cycle}:{funding key}`, so a repeated request (a double submit, a retried form) posts
  once; the same key with another amount is refused by the ledger (`IdempotencyMismatch`);
- the cycle row is locked while the key is looked up and posted, so two submits of one request serialize:
  exactly one posts and writes the audit row, the other finds the posting and writes nothing;
- only staff holding `payouts.fund_payoutcycle` fund (core.roles: Finance approver).

Ledger posting (see prepare.py): debit platform:prize-expense:{cur}, credit payouts:winnings-payable:{cur}.
The winnings payable account is the pool every cycle's batches reserve from (one per currency).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from core.errors import InvalidRequest, NotFound
from core.money import Money, MoneyError, money_in_bounds
from core.permissions import require_permission
from core.services import audit_record
from ledger.models import Transaction
from payouts.models import PayoutCycle
from payouts.services.prepare import winnings_fund, winnings_fund_key

FUND_PERMISSION = "payouts.fund_payoutcycle"
_FUNDING_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(frozen=True)
class PrizePoolFunding:
    """The posting of one funding request; `posted` is false when an earlier submit had posted it already."""

    cycle: PayoutCycle
    amount: Money
    transaction: Transaction
    posted: bool


def funding_reference(cycle_id: int, funding_key: str) -> str:
    return f"cycle-{cycle_id}:{funding_key}"


def cycle_funding_key_prefix(cycle_id: int) -> str:
    """The start of the ledger key of every funding of one cycle (for payouts.selectors.funded_by_currency)."""
    return winnings_fund_key(funding_reference(cycle_id, ""))


def _checked(amount: Money, funding_key: str) -> Money:
    try:
        checked = money_in_bounds(amount.minor, amount.currency)
    except MoneyError as error:
        raise InvalidRequest(
            f"prize pool amount refused: {error}",
            user_message=f"The amount cannot fund a prize pool: {error}.",
            action_required="Enter an amount above zero and within the maximum for its currency.",
            details={"amount_minor": amount.minor, "currency": amount.currency},
        ) from error
    if not _FUNDING_KEY.match(funding_key):
        raise InvalidRequest(
            f"funding key {funding_key!r} is not 8 to 64 letters, digits, - or _",
            user_message="This funding request has no valid once-only key.",
            action_required="Open the funding page again and submit it from there.",
            details={"funding_key": funding_key},
        )
    return checked


def prize_pool_fund(*, cycle_id: int, amount: Money, funding_key: str, actor: AbstractBaseUser) -> PrizePoolFunding:
    """Set `amount` aside for the winners of a cycle, once per `funding_key`, audited as `payouts.cycle.fund`."""
    require_permission(actor, FUND_PERMISSION)
    amount = _checked(amount, funding_key)
    with transaction.atomic():
        cycle = PayoutCycle.objects.select_for_update().filter(pk=cycle_id).first()
        if cycle is None:
            raise NotFound(f"payout cycle {cycle_id} does not exist", details={"cycle_id": cycle_id})
        reference = funding_reference(cycle.pk, funding_key)
        earlier = Transaction.objects.filter(idempotency_key=winnings_fund_key(reference)).exists()
        posting = winnings_fund(amount=amount, reference=reference)  # the same key and amount return the first
        if not earlier:
            after = {"amount_minor": amount.minor, "currency": amount.currency, "transaction_id": posting.pk,
                     "funding_key": funding_key}  # fmt: skip
            audit_record(actor=actor, action="payouts.cycle.fund", obj=cycle, after=after)
    return PrizePoolFunding(cycle=cycle, amount=amount, transaction=posting, posted=not earlier)
